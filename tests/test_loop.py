"""The closed loop over a real mosquitto: agent <-> controller, retained state, bad payloads, outages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from cloud_controller.controller import Controller
from cloud_controller.policies import Kum2022Policy
from edge_agent.agent import Agent
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes.host import HostProbe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from mqtt_bus import BrokerSettings
from schemas import AgentEvent, AgentStatus, DesiredState, FrameDetections, Telemetry, Topics, decode, encode
from tests.conftest import VIDEO
from tests.mqtt_helpers import eventually, observing


async def make_agent(url: str, prefix: str, engine, decoder, uri: Path, *, batch_size: int = 1, streams: int = 1,
                     max_frames: int | None = None, loop: bool = True, interval: float = 0.5) -> Agent:
    sources = await open_sources([str(uri)] * streams, loop=loop)
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=batch_size, realtime=True,
                                                                  max_frames=max_frames))
    settings = AgentSettings(broker_url=url, agent_id="cam1", prefix=prefix, telemetry_interval_s=interval)
    return Agent(pipeline, HostProbe(), settings)


@contextlib.asynccontextmanager
async def running(coro):
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_closed_loop_moves_the_agent_up_the_ladder(broker, prefix, engine, decoder, short_video) -> None:
    agent = await make_agent(broker.url, prefix, engine, decoder, short_video)
    controller = Controller(BrokerSettings.from_url(broker.url), Kum2022Policy(), prefix=prefix,
                            controller_id=f"ctl-{prefix}")
    async with running(controller.run()), running(agent.run()) as agent_task:
        # 1 stream at 10 fps: ~30 ms a frame on this CPU is well inside n x 100 ms, so it grows.
        # applied_generation moves when the new size's first batch is inferred, not on receipt.
        await eventually(lambda: agent.pipeline.batch_size >= 4 and agent.applied_generation >= 2, 60, "batch size 4")
        agent.pipeline.stop()
        summary = await agent_task
    view = controller.agents["cam1"]
    sizes = [d[1] for d in view.decisions]
    assert sizes[:2] == [2, 4], sizes
    assert all("kum2022" in d[2].reason or "grow" in d[2].reason for d in view.decisions)
    assert summary.frames_out + summary.dropped == summary.frames_in
    assert summary.dropped == 0
    assert 2 <= agent.applied_generation <= len(view.decisions)  # a last order may not have taken effect
    assert agent.reconciler.counters.refused == 0
    assert controller.counters.telemetry > 0 and controller.counters.rejected == 0


async def test_retained_status_and_telemetry(broker, prefix, engine, decoder, short_video) -> None:
    topics = Topics(prefix)
    agent = await make_agent(broker.url, prefix, engine, decoder, short_video, batch_size=2)
    async with running(agent.run()):
        await eventually(lambda: agent.counters.telemetry_sent >= 2, 20, "two telemetry messages")
        # A peer that connects later still gets the status: it is retained.
        async with observing(broker.url, f"{prefix}/#") as late:
            await eventually(lambda: late.on(topics.status("cam1")), 10, "retained status")
            status = decode(AgentStatus, late.on(topics.status("cam1"))[0])
            assert status.state == "online" and status.serving.batch_size == 2
            assert "onnxruntime" in status.capabilities.backends
            await eventually(lambda: late.on(topics.telemetry("cam1")), 10, "telemetry")
            t = decode(Telemetry, late.on(topics.telemetry("cam1"))[-1])
            assert t.batch_size == 2 and t.source_fps_total == 10.0
            assert t.resources.probe == "host" and t.resources.process_rss_bytes > 0
            assert set(t.latency) == {"pre", "queue", "infer", "post", "e2e", "batch"}
        agent.pipeline.stop()


def test_last_will_marks_a_killed_agent_offline(broker, prefix, short_video) -> None:
    topics = Topics(prefix)

    async def scenario() -> None:
        async with observing(broker.url, f"{prefix}/#") as obs:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent.cli", "run", "--source", str(short_video), "--loop",
                 "--broker", broker.url, "--agent-id", "victim", "--prefix", prefix],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                await eventually(lambda: any(decode(AgentStatus, p).state == "online"
                                             for p in obs.on(topics.status("victim"))), 60, "online status")
                os.kill(proc.pid, signal.SIGKILL)  # no goodbye: only the broker's last will can tell
                await eventually(lambda: decode(AgentStatus, obs.on(topics.status("victim"))[-1]).state == "offline",
                                 30, "last will")
            finally:
                proc.kill()
                proc.wait()
        async with observing(broker.url, topics.status("victim")) as late:
            await eventually(lambda: late.messages, 10, "retained will")
            assert decode(AgentStatus, late.messages[-1].payload).state == "offline"

    asyncio.run(scenario())


async def test_detections_are_published_when_asked(broker, prefix, engine, decoder, short_video) -> None:
    topics = Topics(prefix)
    sources = await open_sources([str(short_video)])
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=2, realtime=False, max_frames=10))
    agent = Agent(pipeline, HostProbe(), AgentSettings(broker_url=broker.url, agent_id="cam1", prefix=prefix,
                                                       publish_detections=True))
    async with observing(broker.url, topics.detections("cam1")) as obs:
        task = asyncio.create_task(agent.run())
        await agent.bus.wait_connected(10)
        await eventually(lambda: len(obs.messages) == 10, 30, "10 detection messages")
        await task
    frames = [decode(FrameDetections, m.payload) for m in obs.messages]
    assert sorted(f.seq for f in frames) == list(range(10))
    assert all(any(d.label == "person" for d in f.detections) for f in frames)


async def test_stale_generations_are_ignored(broker, prefix, engine, decoder, short_video) -> None:
    topics = Topics(prefix)
    agent = await make_agent(broker.url, prefix, engine, decoder, short_video)
    async with running(agent.run()), observing(broker.url, f"{prefix}/#") as obs:
        await agent.bus.wait_connected(10)
        await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=5, batch_size=2)),
                          retain=True)
        await eventually(lambda: agent.pipeline.batch_size == 2 and agent.applied_generation == 5, 20, "gen 5")
        await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=3, batch_size=8)))
        await eventually(lambda: agent.reconciler.counters.stale == 1, 10, "stale counted")
        assert agent.pipeline.batch_size == 2 and agent.applied_generation == 5
        events = [decode(AgentEvent, p) for p in obs.on(topics.events("cam1"))]
        await eventually(lambda: any(decode(AgentEvent, p).kind == "desired_ignored"
                                     for p in obs.on(topics.events("cam1"))), 10, "ignored event")
        assert not any(e.kind == "desired_applied" and e.generation == 3 for e in events)
        agent.pipeline.stop()


async def test_bad_payloads_are_counted_and_dropped(broker, prefix, engine, decoder, short_video) -> None:
    topics = Topics(prefix)
    agent = await make_agent(broker.url, prefix, engine, decoder, short_video)
    controller = Controller(BrokerSettings.from_url(broker.url), Kum2022Policy(), prefix=prefix,
                            controller_id=f"ctl-{prefix}")
    bad = [
        b"{not json",
        b'{"agent_id": "cam1", "generation": 2, "batch_size": 4, "unexpected": true}',
        b'{"schema_version": 99, "agent_id": "cam1", "generation": 2}',
        b'{"agent_id": "cam1", "generation": 2, "batch_size": "' + b"x" * 300_000 + b'"}',
    ]
    async with running(agent.run()) as agent_task, running(controller.run()) as ctl_task, \
            observing(broker.url, f"{prefix}/#") as obs:
        await agent.bus.wait_connected(10)
        await controller.bus.wait_connected(10)
        for payload in bad:
            await obs.publish(topics.desired("cam1"), payload)
            await obs.publish(topics.telemetry("cam1"), payload, qos=0)
            await obs.publish(topics.status("cam1"), payload)
        await eventually(lambda: agent.counters.rejected_payloads == len(bad), 10, "agent rejections")
        await eventually(lambda: controller.counters.rejected >= 2 * len(bad), 10, "controller rejections")
        rejected = [decode(AgentEvent, p) for p in obs.on(topics.events("cam1"))]
        assert sum(e.kind == "payload_rejected" for e in rejected) >= 1
        # Both keep working: a valid order is still obeyed, telemetry still flows.
        await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=2, batch_size=4)))
        await eventually(lambda: agent.pipeline.batch_size == 4, 20, "valid order obeyed")
        before = controller.counters.telemetry
        await eventually(lambda: controller.counters.telemetry > before, 10, "telemetry still handled")
        assert not agent_task.done() and not ctl_task.done()
        assert agent.bus.counters.handler_errors == 0 and controller.bus.counters.handler_errors == 0
        agent.pipeline.stop()


async def test_agent_survives_a_broker_restart(own_broker, prefix, engine, decoder, short_video) -> None:
    topics = Topics(prefix)
    agent = await make_agent(own_broker.url, prefix, engine, decoder, short_video, max_frames=150)
    agent.bus.backoff_max_s = 1.0
    async with running(agent.run()) as agent_task:
        async with observing(own_broker.url, f"{prefix}/#") as obs:
            await agent.bus.wait_connected(10)
            await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=1,
                                                                           batch_size=2)), retain=True)
            await eventually(lambda: agent.pipeline.batch_size == 2, 20, "gen 1")
        frames_before = agent.pipeline.stats.frames_out
        own_broker.stop()
        await eventually(lambda: not agent.bus.connected.is_set(), 20, "agent notices the outage")
        await asyncio.sleep(2.0)
        assert agent.pipeline.stats.frames_out > frames_before, "inference went on without a broker"
        own_broker.start()
        await agent.bus.wait_connected(30)
        assert agent.counters.telemetry_unsent > 0
        async with observing(own_broker.url, f"{prefix}/#") as obs:
            # The retained order survived the restart; the agent does not re-apply it (same generation).
            await eventually(lambda: obs.on(topics.desired("cam1")), 10, "retained desired state")
            await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=2,
                                                                           batch_size=4)), retain=True)
            await eventually(lambda: agent.pipeline.batch_size == 4 and agent.applied_generation == 2, 20, "gen 2")
            await eventually(lambda: any(decode(AgentStatus, p).applied_generation == 2
                                         for p in obs.on(topics.status("cam1"))), 10, "status after reconnect")
        summary = await asyncio.wait_for(agent_task, 60)
    assert agent.bus.counters.connects >= 2
    assert summary.frames_in == 150
    assert summary.frames_out == summary.frames_in, "no frame lost to the outage"
    assert summary.dropped == 0


async def test_desired_state_for_the_real_sample_video_topic_shapes(prefix) -> None:
    # The full sample video is what the demo plays; its frame rate drives the real-time criterion.
    sources = await open_sources([str(VIDEO)])
    assert sources[0].info.fps == 10.0 and sources[0].info.frame_count == 795
    sources[0].close()
