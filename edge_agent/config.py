"""The agent's one settings tree: ``--config agent.yml``, then ``EDGEBATCH_*`` variables, then flags.

```yaml
agent: {id: cam-box-1, prefix: edgebatch, telemetry_interval_s: 1}
broker: {url: "mqtts://cam-box-1@broker.example:8883", password_file: /etc/edgebatch/mqtt_password,
         ca_file: /etc/edgebatch/ca.crt}
model: {path: samples/models/nanodet-m-416-coco.onnx, backend: onnxruntime}
backends: {onnxruntime: {intra_op_threads: 2}, pytorch: {device: "cuda:0"}}   # each backend's own settings
pipeline: {deadline_ms: 1000}
cameras:
  gate: {url: "rtsp://10.0.0.5/stream1", fps: 10, deadline_ms: 500, score_threshold: 0.5, classes: [person, car]}
  yard: {url: "rtsp://10.0.0.6/stream1", enabled: false}
```

``edge-agent config --print`` shows every effective value and where it came from.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from edge_agent.engines.settings import OnnxRuntimeSettings, PyTorchSettings, TensorRtSettings
from mqtt_bus.broker_section import BROKER_ENV_NAMES, BROKER_FLAG_KEYS
from mqtt_bus.broker_section import BrokerSection as SharedBrokerSection
from schemas import DEFAULT_PREFIX
from schemas.messages import StreamSpec
from schemas.topics import check_segment

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
DEFAULT_MODEL = SAMPLES / "models" / "nanodet-m-416-coco.onnx"
DEFAULT_VIDEO = SAMPLES / "video" / "vtest.avi"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgebatch" / "artifacts"

CameraName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_agent_id() -> str:
    name = "".join(c if c.isalnum() or c in "_.:-" else "-" for c in socket.gethostname())
    return name[:128] or "agent"


class AgentSection(Section):
    id: str = Field(default_factory=default_agent_id, description="this agent's id on MQTT (= its MQTT user)")
    prefix: str = Field(default=DEFAULT_PREFIX, description="topic prefix")
    telemetry_interval_s: float = Field(default=1.0, ge=0.05, le=3600, description="seconds between telemetry")
    publish_detections: bool = Field(default=False, description="publish per-frame detections on MQTT")
    connect_wait_s: float = Field(default=3.0, ge=0, le=600, description="how long inference waits for the broker")

    @field_validator("id")
    @classmethod
    def _id_is_a_topic_segment(cls, value: str) -> str:
        return check_segment(value, "agent id")


class BrokerSection(SharedBrokerSection):
    url: str | None = Field(default=None, description="mqtt://[user@]host[:port] or mqtts://; none: no controller")


class ModelSection(Section):
    path: Path = Field(default=DEFAULT_MODEL, description="ONNX model (or a TensorRT .plan with backend tensorrt)")
    backend: str = Field(default="onnxruntime", description="onnxruntime, pytorch or tensorrt")
    type: str | None = Field(default=None, description="model family (nanodet, yolo-v5, yolo-ultralytics, yolox); "
                             "default: inferred from the ONNX, NanoDet for a TensorRT plan")
    labels: Path | None = Field(default=None, description="class names, one per line (default: the model's "
                                "metadata, else coco.names)")
    registry: str | None = Field(default=None, description="a directory or mongodb://...: engines come from it")
    name: str | None = Field(default=None, description="model to serve from the registry")
    version: str = Field(default="latest", description="version to serve from the registry")
    cache_dir: Path = Field(default=DEFAULT_CACHE, description="artifact cache")

    @field_validator("type")
    @classmethod
    def _known_model_type(cls, value: str | None) -> str | None:
        from edge_agent.adapters import ADAPTERS

        if value is not None and value not in ADAPTERS:
            raise ValueError(f"unknown model type {value!r}; known: {', '.join(sorted(ADAPTERS))}")
        return value


class PipelineSection(Section):
    batch_size: int | None = Field(default=None, ge=1, le=1024, description="initial batch size")
    realtime: bool = Field(default=True, description="pace sources, drop the oldest frame on overload")
    deadline_ms: float = Field(default=1000.0, gt=0, le=3_600_000, description="end-to-end deadline per frame")
    fps: float | None = Field(default=None, gt=0, le=1000, description="frame rate of every camera without its own")
    max_frames: int | None = Field(default=None, ge=1, description="stop after this many frames in total")
    loop: bool = Field(default=False, description="loop video files")
    device_path: Literal["auto", "always", "never"] = Field(
        default="auto", description="frames to the GPU as uint8, pre/post there: auto (an engine on a GPU that "
        "takes device tensors), always (PyTorch on the CPU too), never")
    pre_workers: int | None = Field(default=None, ge=1, le=256, description="host pre-processing threads "
                                    "(default: measured on the first batches)")
    post_workers: int | None = Field(default=None, ge=1, le=256, description="host decoding threads "
                                     "(default: measured on the first batches)")


class AdmissionSection(Section):
    enabled: bool = True
    profile: Path | None = Field(default=None, description="device profile JSON (default: measured at start)")
    headroom: float = Field(default=0.8, gt=0, le=1)
    batch_sizes: list[Annotated[int, Field(ge=1, le=1024)]] | None = None
    overrun_windows: int = Field(default=2, ge=1, le=3600)


class OutputsSection(Section):
    detections: Path | None = Field(default=None, description="detections as JSON lines")
    annotated: Path | None = Field(default=None, description="annotated MJPG video per stream, in this folder")
    summary: Path | None = Field(default=None, description="the end-of-run figures as JSON")


class BackendsSection(Section):
    """Each backend's own settings; only the one that runs is used."""

    onnxruntime: OnnxRuntimeSettings = Field(default_factory=OnnxRuntimeSettings)
    pytorch: PyTorchSettings = Field(default_factory=PyTorchSettings)
    tensorrt: TensorRtSettings = Field(default_factory=TensorRtSettings)

    def options(self) -> dict[str, dict[str, Any]]:
        """backend -> keyword arguments for its engine (what was set)."""
        return {name: getattr(self, name).options() for name in type(self).model_fields}


class MetricsSection(Section):
    address: str | None = Field(default=None, description="HOST:PORT to serve /metrics and /healthz (default: off)")
    advertise: str | None = Field(default=None, description="HOST:PORT announced for Prometheus to scrape")

    @field_validator("address", "advertise")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            from mqtt_bus.http import parse_address
            from schemas import AgentStatus

            parse_address(value)  # ValueError: not HOST:PORT
            AgentStatus(agent_id="x", state="online", metrics_address=value)  # what the status may carry
        return value


class CameraConfig(Section):
    url: str = Field(min_length=1, max_length=2000, description="video file, camera index or rtsp/http URL")
    fps: float | None = Field(default=None, gt=0, le=1000, description="frame-rate cap (default: pipeline.fps)")
    deadline_ms: float | None = Field(default=None, gt=0, le=3_600_000, description="default: pipeline.deadline_ms")
    model: str | None = Field(default=None, description="must be the agent's model: one engine serves all cameras")
    score_threshold: float | None = Field(default=None, ge=0, le=1, description="drop detections below it")
    classes: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=1000, description="keep only these class names")
    enabled: bool = True
    loop: bool | None = Field(default=None, description="loop a video file (default: pipeline.loop)")


class AgentConfig(Section):
    agent: AgentSection = Field(default_factory=AgentSection)
    broker: BrokerSection = Field(default_factory=BrokerSection)
    model: ModelSection = Field(default_factory=ModelSection)
    pipeline: PipelineSection = Field(default_factory=PipelineSection)
    admission: AdmissionSection = Field(default_factory=AdmissionSection)
    outputs: OutputsSection = Field(default_factory=OutputsSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    backends: BackendsSection = Field(default_factory=BackendsSection)
    cameras: dict[CameraName, CameraConfig] = Field(
        default_factory=lambda: {"s0": CameraConfig(url=str(DEFAULT_VIDEO))}, max_length=1024,
        description="streams by name (default: the sample video)")

    @model_validator(mode="after")
    def _cameras_fit_the_agent(self) -> AgentConfig:
        model_names = {self.model.name, self.model.path.stem} - {None}
        for name, camera in self.cameras.items():
            if camera.model is not None and camera.model not in model_names:
                raise ValueError(f"camera {name!r} asks for model {camera.model!r}, but this agent serves "
                                 f"{' / '.join(sorted(n for n in model_names if n))}: one engine serves every camera")
        return self

    def enabled_cameras(self) -> dict[str, CameraConfig]:
        return {name: c for name, c in self.cameras.items() if c.enabled}

    def stream_specs(self) -> list[StreamSpec]:
        """The enabled cameras as the streams to open, with the pipeline's defaults filled in."""
        p = self.pipeline
        return [StreamSpec(stream_id=name, url=c.url, fps=c.fps if c.fps is not None else p.fps,
                           deadline_ms=c.deadline_ms, loop=p.loop if c.loop is None else c.loop)
                for name, c in self.enabled_cameras().items()]


# The variables the agent reads (documented in README.md); each sets one key of the tree.
ENV_NAMES: dict[str, str] = {
    "EDGEBATCH_AGENT_ID": "agent.id",
    "EDGEBATCH_PREFIX": "agent.prefix",
    "EDGEBATCH_TELEMETRY_INTERVAL_S": "agent.telemetry_interval_s",
    "EDGEBATCH_PUBLISH_DETECTIONS": "agent.publish_detections",
    **BROKER_ENV_NAMES,
    "EDGEBATCH_REGISTRY": "model.registry",
    "EDGEBATCH_MODEL_NAME": "model.name",
    "EDGEBATCH_MODEL_VERSION": "model.version",
    "EDGEBATCH_BACKEND": "model.backend",
    "EDGEBATCH_METRICS": "metrics.address",
    "EDGEBATCH_METRICS_ADVERTISE": "metrics.advertise",
}

# argparse destination -> (key of the tree, the flag as a user types it)
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "agent_id": ("agent.id", "--agent-id"),
    "prefix": ("agent.prefix", "--prefix"),
    "telemetry_interval": ("agent.telemetry_interval_s", "--telemetry-interval"),
    "publish_detections": ("agent.publish_detections", "--publish-detections"),
    **BROKER_FLAG_KEYS,
    "model": ("model.path", "--model"),
    "backend": ("model.backend", "--backend"),
    "model_type": ("model.type", "--model-type"),
    "labels": ("model.labels", "--labels"),
    "registry": ("model.registry", "--registry"),
    "model_name": ("model.name", "--model-name"),
    "model_version": ("model.version", "--model-version"),
    "cache_dir": ("model.cache_dir", "--cache-dir"),
    "batch_size": ("pipeline.batch_size", "--batch-size"),
    "realtime": ("pipeline.realtime", "--realtime/--offline"),
    "deadline_ms": ("pipeline.deadline_ms", "--deadline-ms"),
    "fps": ("pipeline.fps", "--fps"),
    "max_frames": ("pipeline.max_frames", "--max-frames"),
    "loop": ("pipeline.loop", "--loop"),
    "device_path": ("pipeline.device_path", "--device-path"),
    "pre_workers": ("pipeline.pre_workers", "--pre-workers"),
    "post_workers": ("pipeline.post_workers", "--post-workers"),
    "admission": ("admission.enabled", "--no-admission"),
    "profile": ("admission.profile", "--profile"),
    "headroom": ("admission.headroom", "--headroom"),
    "admission_batch_sizes": ("admission.batch_sizes", "--admission-batch-sizes"),
    "overrun_windows": ("admission.overrun_windows", "--overrun-windows"),
    "detections": ("outputs.detections", "--detections"),
    "annotated": ("outputs.annotated", "--annotated"),
    "summary": ("outputs.summary", "--summary"),
    "metrics": ("metrics.address", "--metrics"),
    "metrics_advertise": ("metrics.advertise", "--metrics-advertise"),
}


def source_cameras(sources: list[str]) -> dict[str, dict[str, Any]]:
    """``--source`` flags as cameras: ``NAME=URL`` names the stream (NAME a valid stream id, so a URL with
    ``=`` in its query passes whole), a plain URL is ``s<position>``."""
    from edge_agent.sources import parse_source_arg

    cameras: dict[str, dict[str, Any]] = {}
    for i, text in enumerate(sources):
        name, url = parse_source_arg(text)
        name = name or f"s{i}"
        if name in cameras:
            raise ValueError(f"--source {text}: stream name {name!r} given twice")
        cameras[name] = {"url": url}
    return cameras
