"""``edge-agent``: run the pipeline (optionally under a controller over MQTT), or profile a device."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.adapters import ADAPTERS, AdapterError, ModelAdapter, adapter_for
from edge_agent.config import (
    DEFAULT_CACHE,
    DEFAULT_MODEL,
    DEFAULT_VIDEO,
    ENV_NAMES,
    FLAG_KEYS,
    AgentConfig,
    source_cameras,
)
from edge_agent.console import StatusLine, print_profile, print_summary, status_line
from edge_agent.engines import BACKENDS, InferenceEngine, load_engine
from edge_agent.errors import EdgeAgentError, ModelError
from edge_agent.nanodet import load_labels
from edge_agent.pipeline import FrameSink, Pipeline, PipelineConfig
from edge_agent.probes import auto_probe
from edge_agent.sinks import AnnotatedVideoSink, JsonLinesSink
from edge_agent.sources import open_streams
from edge_agent.stages import DetectionFilter, StageSettings
from edge_agent.streams import AdmissionSettings, StreamRoster, admission_sizes, load_device_profile, print_decisions
from mqtt_bus.args import (
    OneLineErrorParser,
    add_broker_options,
    batch_list,
    bounded_float,
    bounded_int,
    broker_settings,
    finite_float,
    readable_file,
    segment,
    topic_prefix,
)
from mqtt_bus.layered_config import ConfigError, Layered, load_layered
from mqtt_bus.secrets import redact
from schemas import ArtifactInfo

if TYPE_CHECKING:
    from edge_agent.probes import ResourceProbe
    from edge_agent.swap import EngineSwapper
    from edge_agent.web import MetricsServer

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
DEFAULT_LABELS = SAMPLES / "models" / "coco.names"

log = logging.getLogger("edge_agent")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def host_port(text: str) -> str:
    from mqtt_bus.http import parse_address
    from schemas import AgentStatus

    try:
        parse_address(text)
        AgentStatus(agent_id="x", state="online", metrics_address=text)  # what the status may carry
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be HOST:PORT (a name, an IPv4 or [IPv6] address)") from None
    return text


def adapter_of(engine: InferenceEngine, model_type: str | None, labels: list[str] | None,
               fallback_labels: list[str]) -> ModelAdapter:
    """The model adapter for ``engine`` (``--model-type``, else inferred), its errors as the model's."""
    try:
        return adapter_for(Path(engine.path), engine.input_size, engine.output_names, model_type, labels,
                           fallback_labels)
    except AdapterError as exc:
        raise ModelError(engine.path, str(exc)) from exc


def recorded_model_type(given: str | None, info: ArtifactInfo) -> str | None:
    """``--model-type``, else the type the registry records for the artifact (a TensorRT plan has no graph
    to infer it from); the two must agree."""
    if given is not None and info.model_type is not None and given != info.model_type:
        raise EdgeAgentError(f"--model-type {given}, but the registry records {info.name} {info.version} as "
                             f"{info.model_type}")
    return given or info.model_type


def load_labels_for(model: Path, labels: Path | None) -> list[str]:
    path = labels or (model.parent / "coco.names" if (model.parent / "coco.names").exists() else DEFAULT_LABELS)
    if not path.exists():
        raise ModelError(str(path), "labels file not found")
    return load_labels(path)


def add_run_args(run: argparse.ArgumentParser) -> None:
    """Flags of ``run`` (and ``config``): each sets one key of the settings tree (edge_agent/config.py);
    a flag not given is absent (SUPPRESS), so the file, the environment or the default decides."""
    S = argparse.SUPPRESS
    run.add_argument("--config", type=readable_file, default=os.environ.get("EDGEBATCH_CONFIG") or None,
                     help="YAML settings file (env EDGEBATCH_CONFIG): cameras by name and every setting below; "
                     "the environment overrides it, flags override both; `edge-agent config --print` shows the "
                     "result")
    run.add_argument("--source", action="append", dest="sources", metavar="[NAME=]URL", default=S,
                     help="video file, camera index or rtsp/http URL, optionally named (cam1=rtsp://...; default "
                     "name s<position>); repeat for several streams (replaces the file's cameras; default: the "
                     "sample video). A camera or URL that is down is retried with backoff while the others run")
    run.add_argument("--model", type=Path, default=S, help="ONNX model (default: sample NanoDet-m)")
    run.add_argument("--backend", default=S, choices=sorted(BACKENDS),
                     help="onnxruntime (CPU, or its CUDA/TensorRT providers; default), pytorch (the ONNX through "
                     "onnx2torch, on CUDA if present), tensorrt (--model is a .plan); registry engines always "
                     "run on TensorRT")
    run.add_argument("--model-type", default=S, choices=sorted(ADAPTERS),
                     help="model family; default: inferred from the ONNX (output names, shapes, metadata), "
                     "NanoDet for a TensorRT plan")
    run.add_argument("--labels", type=Path, default=S,
                     help="class names, one per line (default: the model's metadata, else coco.names)")
    run.add_argument("--batch-size", type=bounded_int(1, 1024), default=S,
                     help="initial batch size (default 4; standalone with admission control, the best size for the "
                     "admitted streams)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--realtime", dest="realtime", action="store_true", default=S,
                      help="pace sources at their fps, drop the oldest frame on overload (default)")
    mode.add_argument("--offline", dest="realtime", action="store_false", default=S,
                      help="as fast as possible, never drop: back-pressure to the sources")
    run.add_argument("--fps", type=bounded_float(0, 1000), default=S,
                     help="frame rate of every stream without one of its own (a camera's fps in the file wins)")
    run.add_argument("--deadline-ms", type=bounded_float(0, 3_600_000), default=S,
                     help="end-to-end deadline per frame (default 1000)")
    run.add_argument("--max-frames", type=positive_int, default=S, help="stop after this many frames in total")
    run.add_argument("--device-path", choices=["auto", "always", "never"], default=S,
                     help="frames to the engine's GPU as uint8, pre- and post-processing there (default: auto, "
                          "for an engine on a GPU that takes device tensors: --backend pytorch on CUDA)")
    run.add_argument("--pre-workers", type=bounded_int(1, 256), default=S,
                     help="host pre-processing threads (default: measured on the first batches)")
    run.add_argument("--post-workers", type=bounded_int(1, 256), default=S,
                     help="host decoding threads (default: measured on the first batches)")
    run.add_argument("--loop", action="store_true", default=S, help="loop video files (endless demo)")
    run.add_argument("--detections", type=Path, default=S, help="write detections as JSON lines here")
    run.add_argument("--annotated", type=Path, default=S, help="write annotated MJPG video per stream here")
    run.add_argument("--summary", type=Path, default=S, help="write the end-of-run figures as JSON here")
    adm = run.add_argument_group("admission control", "a stream is admitted only if this device's profile says "
                                 "every admitted stream still meets its deadline at some batch size; else it is "
                                 "parked (not read) and reported")
    adm.add_argument("--profile", type=Path, default=S, help="device profile to admit against: the JSON of "
                     "`edge-agent profile --json` (default: measure a few batches per size at start-up)")
    adm.add_argument("--no-admission", dest="admission", action="store_false", default=S,
                     help="admit every stream (figures are still computed and reported)")
    adm.add_argument("--headroom", type=finite_float, default=S, help="utilisation the admitted streams may reach "
                     "(default 0.8: margin for load the profile does not see)")
    adm.add_argument("--admission-batch-sizes", type=batch_list, default=S,
                     help="batch sizes admission chooses among (default 1,2,4,8, or those a static engine serves)")
    adm.add_argument("--overrun-windows", type=positive_int, default=S, help="windows of 1 s in a row with "
                     "misses, drops or frames at risk (over 1%% of a stream's frames) that make an overrun "
                     "(default 2)")
    add_broker_options(run, None, "publish telemetry and obey a controller", settings_tree=True)
    run.add_argument("--agent-id", type=segment("agent id"), default=S,
                     help="agent id on MQTT (default: the host name)")
    run.add_argument("--prefix", type=topic_prefix, default=S, help="MQTT topic prefix (default edgebatch)")
    run.add_argument("--telemetry-interval", type=bounded_float(0.05, 3600, low_inclusive=True), default=S,
                     help="seconds between telemetry messages (default 1)")
    run.add_argument("--publish-detections", action="store_true", default=S,
                     help="publish per-frame detections on MQTT")
    run.add_argument("--registry", default=S,
                     help="model registry: a directory or mongodb://... (engines are then fetched from it, and "
                     "swapped on orders; env EDGEBATCH_REGISTRY keeps a MongoDB password off the command line)")
    run.add_argument("--model-name", default=S, help="model to serve from the registry")
    run.add_argument("--model-version", default=S, help="version to serve from the registry (default latest)")
    run.add_argument("--cache-dir", type=Path, default=S, help=f"artifact cache (default {DEFAULT_CACHE})")
    run.add_argument("--metrics", type=host_port, default=S, metavar="HOST:PORT",
                     help="serve /metrics (Prometheus) and /healthz here, e.g. 0.0.0.0:9108 (default: off); with "
                     "--broker the address is announced in the status, for the controller's Prometheus discovery")
    run.add_argument("--metrics-advertise", type=host_port, default=S, metavar="HOST:PORT",
                     help="address announced for Prometheus to scrape (default: --metrics, with 0.0.0.0 replaced "
                     "by this host's name)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="edge-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True)
    # -v after the command too (edge-agent run -v): absent unless given there, so the one before stands.
    common = OneLineErrorParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug detail")

    run = sub.add_parser("run", help="run the pipeline on one or more streams", parents=[common])
    add_run_args(run)
    config = sub.add_parser("config", help="show the effective settings of `run` and where each came from",
                            parents=[common])
    add_run_args(config)
    config.add_argument("--print", action="store_true", default=True, help="print them (the default)")
    config.add_argument("--json", action="store_true", help="as JSON: key -> {value, from}")

    demo = sub.add_parser("demo", help="the whole loop locally: private mosquitto, controller, agent",
                          parents=[common])
    demo.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    demo.add_argument("--labels", type=Path, default=None)
    demo.add_argument("--source", type=Path, default=DEFAULT_VIDEO, help="video played by every stream")
    demo.add_argument("--streams", type=positive_int, default=None,
                      help="concurrent streams (default: as many as load this device to about 60%%)")
    demo.add_argument("--duration", type=bounded_float(0, 86_400), default=40.0, help="seconds to run (default 40)")
    demo.add_argument("--policy", default=None, help="controller policy (default: the controller's default, "
                      "deadline); an unknown key lists the known ones")
    demo.add_argument("--registry", default=None, help="swap engines from this registry (default: a fresh local "
                      "one holding the sample model exported for batch 1, 2, 4, 8, 16)")

    prof = sub.add_parser("profile", help="measure pre/infer/post per batch size (the paper's Table 1)",
                          parents=[common])
    prof.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    prof.add_argument("--labels", type=Path, default=None)
    prof.add_argument("--model-type", default=None, choices=sorted(ADAPTERS),
                      help="model family (default: inferred from the ONNX)")
    prof.add_argument("--source", default=str(DEFAULT_VIDEO), help="video to take frames from")
    prof.add_argument("--batch-sizes", type=batch_list, default=[1, 2, 4, 8, 16], help="e.g. 1,2,4,8,16")
    prof.add_argument("--fps", type=bounded_float(0, 1000), default=None, help="input rate for the real-time condition "
                      "(default: the video's)")
    prof.add_argument("--batches", type=positive_int, default=8, help="batches measured per size (default 8)")
    prof.add_argument("--backend", default="onnxruntime", choices=sorted(BACKENDS),
                      help="onnxruntime (CPU, or its CUDA/TensorRT providers), tensorrt (--model is a .plan "
                      "serving every size asked), pytorch (the ONNX through onnx2torch, on CUDA if present)")
    prof.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    prof.add_argument("--device-path", choices=["auto", "always", "never"], default="auto",
                      help="the chain to measure, as run --device-path chooses it (default: auto)")
    prof.add_argument("--registry", default=None, help="measure, per batch size, the artifact this device would "
                      "load from this registry (a directory or mongodb://...): per-size TensorRT engines, static "
                      "ONNX, ... instead of --model")
    prof.add_argument("--model-name", default=None, help="model in the registry")
    prof.add_argument("--model-version", default="latest", help="version in the registry (default latest)")
    prof.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"artifact cache (default {DEFAULT_CACHE})")
    return parser


def writable(path: Path, flag: str) -> None:
    """Before a long run: the folder of an output file exists (made if need be) and can be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeAgentError(f"{flag} {path}: {exc.strerror or exc}") from exc
    if not os.access(path.parent, os.W_OK) or path.is_dir():
        raise EdgeAgentError(f"{flag} {path}: not a writable file path")


async def run_command(args: argparse.Namespace) -> int:
    for path, flag in ((args.summary, "--summary"), (args.detections, "--detections"),
                       (args.annotated and args.annotated / "x", "--annotated")):
        if path:
            writable(path, flag)
    if args.broker:
        try:
            broker_settings(args)  # a clash or an unreadable secret: say so before loading anything
        except ValueError as exc:
            raise EdgeAgentError(str(exc)) from None
    given_labels = load_labels_for(args.model, args.labels) if args.labels else None
    fallback_labels = load_labels_for(args.model, None)
    probe = auto_probe()
    swapper = None
    model_name, model_version, artifact_sha = args.model.stem, "local", None
    model_type = args.model_type
    if args.registry:
        from edge_agent.swap import ArtifactCache, EngineSwapper, local_device_target
        from model_registry.errors import RegistryError
        from model_registry.stores import open_store

        if not args.model_name:
            raise EdgeAgentError("--registry needs --model-name (and optionally --model-version)")
        swapper = EngineSwapper(open_store(args.registry), ArtifactCache(args.cache_dir), local_device_target(),
                                onnx_backend=onnx_backend(args.backend),
                                backend_options=args.settings.backends.options())
        try:
            info = await swapper.resolve(args.model_name, args.model_version, args.batch_size or 4)
            engine, _ = await swapper.load(info, args.batch_size or 4, probe)
        except RegistryError as exc:
            raise EdgeAgentError(f"registry {redact(args.registry)}: {exc}") from exc
        model_name, model_version, artifact_sha = info.name, info.version, info.sha256
        model_type = recorded_model_type(args.model_type, info)
    else:
        engine = await asyncio.to_thread(load_engine, args.model, args.backend,
                                         args.settings.backends.options().get(args.backend))
    batch_size = args.batch_size or 4
    pipeline_filters: dict[str, DetectionFilter] = {}
    sources = await open_streams(args.settings.stream_specs())
    for name, camera in args.settings.enabled_cameras().items():
        if camera.score_threshold is not None or camera.classes is not None:
            pipeline_filters[name] = DetectionFilter(camera.score_threshold, frozenset(camera.classes or ()) or None)
    sinks: list[FrameSink] = []
    if args.detections:
        sinks.append(JsonLinesSink(args.detections))
    if args.annotated:
        sinks.append(AnnotatedVideoSink(args.annotated, fps=sources[0].info.fps if sources[0].info else 10.0))
    if engine.batch_sizes is not None and batch_size not in engine.batch_sizes:
        batch_size = min(engine.batch_sizes)
    config = PipelineConfig(
        batch_size=batch_size, realtime=args.realtime, deadline_ms=args.deadline_ms, max_frames=args.max_frames,
        stages=StageSettings(pre_workers=args.pre_workers, post_workers=args.post_workers,
                             device_path=args.device_path),
    )
    decoder = adapter_of(engine, model_type, given_labels, fallback_labels)
    pipeline = Pipeline(sources, engine, decoder, config, sinks, model=model_name,
                        version=model_version, artifact_sha256=artifact_sha)
    pipeline.detection_filters.update(pipeline_filters)
    metrics = await start_metrics(args.metrics, pipeline, probe)
    try:  # the metrics server goes whatever ends the run
        roster = await start_roster(args, pipeline, engine, decoder, probe.name != "host",
                                    adapt_batch_size=args.batch_size is None and not args.broker)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, pipeline.stop)
            loop.add_signal_handler(signal.SIGTERM, pipeline.stop)
        line = StatusLine()
        if args.broker:
            from edge_agent.agent import Agent
            from edge_agent.settings import AgentSettings

            given = {"broker_url": args.broker, "broker_ca_file": args.ca_file,
                     "broker_password_file": args.broker_password_file, "broker_client_cert": args.client_cert,
                     "broker_client_key": args.client_key, "prefix": args.prefix, "agent_id": args.agent_id,
                     "telemetry_interval_s": args.telemetry_interval,
                     "publish_detections": args.publish_detections,
                     "connect_wait_s": args.settings.agent.connect_wait_s}
            overrides = {key: value for key, value in given.items() if value is not None}  # else env, else default
            try:
                settings = AgentSettings(**overrides)
            except ValueError as exc:
                raise EdgeAgentError(f"bad agent settings: {exc}") from exc
            agent = Agent(pipeline, probe, settings, on_window=lambda w: line.update(
                status_line(w, pipeline.batch_size, pipeline.stats.dropped, pipeline.stats.deadline_misses,
                            pipeline.queue_depths())), swap_handler=swapper, roster=roster)
            if metrics is not None:
                metrics.metrics.agent = agent
                agent.metrics_address = metrics.advertised(args.metrics_advertise)
            summary = await agent.run()
        else:
            async def show() -> None:
                await pipeline.started.wait()
                while True:
                    await asyncio.sleep(1.0)
                    w = pipeline.stats.take_window()
                    line.update(status_line(w, pipeline.batch_size, pipeline.stats.dropped,
                                            pipeline.stats.deadline_misses, pipeline.queue_depths()))

            shower = asyncio.create_task(show(), name="status-line")
            admission = asyncio.create_task(roster.run(), name="admission")
            try:
                summary = await pipeline.run()
            finally:
                shower.cancel()
                admission.cancel()
    finally:
        if metrics is not None:
            await metrics.close()
    line.finish()
    summary = summary.model_copy(update={"per_stream": roster.states()})
    print_summary(summary)
    if args.summary:
        try:
            args.summary.write_text(summary.model_dump_json(indent=2))
        except OSError as exc:  # checked at start, but the disk may have filled or the folder gone since
            raise EdgeAgentError(f"--summary {args.summary}: {exc.strerror or exc}") from exc
    return 0


async def start_metrics(address: str | None, pipeline: Pipeline, probe: ResourceProbe) -> MetricsServer | None:
    """/metrics and /healthz on ``--metrics HOST:PORT`` (None: off)."""
    if address is None:
        return None
    from edge_agent.metrics import AgentMetrics
    from edge_agent.web import MetricsServer
    from mqtt_bus.http import parse_address

    host, port = parse_address(address)
    server = MetricsServer(AgentMetrics(pipeline, probe), host, port)
    try:
        await server.start()
    except OSError as exc:
        raise EdgeAgentError(f"--metrics {address}: {exc.strerror or exc}") from exc
    print(f"metrics on http://{address.rpartition(':')[0] or host}:{server.port}/metrics", file=sys.stderr, flush=True)
    return server


async def start_roster(args: argparse.Namespace, pipeline: Pipeline, engine: InferenceEngine,
                       decoder: ModelAdapter, overlap: bool, adapt_batch_size: bool) -> StreamRoster:
    """Admission control over the streams given: the device profile, then each stream admitted or parked."""
    if not 0 < args.headroom <= 1:
        raise EdgeAgentError(f"--headroom must be in (0, 1], got {args.headroom}")
    sizes = admission_sizes(engine, args.admission_batch_sizes)
    # A file or camera already open; the sample video when every stream is a camera not connected yet.
    first = next((s.uri for s in pipeline.sources if s.info is not None), str(DEFAULT_VIDEO))
    profile = await load_device_profile(engine, decoder, first, sizes, args.profile, overlap,
                                        progress=lambda m: print(m, file=sys.stderr, flush=True))
    # Offline runs pace themselves by back-pressure and have no real-time deadline to protect: every stream
    # is admitted (the figures are still reported).
    settings = AdmissionSettings(enabled=args.admission and args.realtime, headroom=args.headroom,
                                 overrun_windows=args.overrun_windows, adapt_batch_size=adapt_batch_size)
    roster = StreamRoster(pipeline, profile, settings)
    roster.listeners.append(lambda kind, stream_id, _f, detail: print(
        f"{kind.replace('_', ' ')} {stream_id}: {detail}", flush=True) if kind not in (
            "stream_admitted", "stream_refused") else None)
    print_decisions(roster.admit_initial(), lambda m: print(m, flush=True))
    if adapt_batch_size:
        print(f"batch size {pipeline.serving.batch_size} (best for the admitted streams)", flush=True)
    return roster


def onnx_backend(backend: str) -> str:
    """The backend for ONNX artifacts when --backend is asked for: tensorrt runs engines, not ONNX."""
    return "onnxruntime" if backend == "tensorrt" else backend


async def registry_engines(args: argparse.Namespace) -> tuple[EngineSwapper, dict[int, tuple[Path, ArtifactInfo]]]:
    """Per batch size, the artifact this device would load from ``--registry``, fetched and verified."""
    from edge_agent.swap import ArtifactCache, EngineSwapper, local_device_target
    from model_registry.errors import RegistryError
    from model_registry.stores import open_store

    if not args.model_name:
        raise EdgeAgentError("--registry needs --model-name (and optionally --model-version)")
    cache = ArtifactCache(args.cache_dir)
    swapper = EngineSwapper(open_store(args.registry), cache, local_device_target(),
                            onnx_backend=onnx_backend(args.backend))
    picked: dict[int, tuple[Path, ArtifactInfo]] = {}
    try:
        for size in args.batch_sizes:
            info = await swapper.resolve(args.model_name, args.model_version, size)
            path, _ = await cache.ensure(swapper.store, info)
            picked[size] = (path, info)
    except RegistryError as exc:
        raise EdgeAgentError(f"registry {redact(args.registry)}: {exc}") from exc
    return swapper, picked


def profile_command(args: argparse.Namespace) -> int:
    from edge_agent.profiler import run_profile

    if args.json:
        writable(args.json, "--json")
    given_labels = load_labels_for(args.model, args.labels) if args.labels else None
    fallback_labels = load_labels_for(args.model, None)
    engine_for = None
    model_label, backend_label = str(args.model), args.backend
    model_type = args.model_type
    if args.registry:
        swapper, picked = asyncio.run(registry_engines(args))

        def engine_for(size: int) -> tuple[InferenceEngine, str]:
            path, info = picked[size]
            backend = swapper.backend_for(info)
            sizes = f"dynamic<={max(info.batch_sizes)}" if info.dynamic_batch else "b" + ",".join(
                map(str, info.batch_sizes))
            return load_engine(path, backend), f"{backend} {info.id[:12]} {sizes} {info.precision}"

        first = next(iter(picked.values()))[1]
        model_type = recorded_model_type(args.model_type, first)
        model_label = f"{first.name} {first.version} from {args.registry}"
        backend_label = "+".join(sorted({swapper.backend_for(info) for _, info in picked.values()}))
        engine, _ = engine_for(min(picked))
    else:
        engine = load_engine(args.model, args.backend)  # fail fast with a clear error on a bad model
    try:
        decoder = adapter_of(engine, model_type, given_labels, fallback_labels)
    finally:
        engine.close()
    probe = auto_probe()
    report = run_profile(
        args.model, args.source, args.batch_sizes, decoder, probe, fps=args.fps,
        batches=args.batches, backend=args.backend, progress=lambda m: print(m, file=sys.stderr),
        engine_for=engine_for, stages=StageSettings(device_path=args.device_path),
    )
    report = report.model_copy(update={"model": model_label, "backend": backend_label})
    print_profile(report)
    if args.json:
        try:
            args.json.write_text(report.model_dump_json(indent=2))
        except OSError as exc:
            raise EdgeAgentError(f"--json {args.json}: {exc.strerror or exc}") from exc
    return 0


def load_settings(args: argparse.Namespace) -> Layered[AgentConfig]:
    """The settings tree from --config, EDGEBATCH_* and the flags given; then the flags' names in ``args``
    carry the effective values, for the code below that reads them."""
    flags = {key: (flag, getattr(args, dest)) for dest, (key, flag) in FLAG_KEYS.items() if hasattr(args, dest)}
    if getattr(args, "sources", None):
        try:
            flags["cameras"] = ("--source", source_cameras(args.sources))
        except ValueError as exc:
            raise EdgeAgentError(str(exc)) from None
    try:
        layered = load_layered(AgentConfig, file=Path(args.config) if args.config else None, env_names=ENV_NAMES,
                               flags=flags)
    except ConfigError as exc:
        raise EdgeAgentError(f"settings: {exc}") from None
    tree = layered.config.model_dump()
    for dest, (key, _flag) in FLAG_KEYS.items():
        section, _, name = key.partition(".")
        setattr(args, dest, tree[section][name])
    args.settings = layered.config
    return layered


def config_command(args: argparse.Namespace) -> int:
    layered = load_settings(args)
    if args.json:
        print(json.dumps({k: {"value": v, "from": o} for k, v, o in layered.effective()}, indent=2))
    else:
        print("\n".join(layered.lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "config":
            return config_command(args)
        if args.command == "run":
            load_settings(args)
            return asyncio.run(run_command(args))
        if args.command == "profile":
            return profile_command(args)
        if args.command == "demo":
            from cloud_controller.policies import DEFAULT_POLICY, check_policy_name
            from edge_agent.demo import run_demo

            try:  # before anything is started or written: a typo costs one line, not a traceback
                policy = check_policy_name(args.policy or DEFAULT_POLICY)
            except ValueError as exc:
                raise EdgeAgentError(str(exc)) from None
            labels = args.labels or DEFAULT_LABELS
            load_engine(args.model).close()
            return asyncio.run(run_demo(args.model, labels, args.source, args.streams, args.duration, policy,
                                        registry=args.registry))
    except EdgeAgentError as exc:
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
