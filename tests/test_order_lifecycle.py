"""The order lifecycle: the agent's reconciler takes the newest desired generation and reports each one's
outcome exactly once (applied on effect, refused with a reason, superseded, stale); the controller acts on it.

Real mosquitto, real model and video from samples/, real registry stores with real bad artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import onnx
import psutil
import pytest
from onnx import TensorProto, helper

from cloud_controller.controller import Controller
from cloud_controller.policies import NO_LIMITS, AgentLimits, Decision
from edge_agent.agent import Agent
from edge_agent.engines import load_engine
from edge_agent.nanodet import INPUT_SIZE, OUTPUT_NAMES
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes.host import HostProbe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from edge_agent.swap import ArtifactCache, EngineSwapper, MemoryGuard
from model_registry.artifacts import ArtifactQuery, sha256_file
from model_registry.registry import Registry
from model_registry.stores.local import LocalDirectoryStore
from mqtt_bus import BrokerSettings
from schemas import (
    AgentEvent,
    AgentStatus,
    ArtifactInfo,
    DesiredState,
    EventKind,
    OrderOutcome,
    PolicyState,
    RefusalReason,
    ServingState,
    Telemetry,
    Topics,
    decode,
    encode,
)
from tests.conftest import MODEL
from tests.mqtt_helpers import Observer, eventually, observing

OUTCOMES = ("desired_applied", "desired_refused", "desired_superseded")


def fails_at_run_time(path: Path) -> Path:
    """A model with NanoDet's input and output names that loads, but whose first batch raises inside
    onnxruntime (a plain runtime error, not one of ours): it reshapes 3 x 416 x 416 values into rows of 7."""
    shape = helper.make_tensor("rows_of_7", TensorProto.INT64, [2], [-1, 7])
    nodes = [helper.make_node("Reshape", ["input", "rows_of_7"], [name]) for name in OUTPUT_NAMES]
    graph = helper.make_graph(
        nodes, "fails_at_run_time",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in OUTPUT_NAMES],
        [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nanodet 1: static batch 2 and 4 only (no dynamic artifact, so no batch 8); 2: other bytes, batch 2;
    3: garbage bytes (fails to load); 4: loads, fails on its first batch."""
    root = tmp_path_factory.mktemp("registry")
    work = root.parent

    async def fill() -> None:
        registry = Registry(LocalDirectoryStore(root))
        pushed = await registry.push(MODEL, "nanodet", "1", export_static=[2, 4])
        await registry.store.delete(next(a for a in pushed if a.dynamic_batch).id)
        v2 = onnx.load(str(MODEL))
        onnx.helper.set_model_props(v2, {"release": "2"})
        onnx.save(v2, str(work / "nanodet-v2.onnx"))
        await registry.push(work / "nanodet-v2.onnx", "nanodet", "2", export_static=[2])
        await registry.store.delete(next(a for a in await registry.store.find(ArtifactQuery(name="nanodet",
                                                                                            version="2"))
                                         if a.dynamic_batch).id)
        garbage = work / "garbage.onnx"
        garbage.write_bytes(b"this is not a model" * 1000)
        await registry.store.put(garbage, ArtifactInfo(id="pending", name="nanodet", version="3", batch_sizes=[2, 4],
                                                       format="onnx", sha256=sha256_file(garbage),
                                                       size_bytes=garbage.stat().st_size))
        await registry.push(fails_at_run_time(work / "broken.onnx"), "nanodet", "4")

    asyncio.run(fill())
    return root


class HookedAgent(Agent):
    """The real agent; a test may act at the moment it publishes an event (to order at a precise point)."""

    on_event_hook = None

    async def publish_event(self, kind: EventKind, detail: str = "", generation: int | None = None,
                            timings_ms: dict[str, float] | None = None, refusal: RefusalReason | None = None) -> None:
        await super().publish_event(kind, detail, generation, timings_ms, refusal)
        if self.on_event_hook is not None:
            await self.on_event_hook(kind, generation)


async def registry_agent(url: str, prefix: str, decoder, video: Path, swapper: EngineSwapper, batch_size: int = 2,
                         agent_id: str = "cam1", interval: float = 0.5) -> HookedAgent:
    info = await swapper.resolve("nanodet", "1", batch_size)
    engine, _ = await swapper.load(info, batch_size, HostProbe())
    sources = await open_sources([str(video)], loop=True)
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=batch_size, realtime=True),
                        model="nanodet", version=info.version, artifact_sha256=info.sha256)
    settings = AgentSettings(broker_url=url, agent_id=agent_id, prefix=prefix, telemetry_interval_s=interval)
    return HookedAgent(pipeline, HostProbe(), settings, swap_handler=swapper)


def events(obs: Observer, topics: Topics, agent_id: str = "cam1") -> list[AgentEvent]:
    return [decode(AgentEvent, p) for p in obs.on(topics.events(agent_id))]


def outcomes(obs: Observer, topics: Topics, generation: int) -> list[AgentEvent]:
    return [e for e in events(obs, topics) if e.generation == generation and e.kind in OUTCOMES]


async def order(obs: Observer, topics: Topics, generation: int, **fields) -> AgentEvent:
    await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=generation, **fields)),
                      retain=True)
    await eventually(lambda: outcomes(obs, topics, generation), 60, f"outcome of generation {generation}")
    return outcomes(obs, topics, generation)[0]


def last_status(obs: Observer, topics: Topics) -> AgentStatus:
    return decode(AgentStatus, obs.on(topics.status("cam1"))[-1])


@contextlib.asynccontextmanager
async def running(agent: Agent):
    task = asyncio.create_task(agent.run())
    try:
        await agent.bus.wait_connected(10)
        yield task
    finally:
        agent.pipeline.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)


async def test_newest_generation_wins_and_every_generation_gets_one_outcome(broker, prefix, decoder, short_video,
                                                                             registry_dir, tmp_path) -> None:
    topics = Topics(prefix)
    swapper = EngineSwapper(LocalDirectoryStore(registry_dir), ArtifactCache(tmp_path / "cache"))
    agent = await registry_agent(broker.url, prefix, decoder, short_video, swapper)
    async with observing(broker.url, f"{prefix}/#") as obs, running(agent):
        # Three orders at once: only the newest is carried out; the two older ones are superseded.
        for generation, fields in ((1, {"batch_size": 4}), (2, {"version": "2"}), (3, {"batch_size": 4})):
            await agent.apply_desired(DesiredState(agent_id="cam1", generation=generation, **fields))
        await eventually(lambda: all(outcomes(obs, topics, g) for g in (1, 2, 3)), 60, "three outcomes")
        assert [outcomes(obs, topics, g)[0].kind for g in (1, 2, 3)] == [
            "desired_superseded", "desired_superseded", "desired_applied"]
        assert agent.pipeline.batch_size == 4 and agent.pipeline.serving.version == "1"
        assert agent.applied_generation == 3
        b4_engine = agent.pipeline.serving.engine

        # An order that arrives while one is loading: the running one is abandoned at its next safe point
        # (after the load), its engine released, and never served.
        async def order_again_while_loading(kind: EventKind, generation: int | None) -> None:
            if kind == "swap_started" and generation == 4:
                await agent.apply_desired(DesiredState(agent_id="cam1", generation=5, batch_size=4))

        agent.on_event_hook = order_again_while_loading
        applied_before = agent.applied_generation
        await agent.apply_desired(DesiredState(agent_id="cam1", generation=4, batch_size=2))
        assert agent.applied_generation == applied_before, "nothing is applied on receipt"
        await eventually(lambda: outcomes(obs, topics, 5), 60, "outcome of generation 5")
        agent.on_event_hook = None
        assert outcomes(obs, topics, 4)[0].kind == "desired_superseded"
        assert outcomes(obs, topics, 5)[0].kind == "desired_applied"
        assert agent.pipeline.serving.engine is b4_engine and agent.pipeline.batch_size == 4
        assert not any(e.kind == "swap_finished" and e.generation == 4 for e in events(obs, topics))

        # Stale: the retained order redelivered, or an older one, is reported and changes nothing.
        await agent.apply_desired(DesiredState(agent_id="cam1", generation=5, batch_size=2))
        await agent.apply_desired(DesiredState(agent_id="cam1", generation=2, batch_size=2))
        await eventually(lambda: sum(e.kind == "desired_ignored" for e in events(obs, topics)) == 2, 10, "stale")
        assert agent.pipeline.batch_size == 4 and agent.reconciler.counters.stale == 2
        await eventually(lambda: last_status(obs, topics).last_order is not None
                         and last_status(obs, topics).last_order.generation == 5, 10, "status records gen 5")
        status = last_status(obs, topics)
        assert status.applied_generation == 5 and status.last_order.outcome == "applied"
        assert status.serving.servable_batch_sizes == [2, 4], "the registry's sizes for nanodet 1 on this device"
        await asyncio.sleep(0.3)
    for generation in range(1, 6):
        assert len(outcomes(obs, topics, generation)) == 1, f"generation {generation}: exactly one outcome"
    applied = next(e for e in outcomes(obs, topics, 3))
    assert set(applied.timings_ms) >= {"resolve", "download", "load", "warmup", "switch",
                                       "decision_to_first_batch", "cache_hit"}
    assert applied.timings_ms["load"] > 0 and applied.timings_ms["switch"] >= 0


@pytest.mark.parametrize(("fields", "reason", "words"), [
    ({"model": "no-such-model"}, "unknown_model", "unknown model"),
    ({"version": "9"}, "unknown_version", "no version '9'"),
    ({"batch_size": 8}, "no_artifact", "serves batch 8"),
    ({"version": "3"}, "load_error", "load of nanodet 3"),
    ({"version": "4"}, "load_error", "warm-up of nanodet 4 failed: Fail"),  # onnxruntime's own error
])
async def test_a_refusal_names_its_reason_and_changes_nothing(broker, prefix, decoder, short_video, registry_dir,
                                                               tmp_path, fields, reason, words) -> None:
    topics = Topics(prefix)
    swapper = EngineSwapper(LocalDirectoryStore(registry_dir), ArtifactCache(tmp_path / "cache"))
    agent = await registry_agent(broker.url, prefix, decoder, short_video, swapper)
    before = agent.pipeline.serving
    async with observing(broker.url, f"{prefix}/#") as obs, running(agent):
        refused = await order(obs, topics, 1, **fields)
        assert refused.kind == "desired_refused" and refused.refusal == reason, refused
        assert words in refused.detail, refused.detail
        assert agent.pipeline.serving is before, "a refusal never changes the serving state"
        assert agent.applied_generation == 0
        await eventually(lambda: last_status(obs, topics).last_order is not None, 10, "status with the outcome")
        last = last_status(obs, topics).last_order
        assert (last.generation, last.outcome, last.refusal) == (1, "refused", reason)
        out = agent.pipeline.stats.frames_out
        await eventually(lambda: agent.pipeline.stats.frames_out > out + 3, 20, "the old engine still serves")
        # A good order after it is still carried out.
        assert (await order(obs, topics, 2, batch_size=4)).kind == "desired_applied"
        await eventually(lambda: last_status(obs, topics).last_order.generation == 2, 10, "status moves on")


async def test_memory_guard_refuses_before_any_download(broker, prefix, decoder, short_video, registry_dir,
                                                        tmp_path) -> None:
    topics = Topics(prefix)
    cache = ArtifactCache(tmp_path / "cache")
    swapper = EngineSwapper(LocalDirectoryStore(registry_dir), cache, guard=MemoryGuard(headroom_bytes=2**50))
    info = await swapper.resolve("nanodet", "1", 2)
    agent = await registry_agent(broker.url, prefix, decoder, short_video,
                                 EngineSwapper(swapper.store, cache))  # the first engine loads without the guard
    agent.swap_handler = agent.reconciler.loader = swapper
    async with observing(broker.url, f"{prefix}/#") as obs, running(agent):
        refused = await order(obs, topics, 1, batch_size=4)
    assert refused.refusal == "memory" and "not enough host memory" in refused.detail
    b4 = await swapper.resolve("nanodet", "1", 4)
    assert not cache.path_for(b4).exists(), "refused before the download"
    assert cache.path_for(info).exists()


async def test_without_a_registry_orders_stay_within_the_engine(broker, prefix, decoder, short_video, tmp_path) -> None:
    """A fixed-batch engine serves only its size; a dynamic one is bounded by the memory estimate; batch 1024
    is refused at once instead of being attempted (it used to allocate until MemoryError)."""
    topics = Topics(prefix)
    pushed = await Registry(LocalDirectoryStore(tmp_path / "reg")).push(MODEL, "nanodet", "1", export_static=[2])
    static_b2 = await ArtifactCache(tmp_path / "cache").ensure(LocalDirectoryStore(tmp_path / "reg"),
                                                               next(a for a in pushed if not a.dynamic_batch))
    sources = await open_sources([str(short_video)], loop=True)
    pipeline = Pipeline(sources, load_engine(static_b2[0]), decoder, PipelineConfig(batch_size=2))
    settings = AgentSettings(broker_url=broker.url, agent_id="cam1", prefix=prefix, telemetry_interval_s=0.5)
    fixed = Agent(pipeline, HostProbe(), settings)
    async with observing(broker.url, f"{prefix}/#") as obs, running(fixed):
        await eventually(lambda: obs.on(topics.status("cam1")), 10, "status")
        assert last_status(obs, topics).serving.servable_batch_sizes == [2]
        other_size = await order(obs, topics, 1, batch_size=4)
        assert other_size.refusal == "no_registry" and "serves [2]" in other_size.detail
        other_model = await order(obs, topics, 2, model="yolo")
        assert other_model.refusal == "no_registry"
        assert fixed.pipeline.batch_size == 2

    topics = Topics(prefix + "b")
    sources = await open_sources([str(short_video)], loop=True)
    dynamic = Agent(Pipeline(sources, load_engine(MODEL), decoder, PipelineConfig(batch_size=1)), HostProbe(),
                    settings.model_copy(update={"prefix": prefix + "b"}))
    free, _ = MemoryGuard.free_bytes(HostProbe())
    assert dynamic.reconciler.guard.per_frame_bytes * 1023 > free, "precondition: 1024 frames cannot fit here"
    async with observing(broker.url, f"{prefix}b/#") as obs, running(dynamic):
        await eventually(lambda: obs.on(topics.status("cam1")), 10, "status")
        assert last_status(obs, topics).serving.servable_batch_sizes is None, "a dynamic engine: any size"
        rss = psutil.Process().memory_info().rss
        t = time.monotonic()
        huge = await order(obs, topics, 1, batch_size=1024)
        assert huge.refusal == "memory", huge
        assert time.monotonic() - t < 5.0, "refused at once, never attempted"
        assert dynamic.pipeline.batch_size == 1
        assert psutil.Process().memory_info().rss - rss < 500 * 2**20, "no big allocation"
        ok = await order(obs, topics, 2, batch_size=2)
        assert ok.kind == "desired_applied" and ok.timings_ms["decision_to_first_batch"] > 0


async def test_applied_means_the_first_batch_at_the_new_setting_was_inferred(broker, prefix, engine, decoder,
                                                                              short_video) -> None:
    topics = Topics(prefix)
    sources = await open_sources([str(short_video)], fps=0.5, loop=True)  # a frame every 2 s
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=1))
    inferred: list[int] = []
    pipeline.batch_listeners.append(lambda batch, serving: inferred.append(serving.generation))
    agent = Agent(pipeline, HostProbe(), AgentSettings(broker_url=broker.url, agent_id="cam1", prefix=prefix))
    async with observing(broker.url, f"{prefix}/#") as obs, running(agent):
        await eventually(lambda: inferred, 10, "a first batch")
        await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=1, batch_size=2)))
        await eventually(lambda: pipeline.batch_size == 2, 10, "switch issued")
        await asyncio.sleep(0.3)
        assert agent.applied_generation == 0 and not outcomes(obs, topics, 1), "not applied before it takes effect"
        assert all(decode(AgentStatus, p).applied_generation == 0 for p in obs.on(topics.status("cam1")))
        await eventually(lambda: outcomes(obs, topics, 1), 20, "applied")
        assert outcomes(obs, topics, 1)[0].kind == "desired_applied" and agent.applied_generation == 1
        await eventually(lambda: 1 in inferred, 5, "batch of generation 1 through post-processing")


# --- the controller -------------------------------------------------------------------------


class Script:
    """A policy that wants the sizes of a script in turn, ignoring the limits it is given (as a careless
    policy might): the controller itself must keep it inside them."""

    name = "script"

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = list(sizes)
        self.limits: list[AgentLimits] = []
        self.refusals: list[tuple[str, int, str]] = []

    def decide(self, telemetry: Telemetry, limits: AgentLimits = NO_LIMITS) -> Decision | None:
        self.limits.append(limits)
        while self.sizes and self.sizes[0] == telemetry.batch_size:
            self.sizes.pop(0)
        return Decision(self.sizes.pop(0), "scripted") if self.sizes else None

    def refused(self, agent_id: str, batch_size: int, reason: str) -> None:
        self.refusals.append((agent_id, batch_size, reason))

    def export_state(self, agent_id: str) -> PolicyState | None:
        return None

    def import_state(self, state: PolicyState) -> None:
        return None

    def forget(self, agent_id: str) -> None:
        return None


async def test_controller_moves_on_after_a_refusal_and_never_reorders_it(broker, prefix, decoder, short_video,
                                                                         tmp_path) -> None:
    """The agent's registry lacks batch 16 (an operator removed it after the agent listed its sizes): the
    agent refuses 16, the controller stops waiting, tells the policy, keeps ordering other sizes and does not
    order 16 again, though the policy asks for it."""
    topics = Topics(prefix)
    store = LocalDirectoryStore(tmp_path / "reg")
    pushed = await Registry(store).push(MODEL, "nanodet", "1", export_static=[2, 4, 8, 16])
    await store.delete(next(a for a in pushed if a.dynamic_batch).id)
    swapper = EngineSwapper(store, ArtifactCache(tmp_path / "cache"))
    agent = await registry_agent(broker.url, prefix, decoder, short_video, swapper)
    policy = Script([16, 4, 16, 8, 2])
    controller = Controller(BrokerSettings.from_url(broker.url), policy, prefix=prefix,  # type: ignore[arg-type]
                            controller_id=f"ctl-{prefix}")
    async with observing(broker.url, f"{prefix}/#") as obs, running(agent):
        await eventually(lambda: obs.on(topics.status("cam1")) and last_status(obs, topics).serving
                         .servable_batch_sizes == [2, 4, 8, 16], 10, "agent lists 2, 4, 8, 16")
        await store.delete(next(a for a in pushed if a.batch_sizes == [16] and not a.dynamic_batch).id)
        ctl = asyncio.create_task(controller.run())
        try:
            await eventually(lambda: not policy.sizes and controller.agents["cam1"].pending is None
                             and agent.pipeline.batch_size == 2, 90, "the script played out")
        finally:
            ctl.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctl
    ordered = [decode(DesiredState, p).batch_size for p in obs.on(topics.desired("cam1"))]
    assert ordered == [16, 4, 8, 2], ordered
    assert policy.refusals == [("cam1", 16, "no_artifact")]
    view = controller.agents["cam1"]
    assert view.last_outcome is not None and view.last_outcome.outcome == "applied"
    assert controller.counters.refusals == 1 and controller.counters.held_outside_limits == 1
    after = policy.limits[-1]
    assert not after.allows(16) and after.servable_batch_sizes == frozenset({2, 4, 8})
    refusal = next(e for e in events(obs, topics) if e.kind == "desired_refused")
    assert refusal.refusal == "no_artifact" and refusal.generation == 1


async def test_an_order_for_another_model_family_is_refused_before_the_download(broker, prefix, decoder, short_video,
                                                                                 yolov3_tiny, tmp_path) -> None:
    """The agent decodes NanoDet; the registry records yolo 1 as yolo-v5: the order is refused from the record,
    nothing downloaded, with both types named; the refusal reaches the controller, which holds no batch size off
    for it (it is about the model). yolo 2's record predates model types: loaded, then the pipeline's own check
    refuses it, as before."""
    topics = Topics(prefix)
    store = LocalDirectoryStore(tmp_path / "reg")
    registry = Registry(store)
    await registry.push(MODEL, "nanodet", "1", export_static=[2])
    (yolo,) = await registry.push(yolov3_tiny, "yolo", "1")
    assert yolo.model_type == "yolo-v5"
    untyped = await store.put(yolov3_tiny, yolo.model_copy(update={"version": "2", "model_type": None}))
    cache = ArtifactCache(tmp_path / "cache")
    agent = await registry_agent(broker.url, prefix, decoder, short_video, EngineSwapper(store, cache))
    before = agent.pipeline.serving
    controller = Controller(BrokerSettings.from_url(broker.url), Script([]), prefix=prefix,  # type: ignore[arg-type]
                            controller_id=f"ctl-{prefix}")
    async with observing(broker.url, f"{prefix}/#") as obs, running(agent):
        ctl = asyncio.create_task(controller.run())
        try:
            await controller.bus.wait_connected(10)
            refused = await order(obs, topics, 1, model="yolo", version="1", batch_size=4)
            assert refused.kind == "desired_refused" and refused.refusal == "model_type", refused
            assert "yolo 1 is a yolo-v5 model; this agent decodes nanodet models" in refused.detail
            assert not cache.path_for(yolo).exists(), "refused before the download"
            await eventually(lambda: "cam1" in controller.agents and controller.agents["cam1"].last_outcome
                             is not None and controller.agents["cam1"].last_outcome.batch_size == 4, 10,
                             "the controller learns the refusal")
            view = controller.agents["cam1"]
            assert (view.last_outcome.generation, view.last_outcome.refusal) == (1, "model_type")
            assert controller.counters.refusals == 1 and not view.refused, "batch 4 is not held off"
            assert view.status is not None and view.status.serving.model_type == "nanodet", "the fleet knows it"

            old = await order(obs, topics, 2, model="yolo", version="2")
            assert old.kind == "desired_refused" and old.refusal == "load_error", old
            assert "does not fit the nanodet adapter" in old.detail
            assert cache.path_for(untyped).exists(), "no type recorded: fetched and loaded, then checked"
        finally:
            ctl.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctl
    assert agent.pipeline.serving is before and agent.applied_generation == 0


def telemetry(agent_id: str, batch_size: int, applied: int = 0) -> Telemetry:
    from schemas import LatencyStats, ResourceSample

    stats = LatencyStats(count=10, mean_ms=20.0, p50_ms=20.0, p95_ms=25.0, p99_ms=30.0, max_ms=30.0)
    return Telemetry(agent_id=agent_id, seq=1, window_s=1.0, batch_size=batch_size, batch_size_uniform=True,
                     applied_generation=applied, source_fps_total=10.0, fps_in=10.0, fps_out=10.0, frames_in=10,
                     frames_out=10, dropped=0, corrupt=0, deadline_misses=0, batches=5,
                     latency={k: stats for k in ("pre", "queue", "infer", "post", "e2e", "batch")}, queue_depths={},
                     resources=ResourceSample(probe="host", host_memory_used_bytes=1, host_memory_total_bytes=10,
                                              process_rss_bytes=1, cpu_util_pct=1.0))


async def test_a_pending_order_without_outcome_times_out(broker, prefix) -> None:
    """The agent never answers (restarted, message lost): the controller gives up waiting and decides again."""
    policy = Script([4, 4, 4])
    controller = Controller(BrokerSettings.from_url(broker.url), policy, prefix=prefix,  # type: ignore[arg-type]
                            pending_timeout_s=0.5)
    async with observing(broker.url, f"{prefix}/#") as obs:
        ctl = asyncio.create_task(controller.run())
        await controller.bus.wait_connected(10)
        try:
            await obs.publish(Topics(prefix).status("a1"), encode(AgentStatus(agent_id="a1", state="online")))
            for _ in range(3):
                await obs.publish(Topics(prefix).telemetry("a1"), encode(telemetry("a1", 2)), qos=0)
                await asyncio.sleep(0.2)
            assert controller.counters.decisions == 1, "waits while the order is pending"
            await asyncio.sleep(0.5)
            await obs.publish(Topics(prefix).telemetry("a1"), encode(telemetry("a1", 2)), qos=0)
            await eventually(lambda: controller.counters.decisions == 2, 5, "ordered again after the timeout")
        finally:
            ctl.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctl
    assert controller.counters.orders_timed_out == 1
    generations = [decode(DesiredState, p).generation for p in obs.on(Topics(prefix).desired("a1"))]
    assert generations == [1, 2]


async def test_a_controller_that_connects_later_learns_the_refusal_from_the_status() -> None:
    policy = Script([8])
    controller = Controller(BrokerSettings(port=9), policy)  # type: ignore[arg-type]
    refused = OrderOutcome(generation=3, outcome="refused", refusal="memory", detail="needs 9 GiB", batch_size=16)
    status = AgentStatus(agent_id="a1", state="online", applied_generation=2, last_order=refused,
                         serving=ServingState(model="m", version="1", batch_size=8, backend="onnxruntime",
                                              servable_batch_sizes=[1, 2, 4, 8, 16]))
    controller.on_status("a1", status)
    controller.on_status("a1", status)  # retained and republished: acted on once
    assert policy.refusals == [("a1", 16, "memory")]
    view = controller.agents["a1"]
    assert view.next_generation() == 4
    limits = view.limits(time.monotonic())
    assert not limits.allows(16) and limits.allows(8) and not limits.allows(32)
    assert "last order: gen 3 batch 16 refused (memory)" in controller.fleet_lines()[0]


def test_an_old_retained_refusal_holds_nothing_back() -> None:
    policy = Script([8])
    controller = Controller(BrokerSettings(port=9), policy, refusal_hold_s=600.0)  # type: ignore[arg-type]
    old = OrderOutcome(generation=3, outcome="refused", refusal="memory", batch_size=16, ts=time.time() - 700)
    controller.on_status("a1", AgentStatus(agent_id="a1", state="online", last_order=old))
    assert policy.refusals == [] and controller.agents["a1"].limits(time.monotonic()).allows(16)
    assert controller.agents["a1"].next_generation() == 4, "its generation still counts"


async def test_a_loop_whose_cancellation_was_swallowed_still_ends() -> None:
    """Python 3.11's wait_for (in aiomqtt's publish) can swallow a cancellation; the reconciler's loop and the
    telemetry loop must still end, or the agent's TaskGroup waits for them forever."""
    from mqtt_bus.bus import raise_if_cancelling

    async def loop() -> None:
        while True:
            raise_if_cancelling()
            with contextlib.suppress(asyncio.CancelledError):  # what a racing wait_for can do
                await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)


class Recorder:
    """An OutcomeReporter that keeps what the reconciler reports, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int | None, str | None]] = []

    async def publish_event(self, kind: EventKind, detail: str = "", generation: int | None = None,
                            timings_ms: dict[str, float] | None = None, refusal: RefusalReason | None = None) -> None:
        self.events.append((kind, generation, refusal))

    async def publish_status(self) -> None:
        return None

    def outcome(self, generation: int) -> list[str]:
        return [k for k, g, _ in self.events if g == generation and k in OUTCOMES]


async def test_a_switch_already_issued_finishes_within_a_grace_else_is_superseded(engine, decoder,
                                                                                  short_video) -> None:
    from edge_agent.control import Reconciler

    sources = await open_sources([str(short_video)], loop=True)
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=1))
    recorder = Recorder()
    reconciler = Reconciler(pipeline, HostProbe(), recorder)
    reconciler.first_batch_grace_s = 0.3
    worker = asyncio.create_task(reconciler.run())
    run = None
    try:
        # Not running yet: generation 1's switch never takes effect, so generation 2 supersedes it.
        await reconciler.submit(DesiredState(agent_id="cam1", generation=1, batch_size=2))
        await eventually(lambda: pipeline.batch_size == 2, 5, "switch 1 issued")
        await reconciler.submit(DesiredState(agent_id="cam1", generation=2, batch_size=4))
        await eventually(lambda: recorder.outcome(1), 5, "outcome of 1")
        assert recorder.outcome(1) == ["desired_superseded"] and reconciler.applied_generation == 0
        run = asyncio.create_task(pipeline.run())
        await eventually(lambda: recorder.outcome(2), 20, "outcome of 2")
        assert recorder.outcome(2) == ["desired_applied"] and reconciler.applied_generation == 2
        # Running: generation 3's switch is issued when 4 arrives; it takes effect within the grace, so both
        # are applied and the report matches what served.
        reconciler.first_batch_grace_s = 5.0
        await reconciler.submit(DesiredState(agent_id="cam1", generation=3, batch_size=1))
        await eventually(lambda: pipeline.batch_size == 1, 5, "switch 3 issued")
        await reconciler.submit(DesiredState(agent_id="cam1", generation=4, batch_size=2))
        await eventually(lambda: recorder.outcome(4), 20, "outcome of 4")
        assert recorder.outcome(3) == ["desired_applied"] and recorder.outcome(4) == ["desired_applied"]
        assert reconciler.applied_generation == 4 and pipeline.batch_size == 2
    finally:
        worker.cancel()
        pipeline.stop()
        if run is not None:
            await asyncio.wait_for(run, 30)
        with contextlib.suppress(asyncio.CancelledError):
            await worker
