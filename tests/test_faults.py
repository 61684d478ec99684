"""Faults injected into real processes on loopback: mosquitto killed (-9) or hung (SIGSTOP) under a streaming
agent and a controller, and the registry's MongoDB killed before and during a swap's download.

Each test asserts what must hold after the fault (reconnected, retained state kept, decided again, no frame
lost, the refusal named, the old engine serving); how long each takes is bench/chaos.py's business.

A controller that moves on after a refusal (item 4 of the brief) is
tests/test_order_lifecycle.py::test_controller_moves_on_after_a_refusal_and_never_reorders_it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import onnx
import pytest

from cloud_controller.controller import Controller
from cloud_controller.policies import make_policy
from edge_agent.adapters import ModelAdapter
from edge_agent.agent import Agent
from edge_agent.engines import InferenceEngine
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes.host import HostProbe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from edge_agent.swap import ArtifactCache, EngineSwapper
from model_registry.artifacts import ArtifactQuery
from model_registry.export import export_static_batch
from model_registry.registry import Registry
from model_registry.stores.base import ArtifactStore, Progress
from model_registry.stores.gridfs import GridFsStore
from mqtt_bus import BrokerSettings
from mqtt_bus.local_broker import LocalBroker, free_port
from schemas import AgentEvent, ArtifactInfo, DesiredState, RunSummary, Topics, decode, encode
from tests.conftest import MODEL
from tests.mongo_server import MongoServer
from tests.mqtt_helpers import Observer, eventually, observing

OUTCOMES = ("desired_applied", "desired_refused", "desired_superseded")
MIB = 2**20


def streaming_agent(url: str, prefix: str, pipeline: Pipeline, swapper: EngineSwapper | None = None) -> Agent:
    agent = Agent(pipeline, HostProbe(), AgentSettings(broker_url=url, agent_id="cam1", prefix=prefix,
                                                       telemetry_interval_s=0.5), swap_handler=swapper)
    agent.bus.backoff_max_s = 1.0  # back within a second of the broker (the default backs off to 10 s)
    return agent


async def realtime_pipeline(engine: InferenceEngine, decoder: ModelAdapter, video: Path, batch_size: int = 1,
                            artifact: ArtifactInfo | None = None) -> Pipeline:
    """One 10 fps stream, looped, paced in real time; ``artifact``: the registry artifact ``engine`` came from."""
    sources = await open_sources([str(video)], fps=10, loop=True)
    config = PipelineConfig(batch_size=batch_size, realtime=True)
    if artifact is None:
        return Pipeline(sources, engine, decoder, config)
    return Pipeline(sources, engine, decoder, config, model=artifact.name, version=artifact.version,
                    artifact_sha256=artifact.sha256)


def deciding_controller(url: str, prefix: str, keepalive_s: int | None = None) -> Controller:
    broker = BrokerSettings.from_url(url)
    if keepalive_s is not None:
        broker = dataclasses.replace(broker, keepalive_s=keepalive_s)
    controller = Controller(broker, make_policy("deadline"), prefix=prefix, controller_id=f"ctl-{prefix}")
    controller.bus.backoff_max_s = 1.0
    return controller


@contextlib.asynccontextmanager
async def serving(agent: Agent, controller: Controller | None = None) -> AsyncIterator[asyncio.Task[RunSummary]]:
    """The agent (and the controller) running, connected; whatever happens, stopped at the end."""
    agent_task = asyncio.create_task(agent.run())
    ctl_task = asyncio.create_task(controller.run()) if controller is not None else None
    try:
        await agent.bus.wait_connected(10)
        if controller is not None:
            await controller.bus.wait_connected(10)
        yield agent_task
    finally:
        agent.pipeline.stop()  # the agent's run ends once the pipeline drained; the controller runs until cancelled
        if ctl_task is not None:
            ctl_task.cancel()
        for task in (agent_task, ctl_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 60)


async def finish(agent: Agent, agent_task: asyncio.Task[RunSummary]) -> RunSummary:
    agent.pipeline.stop()
    return await asyncio.wait_for(agent_task, 60)


def lost(summary: RunSummary) -> int:
    """Frames accepted but neither finished nor counted as dropped."""
    return summary.frames_in - summary.frames_out - summary.dropped


async def frames_flow(agent: Agent, what: str, frames: int = 5) -> None:
    before = agent.pipeline.stats.frames_out
    await eventually(lambda: agent.pipeline.stats.frames_out >= before + frames, 20, what)


def reconnected(bus_owner: Agent | Controller, connects_before: int) -> Callable[[], bool]:
    bus = bus_owner.bus
    return lambda: bus.connected.is_set() and bus.counters.connects > connects_before


# --- mosquitto killed -9 and restarted -------------------------------------------------------------


async def test_broker_killed_mid_stream_keeps_retained_state_and_loses_no_frame(own_broker: LocalBroker, prefix,
                                                                                engine, decoder,
                                                                                short_video) -> None:
    topics = Topics(prefix)
    desired_topic = topics.desired("cam1")
    agent = streaming_agent(own_broker.url, prefix, await realtime_pipeline(engine, decoder, short_video))
    controller = deciding_controller(own_broker.url, prefix)
    async with serving(agent, controller) as agent_task:
        async with observing(own_broker.url, desired_topic) as obs:
            await obs.publish(desired_topic, encode(DesiredState(agent_id="cam1", generation=100, batch_size=2,
                                                                 reason="operator: before the kill")), retain=True)
            await eventually(lambda: agent.applied_generation >= 100, 20, "the agent applies generation 100")
        # mosquitto writes retained messages to disk every autosave_interval (1 s here): wait for the save that
        # holds this agent's desired state (the topic is unique to this test), so the kill never races it.
        saved = own_broker.directory / "mosquitto.db"
        await eventually(lambda: saved.exists() and desired_topic.encode() in saved.read_bytes(), 10,
                         "mosquitto's autosave of the retained order")
        connects = agent.bus.counters.connects, controller.bus.counters.connects

        own_broker.kill()
        await eventually(lambda: not agent.bus.connected.is_set(), 20, "the agent notices the dead broker")
        await eventually(lambda: not controller.bus.connected.is_set(), 20, "the controller notices the dead broker")
        await frames_flow(agent, "inference while the broker is dead")
        own_broker.start()  # same port, same persistence folder

        await eventually(reconnected(agent, connects[0]), 30, "the agent reconnects after the restart")
        await eventually(reconnected(controller, connects[1]), 30, "the controller reconnects after the restart")
        out_at_restart = agent.pipeline.stats.frames_out
        async with observing(own_broker.url, desired_topic) as obs:
            await eventually(lambda: bool(obs.on(desired_topic)), 10, "the retained desired state after the restart")
            kept = decode(DesiredState, obs.on(desired_topic)[0])
            assert obs.messages[0].retain and kept.generation >= 100, f"retained order lost: {kept}"
            # An operator pins batch 8, far more than one 10 fps stream needs: the controller, whose policy
            # started over on the new session, must decide again.
            decisions = controller.counters.decisions
            pinned = DesiredState(agent_id="cam1", generation=kept.generation + 100, batch_size=8,
                                  reason="operator: after the restart")
            await obs.publish(desired_topic, encode(pinned), retain=True)
            await eventually(lambda: controller.counters.decisions > decisions, 40,
                             "a controller decision after the restart")
            await eventually(lambda: any(decode(DesiredState, p).generation > pinned.generation
                                         for p in obs.on(desired_topic)), 20,
                             "the controller's order (a newer generation) on the restarted broker")
        await eventually(lambda: agent.pipeline.stats.frames_out > out_at_restart, 20, "frames after the restart")
        summary = await finish(agent, agent_task)
    assert lost(summary) == 0, f"frames lost across the broker's kill -9: {summary}"


# --- a hung broker (SIGSTOP) ------------------------------------------------------------------------


async def test_hung_broker_is_noticed_inference_goes_on_and_both_reconnect(own_broker: LocalBroker, prefix, engine,
                                                                          decoder, short_video) -> None:
    """The process is there and its socket accepts, but nothing answers: only a liveness check (MQTT's
    keepalive) can tell. A 3 s keepalive keeps the test short; that it is noticed is what is tested here."""
    agent = streaming_agent(own_broker.url, prefix, await realtime_pipeline(engine, decoder, short_video))
    agent.bus.settings = dataclasses.replace(agent.bus.settings, keepalive_s=3)
    controller = deciding_controller(own_broker.url, prefix, keepalive_s=3)
    async with serving(agent, controller) as agent_task:
        await eventually(lambda: controller.counters.telemetry > 0, 20, "the controller hears the agent")
        connects = agent.bus.counters.connects, controller.bus.counters.connects
        assert own_broker.process is not None
        own_broker.process.send_signal(signal.SIGSTOP)
        try:
            await eventually(lambda: not agent.bus.connected.is_set(), 40, "the agent notices the hung broker")
            await eventually(lambda: not controller.bus.connected.is_set(), 40,
                             "the controller notices the hung broker")
            await frames_flow(agent, "inference while the broker hangs", frames=10)
            assert own_broker.process.poll() is None
        finally:
            own_broker.process.send_signal(signal.SIGCONT)
        await eventually(reconnected(agent, connects[0]), 40, "the agent reconnects after SIGCONT")
        await eventually(reconnected(controller, connects[1]), 40, "the controller reconnects after SIGCONT")
        telemetry = controller.counters.telemetry
        await eventually(lambda: controller.counters.telemetry > telemetry, 20, "telemetry flows again")
        summary = await finish(agent, agent_task)
    assert lost(summary) == 0, f"frames lost while the broker hung: {summary}"


async def test_telemetry_after_a_stall_sends_no_catch_up_windows(engine, decoder, short_video) -> None:
    """Found by the hung-broker test: once the telemetry loop fell behind its schedule (a publish waiting on a
    hung broker), it caught up with windows microseconds long, back to back; one that rounded to 0 s failed
    Telemetry's validation and crashed the agent. A stall of the event loop, with no broker at all, shows it."""
    windows: list[float] = []
    pipeline = await realtime_pipeline(engine, decoder, short_video)
    agent = Agent(pipeline, HostProbe(), AgentSettings(broker_url=f"mqtt://127.0.0.1:{free_port()}", agent_id="cam1",
                                                       telemetry_interval_s=0.1, connect_wait_s=0),
                  on_window=lambda w: windows.append(w.window_s))
    task = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: len(windows) >= 2, 20, "telemetry windows before the stall")
        time.sleep(0.8)  # the stall under test: nothing on the event loop runs for 8 intervals
        stalled_at = len(windows)
        await eventually(lambda: len(windows) >= stalled_at + 5 or task.done(), 20, "telemetry windows after it")
        assert not task.done(), f"the agent's run ended: {task.exception() if not task.cancelled() else 'cancelled'}"
    finally:
        pipeline.stop()
        summary = await asyncio.wait_for(task, 60)
    short = [w for w in windows[stalled_at:] if w < 0.05]
    assert not short, f"catch-up windows after the stall (interval 0.1 s): {short}"
    assert lost(summary) == 0


# --- the registry's MongoDB killed before and during a swap ---------------------------------------


class KillOnFirstChunk:
    """The real store; ``arm(action)`` runs ``action`` once, as the next download's first chunk arrives."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._action: Callable[[], None] | None = None
        self.fired = 0

    def arm(self, action: Callable[[], None]) -> None:
        self._action = action

    @property
    def location(self) -> str:
        return self.store.location

    async def put(self, path: Path, info: ArtifactInfo, progress: Progress | None = None) -> ArtifactInfo:
        return await self.store.put(path, info, progress)

    async def find(self, query: ArtifactQuery) -> list[ArtifactInfo]:
        return await self.store.find(query)

    async def get(self, artifact_id: str) -> ArtifactInfo:
        return await self.store.get(artifact_id)

    async def download(self, artifact_id: str) -> AsyncIterator[bytes]:
        async for chunk in self.store.download(artifact_id):
            if self._action is not None:
                action, self._action = self._action, None
                action()
                self.fired += 1
            yield chunk

    async def delete(self, artifact_id: str) -> None:
        await self.store.delete(artifact_id)

    async def close(self) -> None:
        await self.store.close()


def padded_static_export(size: int, pad_bytes: int, destination: Path) -> Path:
    """NanoDet at a static batch size with ``pad_bytes`` of metadata: the same network in a bigger file."""
    export_static_batch(MODEL, size, destination)
    model = onnx.load(str(destination))
    onnx.helper.set_model_props(model, {"padding": "x" * pad_bytes})
    onnx.save(model, str(destination))
    return destination


@pytest.fixture
def mongo_server(tmp_path: Path) -> Iterator[MongoServer]:
    """A MongoDB this test alone uses, on disk, so it may kill -9 and restart it with its data."""
    server = MongoServer(tmp_path, storage=tmp_path / "mongo-data")
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
async def gridfs(mongo_server: MongoServer, prefix: str) -> AsyncIterator[GridFsStore]:
    store = GridFsStore(mongo_server.url, database=prefix, timeout_ms=3000)
    yield store
    await store.close()


async def order(obs: Observer, topics: Topics, generation: int, batch_size: int) -> AgentEvent:
    await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=generation,
                                                                  batch_size=batch_size)), retain=True)

    def outcomes() -> list[AgentEvent]:
        return [e for e in (decode(AgentEvent, p) for p in obs.on(topics.events("cam1")))
                if e.generation == generation and e.kind in OUTCOMES]

    await eventually(lambda: bool(outcomes()), 60, f"outcome of generation {generation}")
    return outcomes()[0]


async def test_registry_mongodb_killed_before_and_during_a_swap(broker, prefix, decoder, short_video,
                                                               mongo_server: MongoServer, gridfs: GridFsStore,
                                                               tmp_path) -> None:
    topics = Topics(prefix)
    models = tmp_path / "models"
    models.mkdir()
    registry = Registry(gridfs)
    await registry.push(export_static_batch(MODEL, 2, models / "b2.onnx"), "nanodet", "1")
    # Over 16 MiB: MongoDB returns at most 16 MiB of chunks per reply, so after the first chunk the rest of
    # the download needs the server again, and a kill at the first chunk always lands mid-download.
    await registry.push(padded_static_export(4, 6 * MIB, models / "b4.onnx"), "nanodet", "1")
    b4 = next(a for a in await gridfs.find(ArtifactQuery(name="nanodet")) if a.batch_sizes == [4])
    assert b4.size_bytes > 16 * MIB

    store = KillOnFirstChunk(gridfs)
    cache = ArtifactCache(tmp_path / "cache")
    swapper = EngineSwapper(store, cache)
    b2 = await swapper.resolve("nanodet", "1", 2)
    first_engine, _ = await swapper.load(b2, 2, HostProbe())
    pipeline = await realtime_pipeline(first_engine, decoder, short_video, batch_size=2, artifact=b2)
    agent = streaming_agent(broker.url, prefix, pipeline, swapper)
    cached = {cache.path_for(b2).name}

    def still_serving_batch_2() -> None:
        assert agent.pipeline.serving.engine is first_engine and agent.pipeline.batch_size == 2
        assert {p.name for p in cache.directory.iterdir()} == cached, "a partial or unverified file in the cache"

    async with observing(broker.url, f"{prefix}/#") as obs, serving(agent) as agent_task:
        # (a) MongoDB dead before the order: nothing to resolve the order against.
        mongo_server.kill()
        before = await order(obs, topics, 1, batch_size=4)
        assert before.kind == "desired_refused" and before.refusal == "fetch_error", before
        assert "MongoDB" in before.detail, before.detail
        still_serving_batch_2()
        await frames_flow(agent, "the old engine serving after the refusal")

        # (b) MongoDB killed while the batch-4 artifact is being downloaded.
        mongo_server.start()
        assert len(await gridfs.find(ArtifactQuery(name="nanodet"))) == 2, "MongoDB lost the artifacts on kill -9"
        store.arm(mongo_server.kill)
        during = await order(obs, topics, 2, batch_size=4)
        assert store.fired == 1, "the download never started"
        assert during.kind == "desired_refused" and during.refusal == "fetch_error", during
        assert "fetch of nanodet 1" in during.detail and "MongoDB" in during.detail, during.detail
        still_serving_batch_2()
        await frames_flow(agent, "the old engine serving after the failed download")

        # MongoDB back: the same order is applied.
        mongo_server.start()
        after = await order(obs, topics, 3, batch_size=4)
        assert after.kind == "desired_applied", after
        assert agent.pipeline.serving.engine is not first_engine and agent.pipeline.batch_size == 4
        assert cache.path_for(b4).exists() and after.timings_ms["cache_hit"] == 0
        await frames_flow(agent, "the new engine serving")
        summary = await finish(agent, agent_task)
    assert agent.reconciler.counters.refused == 2 and agent.reconciler.counters.applied == 1
    assert lost(summary) == 0, f"frames lost across the registry's failures: {summary}"
