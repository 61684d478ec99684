"""Every message that crosses a process boundary, as pydantic v2 models.

Units are in the field names (``_ms``, ``_bytes``, ``_pct``); every payload carries
``schema_version``; unknown fields are rejected so a typo never passes silently.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_INT = 2**53  # counters, sizes, generations: exact in every JSON reader, far beyond any real value
MAX_FLOAT = 1e15  # rates, delays, timestamps: finite (NaN and infinity are refused everywhere)

AgentId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$", description="agent identifier")]
BatchSize = Annotated[int, Field(ge=1, le=1024, description="frames per inference batch")]
# Detector families: the keys of edge_agent.adapters.ADAPTERS and the values of --model-type (kept here, where
# the wire shapes are; tests/test_schemas.py checks that the two agree).
ModelType = Literal["nanodet", "yolo-v5", "yolo-ultralytics", "yolox"]
MODEL_TYPES: tuple[str, ...] = get_args(ModelType)


def now_s() -> float:
    return time.time()


class WireModel(BaseModel):
    """Base of all wire messages: strict about unknown fields, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = Field(default=1, description="wire schema version (SCHEMA_VERSION)")


class PayloadError(ValueError):
    """A payload that is oversized, not JSON, or not of the expected shape."""

    def __init__(self, reason: Literal["oversized", "invalid"], detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


M = TypeVar("M", bound=WireModel)


def decode(model: type[M], payload: bytes | str) -> M:
    """Parse and validate one payload; raise PayloadError (never anything else) if it is bad."""
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversized", f"{size} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]["msg"]
        raise PayloadError("invalid", f"{model.__name__}: {exc.error_count()} error(s), first: {first}") from exc


def encode(message: WireModel) -> bytes:
    return message.model_dump_json().encode()


# --- order lifecycle (the agent's reconciler reports each desired generation's outcome) -----

RefusalReason = Literal[
    "unknown_model",  # the registry has no model of that name
    "unknown_version",  # the model has no such version
    "no_artifact",  # no artifact of the model/version serves this batch size on this device
    "fetch_error",  # the registry could not be read, or the download failed its sha256/size check
    "memory",  # the memory guard's estimate does not fit, or the device ran out of memory at that size
    "load_error",  # loading or warming up the new engine raised (any exception)
    "bad_input",  # an order that cannot apply to this agent (e.g. addressed to another agent)
    "no_registry",  # needs another engine (model, version or batch size) and no registry is configured
    "model_type",  # the artifact's recorded model type is not the one this agent's adapter decodes
]
OrderOutcomeKind = Literal["applied", "refused", "superseded"]


class OrderOutcome(WireModel):
    """How the agent decided one desired-state generation; the last one is kept in the retained status."""

    generation: int = Field(ge=1, le=MAX_INT, description="desired-state generation decided")
    outcome: OrderOutcomeKind = Field(description="applied (first batch at the new setting inferred), refused "
                                      "(serving state unchanged) or superseded (a newer generation came first)")
    refusal: RefusalReason | None = Field(default=None, description="machine-readable reason when refused")
    detail: str = Field(default="", max_length=4000, description="human-readable explanation")
    batch_size: BatchSize | None = Field(default=None, description="batch size the order asked for (resolved "
                                         "against what was served when it came)")
    ts: float = Field(default_factory=now_s, description="unix time it was decided")


# --- status ---------------------------------------------------------------------------------


class Capabilities(WireModel):
    backends: list[str] = Field(description="inference backends usable on this device")
    platform: str = Field(description="e.g. x86_64-cpu, x86_64-cuda, jetson-orin")
    gpu_name: str | None = Field(default=None, description="GPU model name, if any")
    gpu_sm: str | None = Field(default=None, description="GPU compute capability, e.g. 8.7")
    tensorrt_version: str | None = Field(default=None, description="TensorRT version, if installed")
    cuda_version: str | None = Field(default=None, description="CUDA driver version, if any")
    memory_total_bytes: int = Field(ge=0, le=MAX_INT, description="accelerator memory (host memory where none)")


class ServingState(WireModel):
    model: str = Field(description="model name being served")
    version: str = Field(description="model version being served")
    batch_size: BatchSize
    backend: str = Field(description="inference backend serving it")
    model_type: ModelType | None = Field(default=None, description="detector family its adapter decodes; None = "
                                         "not reported (an older agent)")
    servable_batch_sizes: list[BatchSize] | None = Field(
        default=None, max_length=1024, description="batch sizes this agent can serve (its engine's, or its "
        "registry's artifacts' for this model and device); None = any")


class AgentStatus(WireModel):
    agent_id: AgentId
    state: Literal["online", "offline"] = Field(description="availability; 'offline' is the last will")
    ts: float = Field(default_factory=now_s, description="unix time of this status")
    capabilities: Capabilities | None = Field(default=None, description="absent in the last will")
    serving: ServingState | None = Field(default=None, description="what the agent serves now")
    applied_generation: int = Field(default=0, ge=0, le=MAX_INT, description="last desired-state generation applied")
    last_order: OrderOutcome | None = Field(default=None, description="outcome of the last desired-state "
                                            "generation decided (applied, refused or superseded)")
    metrics_address: str | None = Field(
        default=None, max_length=300, pattern=r"^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_.-]{1,253}):[0-9]{1,5}$",
        description="HOST:PORT where Prometheus scrapes this agent's /metrics (edge-agent run --metrics); None = "
        "not served. Left out of the JSON when None, so a controller that predates it reads the status")

    @model_serializer(mode="wrap")
    def _leave_out_unset_metrics_address(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("metrics_address", "") is None:
            del data["metrics_address"]
        return data


# --- streams and admission control ---------------------------------------------------------

MAX_STREAMS = 64
MAX_ERROR_CHARS = 300  # a stream's last_error: one line, 64 of them fit a telemetry message easily
ConnectionState = Literal["connecting", "live", "failed", "ended"]
StreamId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="stream identifier")]


class StreamSpec(WireModel):
    """One stream an agent is asked to serve (in a desired state)."""

    stream_id: StreamId
    url: str = Field(min_length=1, max_length=2000, description="video file, camera index or rtsp/http URL")
    fps: float | None = Field(default=None, gt=0, le=1000, description="frame rate to read at (a cap on a live "
                              "source, the pace of a file); None = the stream's own rate")
    deadline_ms: float | None = Field(default=None, gt=0, le=3_600_000, description="end-to-end deadline of each "
                                      "frame; None = the agent's default")
    loop: bool = Field(default=False, description="loop a video file (demos, tests)")


class AdmissionFigures(WireModel):
    """Why a stream was admitted or refused: the device profile's prediction for the admitted set."""

    stream_id: StreamId
    admitted: bool = Field(description="the stream fits beside every stream admitted before it")
    batch_size: BatchSize | None = Field(description="best batch size for the set (the nearest to fitting when "
                                         "refused); None when the profile has no batch size at all")
    predicted_delay_ms: float = Field(ge=0, le=MAX_FLOAT,
                                      description="modelled batch delay (pre + infer + post) at batch_size")
    predicted_latency_ms: float = Field(ge=0, le=MAX_FLOAT,
                                        description="worst modelled end-to-end delay of the limiting stream: "
                                        "batch fill + one batch ahead + the batch itself")
    utilisation: float = Field(ge=0, le=MAX_FLOAT, description="predicted_delay_ms x total_fps / batch_size / 1000")
    headroom: float = Field(gt=0, le=1, description="utilisation the set may reach")
    total_fps: float = Field(ge=0, le=MAX_FLOAT, description="input rate of the set, this stream included")
    streams: int = Field(ge=0, le=MAX_INT, description="streams in the set, this stream included")
    limit: Literal["none", "throughput", "deadline", "profile"] = Field(
        description="what refused it: none (admitted), throughput (no batch size keeps up within the headroom), "
        "deadline (a stream's deadline fails), profile (no usable profile row)")
    limiting_stream: str | None = Field(default=None, description="the stream whose deadline is tightest / fails")
    reason: str = Field(default="", max_length=1000, description="one line a person reads")


class StreamState(WireModel):
    """One stream as the agent serves it now: admitted (read) or parked (not read), with its counts."""

    stream_id: StreamId
    state: Literal["admitted", "parked", "ended"] = Field(description="admitted: read and served; parked: refused "
                                                          "or parked on overrun, not read; ended: its source ended")
    fps: float = Field(ge=0, le=MAX_FLOAT, description="nominal frame rate")
    deadline_ms: float = Field(gt=0, le=MAX_FLOAT, description="end-to-end deadline of its frames")
    frames_in: int = Field(ge=0, le=MAX_INT, description="frames accepted since start")
    frames_out: int = Field(ge=0, le=MAX_INT, description="frames finished since start")
    dropped: int = Field(ge=0, le=MAX_INT, description="its frames dropped on overload since start")
    deadline_misses: int = Field(ge=0, le=MAX_INT, description="its frames finished after their deadline since start")
    reason: str = Field(default="", max_length=1000, description="why it is in this state")
    # The link to the source, beside the admission state above. Defaults: what an agent that predates them says.
    connection: ConnectionState | None = Field(
        default=None, description="connecting: being opened; live: open, frames come; failed: down (did not "
        "open, or dropped), reopened with backoff; ended: a file that ended (or failed to read); None: not "
        "reported (an older agent)")
    connection_since: float | None = Field(default=None, ge=0, le=MAX_FLOAT,
                                           description="unix time the stream entered its connection state")
    reconnects: int = Field(default=0, ge=0, le=MAX_INT, description="attempts to reopen it after a failed open "
                            "or a drop, since it was added")
    last_error: str = Field(default="", max_length=MAX_ERROR_CHARS, description="the last failure to open or read "
                            "it, one line ('' = none yet); kept after it recovers")


# --- telemetry ------------------------------------------------------------------------------


class LatencyStats(WireModel):
    count: int = Field(ge=0, le=MAX_INT, description="samples in the window")
    mean_ms: float = Field(ge=0, le=MAX_FLOAT, description="mean")
    p50_ms: float = Field(ge=0, le=MAX_FLOAT, description="median")
    p95_ms: float = Field(ge=0, le=MAX_FLOAT, description="95th percentile")
    p99_ms: float = Field(ge=0, le=MAX_FLOAT, description="99th percentile")
    max_ms: float = Field(ge=0, le=MAX_FLOAT, description="maximum")


class ResourceSample(WireModel):
    probe: str = Field(description="probe that took the sample: nvml, tegra, host")
    gpu_util_pct: float | None = Field(default=None, ge=0, le=100, description="accelerator busy share")
    gpu_memory_used_bytes: int | None = Field(default=None, ge=0, le=MAX_INT, description="accelerator memory used")
    gpu_memory_total_bytes: int | None = Field(default=None, ge=0, le=MAX_INT, description="accelerator memory total")
    process_gpu_memory_bytes: int | None = Field(default=None, ge=0, le=MAX_INT,
                                                 description="this process's GPU memory")
    host_memory_used_bytes: int = Field(ge=0, le=MAX_INT, description="host memory in use (total - available)")
    host_memory_total_bytes: int = Field(ge=0, le=MAX_INT, description="host memory total")
    process_rss_bytes: int = Field(ge=0, le=MAX_INT, description="resident memory of the agent process")
    cpu_util_pct: float = Field(ge=0, le=100, description="host CPU busy share, all cores")

    @property
    def memory_used_ratio(self) -> float:
        """Share of the memory that bounds batch growth: the GPU's if known, else the host's."""
        if self.gpu_memory_used_bytes is not None and self.gpu_memory_total_bytes:
            return self.gpu_memory_used_bytes / self.gpu_memory_total_bytes
        return self.host_memory_used_bytes / max(1, self.host_memory_total_bytes)


STAGES = ("pre", "queue", "infer", "post", "e2e", "batch")


class Telemetry(WireModel):
    agent_id: AgentId
    seq: int = Field(ge=0, le=MAX_INT, description="telemetry sequence number, +1 per message")
    ts: float = Field(default_factory=now_s, description="unix time at the end of the window")
    window_s: float = Field(gt=0, le=MAX_FLOAT, description="length of the stats window")
    batch_size: BatchSize
    batch_size_uniform: bool = Field(description="every batch in the window ran at batch_size")
    applied_generation: int = Field(ge=0, le=MAX_INT, description="last desired-state generation applied")
    source_fps_total: float = Field(ge=0, le=MAX_FLOAT, description="nominal input rate of all streams together")
    fps_in: float = Field(ge=0, le=MAX_FLOAT, description="frames accepted per second in the window")
    fps_out: float = Field(ge=0, le=MAX_FLOAT, description="frames finished per second in the window")
    frames_in: int = Field(ge=0, le=MAX_INT, description="frames accepted since start")
    frames_out: int = Field(ge=0, le=MAX_INT, description="frames finished since start")
    dropped: int = Field(ge=0, le=MAX_INT, description="frames dropped on overload since start")
    corrupt: int = Field(ge=0, le=MAX_INT, description="unreadable frames skipped since start")
    deadline_misses: int = Field(ge=0, le=MAX_INT, description="frames finished after their deadline since start")
    batches: int = Field(ge=0, le=MAX_INT, description="batches in the window")
    latency: dict[Literal["pre", "queue", "infer", "post", "e2e", "batch"], LatencyStats] = Field(
        description="per-stage delay in the window; 'batch' is pre+infer+post of one batch"
    )
    queue_depths: dict[str, Annotated[int, Field(ge=0, le=MAX_INT)]] = Field(
        max_length=32, description="frames waiting in each stage queue")
    resources: ResourceSample = Field(description="GPU / host memory and utilisation from the probe")
    streams: list[StreamState] = Field(default_factory=list, max_length=MAX_STREAMS,
                                       description="per-stream admission state and counts (admission control)")

    @field_validator("latency")
    @classmethod
    def _every_stage_is_reported(cls, latency: dict[str, LatencyStats]) -> dict[str, LatencyStats]:
        missing = sorted(set(STAGES) - set(latency))
        if missing:  # consumers (policies, fleet view, metrics) read every stage
            raise ValueError(f"latency lacks stage(s) {', '.join(missing)}")
        return latency


# --- desired state and events ---------------------------------------------------------------


class DesiredState(WireModel):
    agent_id: AgentId
    generation: int = Field(ge=1, le=MAX_INT, description="monotonic; an agent ignores generations it has passed")
    batch_size: BatchSize | None = Field(default=None, description="batch size to run, None = keep")
    model: str | None = Field(default=None, description="model name to serve, None = keep")
    version: str | None = Field(default=None, description="model version to serve, None = keep")
    reason: str = Field(default="", max_length=2000, description="why this was decided")
    issued_by: str = Field(default="operator", description="controller id or operator")
    ts: float = Field(default_factory=now_s, description="unix time of the decision")
    streams: list[StreamSpec] | None = Field(
        default=None, max_length=MAX_STREAMS,
        description="the streams this agent should serve, None = keep; streams not listed are removed, new ones "
        "are admitted only if the device profile says every admitted stream still meets its deadline")


EventKind = Literal[
    "desired_applied",
    "desired_ignored",
    "swap_started",
    "swap_finished",
    "swap_failed",
    "payload_rejected",
    "source_error",
    "error",
    # admission control
    "stream_admitted",
    "stream_refused",
    "stream_overrun",
    "stream_parked",
    "stream_removed",
    # order lifecycle: exactly one outcome per generation (desired_applied above, desired_ignored = stale)
    "desired_refused",
    "desired_superseded",
]


class AgentEvent(WireModel):
    agent_id: AgentId
    kind: EventKind = Field(description="what happened")
    ts: float = Field(default_factory=now_s, description="unix time of the event")
    generation: int | None = Field(default=None, ge=0, le=MAX_INT, description="desired-state generation concerned")
    detail: str = Field(default="", max_length=4000, description="human-readable explanation")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="e.g. download, load, warmup")
    admission: AdmissionFigures | None = Field(default=None, description="stream_* events: the admission "
                                               "figures behind the decision")
    refusal: RefusalReason | None = Field(default=None, description="machine-readable reason of a "
                                          "desired_refused (or swap_failed, payload_rejected) event")


# --- controller state -----------------------------------------------------------------------


class PolicyState(WireModel):
    """What a policy learned about one agent, kept where a replica that takes the agent over can read it."""

    agent_id: AgentId
    policy: str = Field(max_length=64, description="policy key that learned it")
    controller_id: str = Field(max_length=256, description="replica that wrote it")
    ts: float = Field(default_factory=now_s, description="unix time it was written")
    delay_ms_by_batch: dict[BatchSize, Annotated[float, Field(ge=0, le=3_600_000)]] = Field(
        default_factory=dict, max_length=64, description="smoothed measured batch delay per batch size")
    refused_batch_sizes: list[BatchSize] = Field(default_factory=list, max_length=64,
                                                 description="sizes the agent refused to serve")


class ControllerAlive(WireModel):
    """A controller replica's heartbeat, retained on ``{p}/controllers/{id}/alive``; its last will is
    the same with ``state="offline"``. Every replica reads all of them to know the live set."""

    controller_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$", description="replica id (unique in the fleet)")
    nonce: str = Field(pattern=r"^[0-9a-f]{8,64}$", description="random per process: tells two instances apart")
    state: Literal["online", "offline"] = Field(description="'offline' is the last will")
    started: float = Field(description="unix time this instance started (the later of two clashing ids yields)")
    ts: float = Field(default_factory=now_s, description="unix time of this heartbeat")
    heartbeat_s: float = Field(gt=0, le=60, description="seconds between heartbeats")
    ownership: Literal["hrw", "shared-hash", "single"] = Field(
        description="how this replica picks its agents: hrw = rendezvous hashing over the live replicas")


# --- detections -----------------------------------------------------------------------------


class Detection(WireModel):
    class_id: int = Field(ge=0, le=MAX_INT, description="COCO class index")
    label: str = Field(description="class name")
    score: float = Field(ge=0, le=1, description="confidence")
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in frame pixels")


class FrameDetections(WireModel):
    stream_id: str = Field(description="source stream")
    seq: int = Field(ge=0, le=MAX_INT, description="frame number within the stream")
    t_capture: float = Field(description="unix time the frame was captured")
    detections: list[Detection] = Field(description="objects found, best score first")


# --- model announcements --------------------------------------------------------------------


class ArtifactTarget(WireModel):
    platform: str = Field(default="any", description="x86_64-cuda, jetson-orin, any (ONNX)")
    sm: str | None = Field(default=None, description="GPU compute capability the engine was built for")
    tensorrt: str | None = Field(default=None, description="TensorRT version it was built with")
    cuda: str | None = Field(default=None, description="CUDA version it was built with")


class ArtifactInfo(WireModel):
    id: str = Field(description="store id of the artifact")
    name: str = Field(description="model name")
    version: str = Field(description="model version")
    batch_sizes: list[BatchSize] = Field(min_length=1, description="batch sizes it serves")
    format: Literal["onnx", "tensorrt"] = Field(description="onnx (any device) or a TensorRT engine plan")
    precision: Literal["fp32", "fp16", "int8"] = Field(default="fp32", description="numeric precision")
    dynamic_batch: bool = Field(default=False, description="serves any batch size up to max(batch_sizes)")
    model_type: ModelType | None = Field(default=None, description="detector family, i.e. the adapter that "
                                         "decodes it (edge-agent --model-type); None = unknown")
    target: ArtifactTarget = Field(default_factory=ArtifactTarget, description="where it runs")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the bytes, hex")
    size_bytes: int = Field(ge=0, le=MAX_INT, description="size of the file")
    created: float = Field(default_factory=now_s, description="unix time it was stored")


class ModelAnnouncement(WireModel):
    name: str = Field(description="model name")
    latest_version: str = Field(description="newest version in the registry")
    artifacts: list[ArtifactInfo] = Field(description="the artifacts of that version")


# --- run summary (edge-agent run --summary) -------------------------------------------------


class RunSummary(WireModel):
    mode: Literal["realtime", "offline"] = Field(description="paced with drops, or back-pressured")
    streams: int = Field(ge=0, le=MAX_INT, description="number of sources")
    duration_s: float = Field(ge=0, le=MAX_FLOAT, description="wall time of the run")
    frames_in: int = Field(ge=0, le=MAX_INT, description="frames accepted from the sources")
    frames_out: int = Field(ge=0, le=MAX_INT, description="frames fully processed")
    dropped: int = Field(ge=0, le=MAX_INT, description="frames dropped on overload (real-time mode only)")
    corrupt: int = Field(ge=0, le=MAX_INT, description="unreadable frames skipped")
    deadline_misses: int = Field(ge=0, le=MAX_INT, description="frames finished after their deadline")
    fps_out: float = Field(ge=0, le=MAX_FLOAT, description="frames_out / duration_s")
    batch_size: BatchSize = Field(description="batch size at the end of the run")
    batches_by_size: dict[int, int] = Field(description="batches run, by target batch size")
    latency: dict[str, LatencyStats] = Field(description="per-stage delay over the whole run")
    per_stream: list[StreamState] = Field(default_factory=list, max_length=MAX_STREAMS,
                                          description="per-stream admission state and counts")


# --- offline profile (edge-agent profile) ---------------------------------------------------


class ProfileRow(WireModel):
    batch_size: BatchSize
    pre_ms: float = Field(ge=0, le=MAX_FLOAT, description="pre-processing of the whole batch (sum over frames)")
    infer_ms: float = Field(ge=0, le=MAX_FLOAT, description="inference of the batch")
    post_ms: float = Field(ge=0, le=MAX_FLOAT, description="decoding + NMS of the batch")
    total_ms: float = Field(ge=0, le=MAX_FLOAT, description="pre + infer + post: the batch delay")
    realtime_limit_ms: float = Field(ge=0, le=MAX_FLOAT, description="real-time condition: batch_size x frame interval")
    margin_ms: float = Field(description="realtime_limit_ms - total_ms; negative = cannot keep up")
    meets_realtime: bool = Field(description="total_ms < realtime_limit_ms")
    throughput_fps: float = Field(ge=0, le=MAX_FLOAT, description="batch_size / total")
    infer_fps: float = Field(ge=0, le=MAX_FLOAT, description="batch_size / infer: the engine alone")
    peak_memory_bytes: int = Field(ge=0, le=MAX_INT, description="peak accelerator (or process) memory while serving")
    memory_kind: Literal["gpu", "process_rss"] = Field(description="what peak_memory_bytes measures")
    engine: str | None = Field(default=None, description="what this row ran: backend and model file, or the "
                               "registry artifact (format, id, precision) the device picked for this size")


class ProfileReport(WireModel):
    device: str = Field(description="what it ran on")
    backend: str = Field(description="inference backend measured")
    model: str = Field(description="model file")
    source: str = Field(description="video the frames came from")
    fps: float = Field(gt=0, le=MAX_FLOAT, description="input rate the real-time condition is computed for")
    batches_per_size: int = Field(ge=1, le=MAX_INT, description="batches averaged per batch size")
    rows: list[ProfileRow] = Field(description="one row per batch size")
