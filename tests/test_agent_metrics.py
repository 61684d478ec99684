"""The agent's /metrics and /healthz over real HTTP: a real pipeline on the sample model and video, a real
uvicorn server on a free port, urllib; with the MQTT side, a real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge_agent.adapters import ModelAdapter
from edge_agent.agent import Agent
from edge_agent.engines import InferenceEngine
from edge_agent.metrics import STAGE_BUCKETS_S, AgentMetrics
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes.host import HostProbe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from edge_agent.web import MetricsServer
from mqtt_bus.local_broker import LocalBroker
from schemas import AgentStatus, DesiredState, Topics, decode
from tests.mqtt_helpers import observing
from tests.prometheus_helpers import Samples, healthz, label_values, scrape, value

COUNTERS = ("edgebatch_frames_in_total", "edgebatch_frames_out_total", "edgebatch_frames_dropped_total",
            "edgebatch_deadline_misses_total")


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        await asyncio.sleep(0.2)


async def pipeline_of(video: Path, engine: InferenceEngine, decoder: ModelAdapter, streams: int) -> Pipeline:
    sources = await open_sources([str(video)] * streams, fps=6, loop=True)
    return Pipeline(sources, engine, decoder, PipelineConfig(batch_size=2, realtime=True))


async def test_stream_series_come_and_go_counters_grow_and_health_follows_the_pipeline(
        short_video: Path, engine: InferenceEngine, decoder: ModelAdapter) -> None:
    pipeline = await pipeline_of(short_video, engine, decoder, streams=2)
    server = MetricsServer(AgentMetrics(pipeline, HostProbe()), port=0)
    port = await server.start()
    run = None
    try:
        status, body = await healthz(port)
        assert (status, body["pipeline"]) == (503, "starting")
        run = asyncio.create_task(pipeline.run())
        latest: Samples = {}

        async def both_streams_out() -> bool:
            nonlocal latest
            _, latest = await scrape(port)
            return all((value(latest, "edgebatch_frames_out_total", stream=s) or 0) > 0 for s in ("s0", "s1"))

        await until(both_streams_out, what="frames out of both streams")
        status, body = await healthz(port)
        assert status == 200 and body["pipeline"] == "running" and body["broker_connected"] is None, body
        names, first = await scrape(port)
        assert {"edgebatch_gpu_util_percent", "edgebatch_gpu_memory_used_bytes"} <= names, "listed without a GPU"
        assert value(first, "edgebatch_gpu_util_percent") is None, "no figure is made up on a host probe"
        assert (value(first, "edgebatch_host_memory_total_bytes") or 0) > 0
        assert value(first, "edgebatch_batch_size") == 2
        assert label_values(first, "edgebatch_queue_depth", "queue") == {"ingress", "pre", "infer", "post", "filter",
                                                                             "sinks"}
        assert "edgebatch_swaps_total" not in names, "no MQTT side, no orders"

        async def grown() -> bool:
            nonlocal latest
            _, latest = await scrape(port)
            return value(latest, "edgebatch_frames_out_total", stream="s0") > value(  # type: ignore[operator]
                first, "edgebatch_frames_out_total", stream="s0")

        await until(grown, what="more frames out")
        for (name, labels), before in first.items():
            if name.endswith(("_total", "_count", "_sum", "_bucket")) and (name, labels) in latest:
                assert latest[(name, labels)] >= before, f"{name}{dict(labels)} went down"
        for stage in ("pre", "queue", "infer", "post", "e2e", "batch"):
            count = value(latest, "edgebatch_stage_seconds_count", stage=stage)
            assert count and value(latest, "edgebatch_stage_seconds_bucket", stage=stage, le="+Inf") == count
            buckets = [value(latest, "edgebatch_stage_seconds_bucket", stage=stage, le=str(b)) for b in STAGE_BUCKETS_S]
            assert buckets == sorted(buckets), f"{stage}: buckets are not cumulative"
        e2e = value(latest, "edgebatch_stage_seconds_count", stage="e2e")
        frames_out = sum(value(latest, "edgebatch_frames_out_total", stream=s) or 0 for s in ("s0", "s1"))
        assert e2e == frames_out, "e2e is one observation per frame out"

        pipeline.park("s1")
        _, parked = await scrape(port)
        assert label_values(parked, "edgebatch_frames_in_total", "stream") == {"s0"}, "a parked stream's series stay"
        assert all("s1" not in dict(labels).values() for _, labels in parked)
        assert value(parked, "edgebatch_streams", state="parked") == 1
        pipeline.unpark("s1")
        _, back = await scrape(port)
        assert value(back, "edgebatch_frames_in_total", stream="s1") >= value(  # type: ignore[operator]
            first, "edgebatch_frames_in_total", stream="s1"), "its counts go on where they were"
        await pipeline.remove_source("s0")
        _, removed = await scrape(port)
        for name in COUNTERS:
            assert label_values(removed, name, "stream") == {"s1"}, name

        pipeline.stop()
        await run
        status, body = await healthz(port)
        assert (status, body["pipeline"]) == (503, "stopped")
    finally:
        if run is not None and not run.done():
            pipeline.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(run, 30)
        await server.close()


async def test_orders_by_outcome_the_broker_state_and_the_announced_address(
        broker: LocalBroker, prefix: str, short_video: Path, engine: InferenceEngine, decoder: ModelAdapter) -> None:
    pipeline = await pipeline_of(short_video, engine, decoder, streams=1)
    settings = AgentSettings(broker_url=broker.url, agent_id="cam1", prefix=prefix, telemetry_interval_s=0.5)
    agent = Agent(pipeline, HostProbe(), settings)
    server = MetricsServer(AgentMetrics(pipeline, HostProbe(), agent), "0.0.0.0", port=0)
    port = await server.start()
    agent.metrics_address = server.advertised("cam1.example:9108")
    assert server.advertised().endswith(f":{port}") and not server.advertised().startswith("0.0.0.0")
    topics = Topics(prefix)
    async with observing(broker.url, f"{prefix}/#") as obs:
        run = asyncio.create_task(agent.run())
        try:
            async def connected() -> bool:
                status, body = await healthz(port)
                return status == 200 and body["broker_connected"] is True

            await until(connected, what="the agent on the broker")
            statuses = [decode(AgentStatus, p) for p in obs.on(topics.status("cam1"))]
            assert statuses and statuses[-1].metrics_address == "cam1.example:9108"

            await agent.apply_desired(DesiredState(agent_id="cam1", generation=1, batch_size=4))
            await agent.apply_desired(DesiredState(agent_id="cam1", generation=1, batch_size=4))  # stale

            async def counted() -> bool:
                _, samples = await scrape(port)
                return value(samples, "edgebatch_swaps_total", outcome="applied") == 1

            await until(counted, what="the applied order counted")
            _, samples = await scrape(port)
            assert value(samples, "edgebatch_swaps_total", outcome="stale") == 1
            assert value(samples, "edgebatch_swaps_total", outcome="refused") == 0
            assert value(samples, "edgebatch_batch_size") == 4
            assert value(samples, "edgebatch_applied_generation") == 1
            assert value(samples, "edgebatch_broker_connected") == 1
            assert (value(samples, "edgebatch_telemetry_messages_total", result="sent") or 0) >= 1
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 60)
            await server.close()
