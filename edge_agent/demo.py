"""The whole loop on one machine: a private mosquitto, the controller and an agent on the sample video."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from cloud_controller.controller import Controller
from cloud_controller.policies import make_policy
from cloud_controller.web import FleetServer
from edge_agent.adapters import ModelAdapter, NanoDetAdapter
from edge_agent.agent import Agent
from edge_agent.console import make_console, print_summary
from edge_agent.engines import InferenceEngine
from edge_agent.nanodet import load_labels
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes import auto_probe
from edge_agent.profiler import profile_batch_size, read_frames
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from edge_agent.streams import StreamRoster, admission_sizes, load_device_profile, print_decisions
from edge_agent.swap import ArtifactCache, EngineSwapper, local_device_target
from model_registry.registry import Registry
from model_registry.stores import open_store
from mqtt_bus import BrokerSettings
from mqtt_bus.local_broker import LocalBroker
from schemas import AgentEvent

LADDER = [1, 2, 4, 8, 16]


async def prepare_registry(registry: str | None, model: Path, workdir: Path,
                           say: Callable[[str], None]) -> tuple[EngineSwapper, str]:
    """The registry the agent swaps from: the given one, or a local one filled with the sample model
    exported once per batch size of the ladder (so every batch change is a real engine swap)."""
    location = registry or str(workdir / "registry")
    store = open_store(location)
    name = "nanodet-m-416-coco"
    if registry is None:
        t = time.monotonic()
        pushed = await Registry(store).push(model, name, "1", export_static=LADDER)
        say(f"registry {location}: pushed {len(pushed)} artifacts (dynamic + static batch {LADDER}) "
            f"in {time.monotonic() - t:.1f} s")
    return EngineSwapper(store, ArtifactCache(workdir / "cache"), local_device_target()), name


def streams_for_load(engine: InferenceEngine, decoder: ModelAdapter, video: Path,
                     target_load: float = 0.6) -> tuple[int, float, float]:
    """How many streams of ``video`` load this device to about ``target_load``: measures pre + infer + post
    of a few real frames at the size the engine serves (a static engine pads a smaller batch: timing one
    frame through a batch-4 engine would count four). Returns (streams, ms per frame, fps per stream)."""
    size = min(engine.batch_sizes) if engine.batch_sizes else 1
    frames, fps = read_frames(str(video), 6)
    profile_batch_size(engine, decoder, frames, size, 1)  # warm-up
    pre, infer, post = profile_batch_size(engine, decoder, frames, size, 5)
    per_frame = (pre + infer + post) / size
    return max(1, min(8, int(target_load * 1000.0 / (per_frame * fps)))), per_frame, fps  # at most the target


async def run_demo(model: Path, labels: Path, video: Path, streams: int | None, duration_s: float, policy: str,
                   initial_batch: int = 4, registry: str | None = None, console: Console | None = None) -> int:
    console = console or make_console()
    t0 = time.monotonic()

    def say(text: str) -> None:
        console.print(f"[dim]{time.monotonic() - t0:6.1f}s[/dim] {text}", highlight=False)

    workdir = Path(tempfile.mkdtemp(prefix="edgebatch-demo-"))
    swapper, name = await prepare_registry(registry, model, workdir, say)
    with LocalBroker(persistence=False) as broker:
        say(f"mosquitto listening on {broker.url}")
        controller = Controller(BrokerSettings.from_url(broker.url), make_policy(policy), prefix="edgebatch",
                                controller_id="demo-controller")
        controller.decision_listeners.append(lambda view, desired, decision: say(
            f"[bold cyan]controller[/bold cyan] generation {desired.generation}: "
            f"batch {decision.figures.get('batch_size')} -> [bold]{desired.batch_size}[/bold] ({decision.reason})"))

        def on_event(event: AgentEvent) -> None:
            if event.kind == "swap_finished" and "decision_to_first_batch" in event.timings_ms:
                t = event.timings_ms
                say(f"[bold green]agent[/bold green] swapped to {event.detail}: "
                    f"{'cache hit' if t.get('cache_hit') else 'downloaded'} {t.get('download', 0):.0f} ms, "
                    f"load {t.get('load', 0):.0f} ms, warm-up {t.get('warmup', 0):.0f} ms; first batch "
                    f"{t['decision_to_first_batch']:.0f} ms after the decision")
            elif event.kind in ("desired_refused", "payload_rejected", "error"):
                reason = f" [{event.refusal}]" if event.refusal else ""
                say(f"[bold red]agent[/bold red] {event.kind}{reason}: generation {event.generation}: {event.detail}")

        controller.event_listeners.append(on_event)
        fleet = FleetServer(controller, "127.0.0.1", 0)
        say(f"controller ({policy}); fleet view http://127.0.0.1:{await fleet.start()}/ (Prometheus on /metrics)")
        info = await swapper.resolve(name, "latest", initial_batch)
        engine, _ = await swapper.load(info, initial_batch, auto_probe())
        decoder = NanoDetAdapter(load_labels(labels))
        if streams is None:
            streams, per_frame, fps = await asyncio.to_thread(streams_for_load, engine, decoder, video)
            say(f"this device: {per_frame:.0f} ms per frame at batch {initial_batch} -> {streams} stream(s) of "
                f"{fps:g} fps (at most 60% load; --streams N to choose)")
        assert streams is not None
        sources = await open_sources([str(video)] * streams, loop=True)
        pipeline = Pipeline(sources, engine, decoder,
                            PipelineConfig(batch_size=initial_batch, realtime=True), model=name,
                            version=info.version, artifact_sha256=info.sha256)
        settings = AgentSettings(broker_url=broker.url, agent_id="demo-agent", prefix="edgebatch")
        profile = await load_device_profile(engine, decoder, str(video), admission_sizes(engine),
                                            overlap=auto_probe().name != "host")
        roster = StreamRoster(pipeline, profile)
        say(f"admission: {profile.describe()}")
        print_decisions(roster.admit_initial(), say)

        def on_window(w) -> None:  # type: ignore[no-untyped-def]
            if w.frames_out or w.frames_in:
                say(f"agent: batch {pipeline.batch_size:>2}  in {w.fps_in:5.1f} fps  out {w.fps_out:5.1f} fps  "
                    f"batch delay {w.latency['batch'].mean_ms:6.1f} ms  e2e p95 {w.latency['e2e'].p95_ms:6.0f} ms  "
                    f"dropped {pipeline.stats.dropped}  missed {pipeline.stats.deadline_misses}")

        agent = Agent(pipeline, auto_probe(), settings, on_window=on_window, swap_handler=swapper, roster=roster)
        say(f"agent: {streams} x {video.name} at {sources[0].info.fps:g} fps each "  # type: ignore[union-attr]
            f"({pipeline.source_fps_total:g} fps in all), starting at batch {initial_batch}, policy {policy}")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, pipeline.stop)
        loop.call_later(duration_s, pipeline.stop)
        async with asyncio.TaskGroup() as tg:
            ctl = tg.create_task(controller.run(), name="demo.controller")
            summary = await agent.run()
            await asyncio.sleep(0.3)  # let the last events arrive
            ctl.cancel()
        await fleet.close()
    console.print()
    print_summary(summary.model_copy(update={"per_stream": roster.states()}), console)
    path = " -> ".join(str(d[1]) for d in controller.agents["demo-agent"].decisions) if controller.agents else ""
    console.print(f"controller: {controller.counters.telemetry} telemetry messages, "
                  f"{controller.counters.decisions} decisions (batch {initial_batch} -> {path or 'no change'}); "
                  f"orders: {agent.reconciler.counters.applied} applied ({agent.reconciler.counters.engine_swaps} "
                  f"engine swaps), {agent.reconciler.counters.refused} refused; "
                  f"[bold]frames lost: {summary.frames_in - summary.frames_out - summary.dropped}[/bold]")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0
