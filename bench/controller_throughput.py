"""Controller figures through a real mosquitto on this machine.

1. Throughput: a publisher process floods real-shaped telemetry from many simulated agents
   (QoS 0); one controller process (this one, the default ``deadline`` policy, replica ownership on)
   decodes, tracks and runs the policy on each message (the agents sit at their right batch size,
   so every window is settled and decided on, as in a steady fleet). In the same run a bare
   aiomqtt subscriber in its own process counts the same flood: the ceiling of this broker, client
   library and machine. By default both stop reading while the flood is published (the broker
   queues it: compose's max_queued_messages), then drain it side by side, so the figure is the
   consumer's and not the publisher's pace (``--live``: read while it is published). Prints, for
   each, messages per second (wall clock, from its first message to its last), messages per
   CPU-second of its own process (steadier on a shared machine), and what it lost.
2. Decision-to-effect: an agent on the sample video (real-time) is ordered to switch batch size
   back and forth; prints the time from the decision's timestamp to the first batch at the new size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from multiprocessing.connection import Connection
from pathlib import Path

import psutil

from cloud_controller.cli import tune_gc
from cloud_controller.controller import Controller
from cloud_controller.policies import DeadlinePolicy
from mqtt_bus import BrokerSettings, MqttBus, Subscription
from mqtt_bus.local_broker import LocalBroker
from schemas import (
    AgentEvent,
    AgentStatus,
    DesiredState,
    LatencyStats,
    ResourceSample,
    Telemetry,
    Topics,
    decode,
    encode,
)

ROOT = Path(__file__).resolve().parent.parent
# What compose/mosquitto/mosquitto.conf sets: mosquitto's default (1000 messages queued per client)
# drops a flood that a controller drains a second later.
BROKER_OPTIONS = ["max_queued_messages 50000"]


def sample_telemetry(agent_id: str, seq: int, batch_size: int = 8, batch_ms: float = 200.0) -> Telemetry:
    """10 fps at batch 8, 200 ms a batch: keeps up, e2e 900 ms within the 1 s SLO, and 16 would miss
    it, so the deadline policy holds: every window is decided on and none causes an order."""
    lat = LatencyStats(count=40, mean_ms=batch_ms, p50_ms=batch_ms, p95_ms=batch_ms * 1.2, p99_ms=batch_ms * 1.3,
                       max_ms=batch_ms * 1.5)
    return Telemetry(
        agent_id=agent_id, seq=seq, window_s=1.0, batch_size=batch_size, batch_size_uniform=True,
        applied_generation=0,
        source_fps_total=10.0, fps_in=10.0, fps_out=10.0, frames_in=seq * 10, frames_out=seq * 10, dropped=0,
        corrupt=0, deadline_misses=0, batches=5,
        latency={k: lat for k in ("pre", "queue", "infer", "post", "e2e", "batch")},
        queue_depths={"ingress": 0, "ready": 0, "batches": 0, "inferred": 0},
        resources=ResourceSample(probe="host", host_memory_used_bytes=2 * 2**30, host_memory_total_bytes=16 * 2**30,
                                 process_rss_bytes=300 * 2**20, cpu_util_pct=50.0),
    )


def publisher(url: str, prefix: str, agents: int, messages: int, result: Connection) -> None:
    async def run() -> None:
        topics = Topics(prefix)
        bus = MqttBus(BrokerSettings.from_url(url), client_id="bench-publisher")
        task = asyncio.create_task(bus.run(lambda m: asyncio.sleep(0)))
        await bus.wait_connected(10)
        for i in range(agents):  # agents announce themselves before their telemetry (the controller orders no one else)
            await bus.publish(topics.status(f"sim{i}"), encode(AgentStatus(agent_id=f"sim{i}", state="online")), qos=1)
        payloads = [(topics.telemetry(f"sim{i}"), encode(sample_telemetry(f"sim{i}", 1))) for i in range(agents)]
        start = time.perf_counter()
        for n in range(messages):
            topic, payload = payloads[n % agents]
            await bus.publish(topic, payload)
        result.send({"published": bus.counters.published, "publish_s": time.perf_counter() - start})
        await asyncio.sleep(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())


def bare_subscriber(url: str, topic_filter: str, ready: Connection, go: Connection | None,
                    result: Connection) -> None:
    """A plain aiomqtt client that only counts: what any consumer of this flood could get. With ``go``,
    it subscribes, then stops reading (its event loop waits on the pipe) until told to drain."""
    import aiomqtt  # only here: the bench's yardstick, not the product's MQTT path

    async def run() -> None:
        settings = BrokerSettings.from_url(url)
        count, first, last, cpu_first = 0, 0.0, 0.0, 0.0
        async with aiomqtt.Client(settings.host, settings.port, identifier="bench-bare", keepalive=120,
                                  protocol=aiomqtt.ProtocolVersion.V5, max_queued_incoming_messages=100_000) as client:
            await client.subscribe(topic_filter)
            ready.send(True)
            if go is not None:
                go.recv()  # blocks the event loop: the flood waits in the broker's queue for this client
            with contextlib.suppress(TimeoutError):
                while True:
                    async with asyncio.timeout(3.0 if count else 60.0):  # the flood is over: 3 s of silence
                        await anext(client.messages)
                    last = time.perf_counter()
                    if not count:
                        first, cpu_first = last, time.process_time()
                    count += 1
                    cpu_last = time.process_time()
        result.send({"received": count, "seconds": last - first, "cpu_s": cpu_last - cpu_first})

    asyncio.run(run())


async def throughput(url: str, agents: int, messages: int, bare: bool = True,
                     backlog: bool = True) -> dict[str, object]:
    """``backlog``: both consumers stop reading while the publisher floods (the broker queues it for
    them), then drain it side by side: their own capacity, not the publisher's pace. Otherwise they
    read while the publisher publishes."""
    prefix = "benchtp"
    topics = Topics(prefix)
    # ownership="single": every message takes the full path (decode, view, policy). Under "hrw" an
    # owned agent costs the same (one set lookup more); but a replica whose own heartbeats come back
    # late behind a flood this deep stops deciding until it has caught up, which would flatter the figure.
    settings = dataclasses.replace(BrokerSettings.from_url(url), keepalive_s=120)  # survives the paused reads
    controller = Controller(settings, DeadlinePolicy(), prefix=prefix, controller_id="bench-ctl", ownership="single",
                            max_queued_incoming=100_000)
    first: list[float] = []
    last = [0.0]
    cpu = [0.0, 0.0]  # this process's CPU time at the first and the last message: robust on a shared machine
    handle = controller.handle

    async def timed(message):  # type: ignore[no-untyped-def]
        if not message.topic.endswith("/telemetry"):  # heartbeats and the like are not the flood
            await handle(message)
            return
        now = time.perf_counter()
        if not first:
            first.append(now)
            cpu[0] = time.process_time()
        await handle(message)
        last[0] = time.perf_counter()
        cpu[1] = time.process_time()

    controller.handle = timed  # type: ignore[method-assign]
    task = asyncio.create_task(controller.run())
    await controller.bus.wait_connected(10)
    await asyncio.sleep(0.5)  # subscriptions acknowledged, retained state read
    spawn = mp.get_context("spawn")
    bare_result, bare_proc, go_w = None, None, None
    if bare:
        ready_r, ready_w = spawn.Pipe(duplex=False)
        bare_result, bare_w = spawn.Pipe(duplex=False)
        go_r, go_w = spawn.Pipe(duplex=False) if backlog else (None, None)
        bare_proc = spawn.Process(target=bare_subscriber,
                                  args=(url, topics.all_agents("telemetry"), ready_w, go_r, bare_w))
        bare_proc.start()
        await asyncio.to_thread(ready_r.recv)
    pub_result, pub_w = spawn.Pipe(duplex=False)
    proc = spawn.Process(target=publisher, args=(url, prefix, agents, messages, pub_w))
    proc.start()
    if backlog:
        proc.join()  # blocks this event loop: the controller reads nothing until the flood is queued
        if go_w is not None:
            go_w.send(True)
    while proc.is_alive() or (bare_proc is not None and bare_proc.is_alive()):
        await asyncio.sleep(0.1)
    seen = -1.0
    while last[0] != seen:  # drain what the controller has queued: done after 2 s without a message
        seen = last[0]
        await asyncio.sleep(2.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    pub = pub_result.recv()
    c = controller.counters
    handled = c.telemetry + c.not_owned + c.rejected
    out: dict[str, object] = {
        "agents": agents,
        "flood": messages,
        "mode": "drain a queued flood" if backlog else "read while it is published",
        "publisher_msgs_per_s": round(pub["published"] / pub["publish_s"], 1),
        "controller": {
            "handled": handled,
            "lost": messages - handled,  # QoS 0: broker or client queue overflow
            "msgs_per_s": round(handled / max(1e-9, last[0] - first[0]), 1) if first else 0.0,
            "msgs_per_cpu_s": round(handled / max(1e-9, cpu[1] - cpu[0]), 1),
            "gc": f"thresholds {gc.get_threshold()}, start-up frozen (as cloud-controller)",
            "decided_on": c.telemetry,
            "orders": c.decisions,
        },
    }
    if bare_result is not None:
        b = bare_result.recv()
        out["bare_subscriber"] = {"received": b["received"], "lost": messages - b["received"],
                                  "gc": "CPython defaults (700, 10, 10)",
                                  "msgs_per_s": round(b["received"] / max(1e-9, b["seconds"]), 1),
                                  "msgs_per_cpu_s": round(b["received"] / max(1e-9, b["cpu_s"]), 1)}
    return out


async def decision_to_effect(url: str, switches: int) -> dict[str, float]:
    from edge_agent.adapters import NanoDetAdapter
    from edge_agent.agent import Agent
    from edge_agent.engines import load_engine
    from edge_agent.nanodet import load_labels
    from edge_agent.pipeline import Pipeline, PipelineConfig
    from edge_agent.probes import auto_probe
    from edge_agent.settings import AgentSettings
    from edge_agent.sources import open_sources

    prefix = "benchdte"
    topics = Topics(prefix)
    sources = await open_sources([str(ROOT / "samples/video/vtest.avi")] * 2, loop=True)
    pipeline = Pipeline(sources, load_engine(ROOT / "samples/models/nanodet-m-416-coco.onnx"),
                        NanoDetAdapter(load_labels(ROOT / "samples/models/coco.names")),
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
    out: dict[str, object] = {"machine": f"{platform.machine()} {psutil.cpu_count()} cores, load average "
                              f"{os.getloadavg()[0]:.1f}", "broker_options": args.broker_option}
    tune_gc()  # as cloud-controller does
    with LocalBroker(persistence=False, extra_config="".join(f"{line}\n" for line in args.broker_option)) as broker:
        out["throughput"] = await throughput(broker.url, args.agents, args.messages, bare=not args.no_bare,
                                             backlog=not args.live)
        if args.switches:
            out["decision_to_effect"] = await decision_to_effect(broker.url, args.switches)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--switches", type=int, default=8, help="decision-to-effect switches (0: skip)")
    parser.add_argument("--broker-option", action="append", default=None, metavar="LINE",
                        help="a mosquitto.conf line for the bench broker (default, as in compose/: "
                        f"{BROKER_OPTIONS}; 'max_queued_messages 1000' is mosquitto's own default)")
    parser.add_argument("--no-bare", action="store_true", help="no bare subscriber beside the controller")
    parser.add_argument("--live", action="store_true",
                        help="read while the publisher publishes (default: drain a queued flood, so the "
                        "figure is the consumer's, not the publisher's pace)")
    args = parser.parse_args()
    args.broker_option = args.broker_option or BROKER_OPTIONS
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
