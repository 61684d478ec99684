"""Controller figures through a real mosquitto on this machine.

1. Throughput: a publisher process floods real-shaped telemetry from many simulated agents
   (QoS 0); one controller process (this one) decodes, tracks and runs kum2022 on each message.
   Prints messages handled per second and how many the broker had to drop.
2. Decision-to-effect: an agent on the sample video (real-time) is ordered to switch batch size
   back and forth; prints the time from the decision's timestamp to the first batch at the new size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import platform
import statistics
import time
from pathlib import Path

import psutil

from cloud_controller.controller import Controller
from cloud_controller.policies import Kum2022Policy
from mqtt_bus import BrokerSettings, MqttBus, Subscription
from mqtt_bus.local_broker import LocalBroker
from schemas import AgentEvent, DesiredState, LatencyStats, ResourceSample, Telemetry, Topics, decode, encode

ROOT = Path(__file__).resolve().parent.parent


def sample_telemetry(agent_id: str, seq: int) -> Telemetry:
    lat = LatencyStats(count=40, mean_ms=60.0, p50_ms=58.0, p95_ms=80.0, p99_ms=95.0, max_ms=120.0)
    return Telemetry(
        agent_id=agent_id, seq=seq, window_s=1.0, batch_size=2, batch_size_uniform=True, applied_generation=0,
        source_fps_total=10.0, fps_in=10.0, fps_out=10.0, frames_in=seq * 10, frames_out=seq * 10, dropped=0,
        corrupt=0, deadline_misses=0, batches=5,
        latency={k: lat for k in ("pre", "queue", "infer", "post", "e2e", "batch")},
        queue_depths={"ingress": 0, "ready": 0, "batches": 0, "inferred": 0},
        resources=ResourceSample(probe="host", host_memory_used_bytes=2 * 2**30, host_memory_total_bytes=16 * 2**30,
                                 process_rss_bytes=300 * 2**20, cpu_util_pct=50.0),
    )


def publisher(url: str, prefix: str, agents: int, messages: int) -> None:
    async def run() -> None:
        topics = Topics(prefix)
        bus = MqttBus(BrokerSettings.from_url(url), client_id="bench-publisher")
        task = asyncio.create_task(bus.run(lambda m: asyncio.sleep(0)))
        await bus.wait_connected(10)
        payloads = [(topics.telemetry(f"sim{i}"), encode(sample_telemetry(f"sim{i}", 1))) for i in range(agents)]
        for n in range(messages):
            topic, payload = payloads[n % agents]
            await bus.publish(topic, payload)
        await asyncio.sleep(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())


async def throughput(url: str, agents: int, messages: int) -> dict[str, float]:
    prefix = "benchtp"
    controller = Controller(BrokerSettings.from_url(url), Kum2022Policy(), prefix=prefix, controller_id="bench-ctl")
    first: list[float] = []
    last = [0.0]
    handle = controller.handle

    async def timed(message):  # type: ignore[no-untyped-def]
        now = time.perf_counter()
        if not first:
            first.append(now)
        await handle(message)
        last[0] = time.perf_counter()

    controller.handle = timed  # type: ignore[method-assign]
    task = asyncio.create_task(controller.run())
    await controller.bus.wait_connected(10)
    proc = mp.get_context("spawn").Process(target=publisher, args=(url, prefix, agents, messages))
    proc.start()
    while proc.is_alive():
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    handled = controller.counters.telemetry
    return {
        "agents": agents,
        "published": messages,
        "handled": handled,
        "lost_under_flood": messages - handled,  # broker and client queues overflow: QoS 0
        "handled_per_s": round(handled / max(1e-9, last[0] - first[0]), 1) if first else 0.0,
        "decisions": controller.counters.decisions,
    }


async def decision_to_effect(url: str, switches: int) -> dict[str, float]:
    from edge_agent.agent import Agent
    from edge_agent.engines import load_engine
    from edge_agent.nanodet import NanoDetDecoder, load_labels
    from edge_agent.pipeline import Pipeline, PipelineConfig
    from edge_agent.probes import auto_probe
    from edge_agent.settings import AgentSettings
    from edge_agent.sources import open_sources

    prefix = "benchdte"
    topics = Topics(prefix)
    sources = await open_sources([str(ROOT / "samples/video/vtest.avi")] * 2, loop=True)
    pipeline = Pipeline(sources, load_engine(ROOT / "samples/models/nanodet-m-416-coco.onnx"),
                        NanoDetDecoder(load_labels(ROOT / "samples/models/coco.names")),
                        PipelineConfig(batch_size=1, realtime=True))
    agent = Agent(pipeline, auto_probe(), AgentSettings(broker_url=url, agent_id="bench", prefix=prefix))
    timings: list[float] = []

    async def on_event(message) -> None:  # type: ignore[no-untyped-def]
        event = decode(AgentEvent, message.payload)
        if event.kind == "desired_applied" and "decision_to_first_batch" in event.timings_ms:
            timings.append(event.timings_ms["decision_to_first_batch"])

    operator = MqttBus(BrokerSettings.from_url(url), client_id="bench-operator",
                       subscriptions=[Subscription(topics.events("bench"), qos=1)])
    op_task = asyncio.create_task(operator.run(on_event))
    agent_task = asyncio.create_task(agent.run())
    await operator.wait_connected(10)
    await agent.bus.wait_connected(10)
    await asyncio.sleep(2.0)
    for generation in range(1, switches + 1):
        size = 4 if generation % 2 else 2
        desired = DesiredState(agent_id="bench", generation=generation, batch_size=size, issued_by="bench")
        await operator.publish(topics.desired("bench"), encode(desired), qos=1, retain=True)
        await asyncio.sleep(2.0)
    pipeline.stop()
    summary = await agent_task
    op_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await op_task
    return {
        "switches": switches,
        "measured": len(timings),
        "decision_to_first_batch_ms_median": round(statistics.median(timings), 1) if timings else -1,
        "decision_to_first_batch_ms_max": round(max(timings), 1) if timings else -1,
        "frames_lost": summary.frames_in - summary.frames_out - summary.dropped,
        "dropped": summary.dropped,
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with LocalBroker(persistence=False) as broker:
        tp = await throughput(broker.url, args.agents, args.messages)
        dte = await decision_to_effect(broker.url, args.switches)
    return {"machine": f"{platform.machine()} {psutil.cpu_count()} cores", "throughput": tp,
            "decision_to_effect": dte}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--switches", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
