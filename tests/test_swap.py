"""Engine swaps from the registry under a real-time stream: no frame lost; refusals keep the old engine."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import onnx
import pytest

from edge_agent.agent import Agent
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes.host import HostProbe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from edge_agent.swap import ArtifactCache, EngineSwapper, MemoryGuard
from model_registry.artifacts import ArtifactQuery, sha256_file
from model_registry.registry import Registry
from model_registry.stores.gridfs import GridFsStore
from model_registry.stores.local import LocalDirectoryStore
from schemas import AgentEvent, ArtifactInfo, DesiredState, Topics, decode, encode
from tests.conftest import MODEL
from tests.mqtt_helpers import eventually, observing


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")

    async def fill() -> None:
        registry = Registry(LocalDirectoryStore(root))
        await registry.push(MODEL, "nanodet", "1", export_static=[2, 4])
        # Version 2: the same network with a release tag in its metadata, so other bytes, another hash.
        v2 = onnx.load(str(MODEL))
        onnx.helper.set_model_props(v2, {"release": "2"})
        v2_path = root.parent / "nanodet-v2.onnx"
        onnx.save(v2, str(v2_path))
        await registry.push(v2_path, "nanodet", "2", export_static=[2])
        garbage = root.parent / "garbage.onnx"
        garbage.write_bytes(b"this is not a model" * 1000)
        await registry.store.put(garbage, ArtifactInfo(id="pending", name="nanodet", version="3", batch_sizes=[2],
                                                       format="onnx", sha256=sha256_file(garbage),
                                                       size_bytes=garbage.stat().st_size))

    asyncio.run(fill())
    return root


async def start_agent(broker_url: str, prefix: str, decoder, video: Path, swapper: EngineSwapper,
                      batch_size: int = 2, streams: int = 2) -> Agent:
    info = await swapper.resolve("nanodet", "1", batch_size)
    engine, _ = await swapper.load(info, batch_size, HostProbe())
    sources = await open_sources([str(video)] * streams, loop=True)
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=batch_size, realtime=True),
                        model="nanodet", version=info.version, artifact_sha256=info.sha256)
    settings = AgentSettings(broker_url=broker_url, agent_id="cam1", prefix=prefix, telemetry_interval_s=0.5)
    return Agent(pipeline, HostProbe(), settings, swap_handler=swapper)


def events(obs, topics: Topics, generation: int) -> list[AgentEvent]:
    return [e for e in (decode(AgentEvent, p) for p in obs.on(topics.events("cam1"))) if e.generation == generation]


async def order(obs, topics: Topics, generation: int, **fields) -> AgentEvent:
    await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=generation, **fields)),
                      retain=True)
    await eventually(lambda: any(e.kind in OUTCOMES for e in events(obs, topics, generation)),
                     60, f"outcome of generation {generation}")
    return next(e for e in events(obs, topics, generation) if e.kind in OUTCOMES)


OUTCOMES = ("desired_applied", "desired_refused", "desired_superseded")


async def test_batch_and_version_swaps_lose_no_frame(broker, prefix, decoder, short_video, registry_dir,
                                                     tmp_path) -> None:
    topics = Topics(prefix)
    swapper = EngineSwapper(LocalDirectoryStore(registry_dir), ArtifactCache(tmp_path / "cache"))
    agent = await start_agent(broker.url, prefix, decoder, short_video, swapper)
    first_engine = agent.pipeline.serving.engine
    async with observing(broker.url, f"{prefix}/#") as obs:
        task = asyncio.create_task(agent.run())
        await agent.bus.wait_connected(10)
        up = await order(obs, topics, 1, batch_size=4)
        assert up.kind == "desired_applied", up.detail
        assert any(e.kind == "swap_finished" for e in events(obs, topics, 1)), "swap events kept for listeners"
        assert agent.pipeline.serving.engine.batch_sizes == frozenset({4})  # a real engine swap
        assert up.timings_ms["cache_hit"] == 0 and up.timings_ms["load"] > 0 and up.timings_ms["switch"] >= 0
        down = await order(obs, topics, 2, batch_size=2)
        assert down.kind == "desired_applied" and down.timings_ms["cache_hit"] == 1, "back to 2: cached, no download"
        version = await order(obs, topics, 3, version="2")
        assert version.kind == "desired_applied", version.detail
        assert agent.pipeline.serving.version == "2" and agent.pipeline.batch_size == 2
        assert version.timings_ms["load"] > 0, "version 2 has other bytes: a real load"
        await asyncio.sleep(1.0)
        agent.pipeline.stop()
        summary = await asyncio.wait_for(task, 60)
    counters = agent.reconciler.counters
    assert counters.engine_swaps == 3 and counters.applied == 3 and counters.refused == 0
    assert summary.dropped == 0
    assert summary.frames_out == summary.frames_in, "no frame lost across three swaps"
    assert {2, 4} <= set(summary.batches_by_size)
    assert first_engine is not agent.pipeline.serving.engine


async def test_failed_swaps_leave_the_old_engine_serving(broker, prefix, decoder, short_video, registry_dir,
                                                         tmp_path) -> None:
    topics = Topics(prefix)
    store = LocalDirectoryStore(registry_dir)
    swapper = EngineSwapper(store, ArtifactCache(tmp_path / "cache"))
    agent = await start_agent(broker.url, prefix, decoder, short_video, swapper, streams=1)
    serving = agent.pipeline.serving.engine
    async with observing(broker.url, f"{prefix}/#") as obs:
        task = asyncio.create_task(agent.run())
        await agent.bus.wait_connected(10)

        unknown = await order(obs, topics, 1, model="no-such-model")
        assert unknown.kind == "desired_refused" and unknown.refusal == "unknown_model", unknown
        assert "unknown model" in unknown.detail

        corrupt = await order(obs, topics, 2, version="3")
        assert corrupt.kind == "desired_refused" and corrupt.refusal == "load_error", corrupt
        assert "load of nanodet 3" in corrupt.detail

        swapper.guard = MemoryGuard(headroom_bytes=2**50)
        short = await order(obs, topics, 3, batch_size=4)
        assert short.kind == "desired_refused" and short.refusal == "memory", short
        assert "not enough host memory" in short.detail
        swapper.guard = MemoryGuard()

        # Tamper with the stored bytes of the batch-4 artifact: the download must be refused.
        b4 = next(a for a in await store.find(ArtifactQuery(name="nanodet", version="1", batch_size=4))
                  if not a.dynamic_batch)
        blob = registry_dir / "blobs" / b4.sha256
        original = blob.read_bytes()
        blob.write_bytes(original[:-10] + b"0123456789")
        try:
            mismatch = await order(obs, topics, 4, batch_size=4)
        finally:
            blob.write_bytes(original)
        assert mismatch.kind == "desired_refused" and mismatch.refusal == "fetch_error", mismatch
        assert "sha256" in mismatch.detail
        assert not ArtifactCache(tmp_path / "cache").path_for(b4).exists(), "a bad download is never cached"

        swapper.store = GridFsStore("mongodb://127.0.0.1:9", timeout_ms=300)
        unreachable = await order(obs, topics, 5, batch_size=4)
        assert unreachable.kind == "desired_refused" and unreachable.refusal == "fetch_error", unreachable
        assert "MongoDB" in unreachable.detail
        swapper.store = store

        assert agent.pipeline.serving.engine is serving and agent.pipeline.batch_size == 2
        out_before = agent.pipeline.stats.frames_out
        await eventually(lambda: agent.pipeline.stats.frames_out > out_before + 5, 20, "still serving")
        ok = await order(obs, topics, 6, batch_size=4)
        assert ok.kind == "desired_applied", "after the refusals a good order still works"
        agent.pipeline.stop()
        summary = await asyncio.wait_for(task, 60)
    assert agent.reconciler.counters.refused == 5 and agent.applied_generation == 6
    assert summary.frames_out == summary.frames_in


async def test_announcement_prefetches_into_the_cache(broker, prefix, decoder, short_video, registry_dir,
                                                      tmp_path) -> None:
    topics = Topics(prefix)
    cache = ArtifactCache(tmp_path / "cache")
    store = LocalDirectoryStore(registry_dir)
    swapper = EngineSwapper(store, cache)
    agent = await start_agent(broker.url, prefix, decoder, short_video, swapper, streams=1)
    announcement = await Registry(store).announcement("nanodet")
    assert announcement.latest_version == "3"
    v2 = await Registry(store).announcement("nanodet")
    v2 = v2.model_copy(update={"latest_version": "2", "artifacts": await store.find(ArtifactQuery(name="nanodet",
                                                                                                  version="2"))})
    wanted = next(a for a in v2.artifacts if a.batch_sizes == [2])
    async with observing(broker.url, f"{prefix}/#") as obs:
        task = asyncio.create_task(agent.run())
        await agent.bus.wait_connected(10)
        await obs.publish(topics.model("nanodet"), encode(v2), retain=True)
        await eventually(lambda: cache.path_for(wanted).exists(), 30, "prefetched artifact")
        agent.pipeline.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)


async def test_an_announced_artifact_of_another_model_type_is_not_prefetched(yolov3_tiny, tmp_path) -> None:
    """An agent decoding NanoDet would refuse an order for a yolo-v5 artifact: it does not download it ahead."""
    store = LocalDirectoryStore(tmp_path / "reg")
    registry = Registry(store)
    await registry.push(yolov3_tiny, "nanodet", "5")  # a new version of "nanodet" that is another family
    announcement = await registry.announcement("nanodet")
    assert [a.model_type for a in announcement.artifacts] == ["yolo-v5"]
    cache = ArtifactCache(tmp_path / "cache")
    swapper = EngineSwapper(store, cache)
    await swapper.prefetch(announcement, 2, "nanodet")
    assert cache.fetches == 0 and not cache.path_for(announcement.artifacts[0]).exists()
    await swapper.prefetch(announcement, 2, "yolo-v5")
    assert cache.fetches == 1 and cache.path_for(announcement.artifacts[0]).exists()


async def test_a_burst_of_announcements_is_acted_on_once_for_the_latest(broker, prefix, decoder, short_video,
                                                                      registry_dir, tmp_path) -> None:
    """200 announcements in a burst: received, but prefetched for (and the registry queried) a few
    times, and always for the last one; an unchanged cached artifact is not hashed again."""
    topics = Topics(prefix)
    cache = ArtifactCache(tmp_path / "cache")
    store = LocalDirectoryStore(registry_dir)
    swapper = EngineSwapper(store, cache)
    prefetched: list[str] = []
    real_prefetch = swapper.prefetch
    burst_in = asyncio.Event()

    async def counting_prefetch(announcement, batch_size: int, model_type=None) -> None:  # type: ignore[no-untyped-def]
        prefetched.append(announcement.latest_version)
        await burst_in.wait()  # the first one is still busy while the whole burst arrives: no timing involved
        await real_prefetch(announcement, batch_size, model_type)

    swapper.prefetch = counting_prefetch  # type: ignore[method-assign]
    agent = await start_agent(broker.url, prefix, decoder, short_video, swapper, streams=1)
    base = await Registry(store).announcement("nanodet")
    versions = {v: await store.find(ArtifactQuery(name="nanodet", version=v)) for v in ("1", "2")}
    async with observing(broker.url, f"{prefix}/#") as obs:
        task = asyncio.create_task(agent.run())
        await agent.bus.wait_connected(10)
        burst = [base.model_copy(update={"latest_version": v, "artifacts": versions[v]})
                 for v in ["1", "2"] * 99 + ["1", "2"]]
        await asyncio.gather(*(obs.publish(topics.model("nanodet"), encode(a)) for a in burst))
        await eventually(lambda: agent.counters.announcements == len(burst), 30, "every announcement received")
        burst_in.set()
        await eventually(lambda: agent._announcements is not None and agent._announcements.done(), 30,
                         "the burst acted on")
        agent.pipeline.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)
    assert prefetched and prefetched[-1] == "2", "the last announcement wins"
    # The first one the agent got to (it may already be the latest), then only the latest of those that
    # came while it was busy: one or two, never one per message.
    assert len(prefetched) == agent.counters.announcements_acted_on and 1 <= len(prefetched) <= 2, \
        f"{prefetched} acted on for {len(burst)} announcements"
    wanted = next(a for a in versions["2"] if a.batch_sizes == [2])
    assert cache.path_for(wanted).exists()
