"""Broker faults against a real agent and a real controller, on loopback (issue 13's figures).

1. ``kill -9`` of mosquitto mid-stream, restarted on the same port and persistence folder: how long the
   agent and the controller take to be connected again after the broker listens, whether the retained
   desired state survived, how long to the controller's first decision afterwards, and frames lost by
   the pipeline (accepted but neither finished nor counted as dropped).
2. A hung broker (``SIGSTOP``): how long until the agent and the controller notice (their keepalive).

Prints one JSON document. Times depend on the machine; run it twice before trusting a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import time
from pathlib import Path

from cloud_controller.controller import Controller
from cloud_controller.policies import make_policy
from edge_agent.adapters import NanoDetAdapter
from edge_agent.agent import Agent
from edge_agent.engines import load_engine
from edge_agent.nanodet import load_labels
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes.host import HostProbe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from mqtt_bus import BrokerSettings, IncomingMessage, MqttBus, Subscription
from mqtt_bus.local_broker import LocalBroker
from schemas import DesiredState, Topics, decode, encode

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


async def wait_for(predicate, timeout_s: float) -> float | None:  # type: ignore[no-untyped-def]
    """Seconds until ``predicate()`` holds, polled every 10 ms; None if it never did within the time-out."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            return None
        await asyncio.sleep(0.01)
    return round(time.monotonic() - start, 3)


async def retained_desired(url: str, topic: str) -> bytes | None:
    heard: list[bytes] = []

    async def record(message: IncomingMessage) -> None:
        heard.append(message.payload)

    bus = MqttBus(BrokerSettings.from_url(url), client_id="chaos-reader", subscriptions=[Subscription(topic, 1)])
    task = asyncio.create_task(bus.run(record))
    try:
        await bus.wait_connected(10)
        await wait_for(lambda: bool(heard), 3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return heard[-1] if heard else None


async def publish_order(url: str, topic: str, order: DesiredState) -> None:
    writer = MqttBus(BrokerSettings.from_url(url), client_id="chaos-operator")
    task = asyncio.create_task(writer.run(lambda m: asyncio.sleep(0)))
    try:
        await writer.wait_connected(10)
        await writer.publish(topic, encode(order), qos=1, retain=True)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run(args: argparse.Namespace) -> dict[str, object]:
    engine = load_engine(SAMPLES / "models" / "nanodet-m-416-coco.onnx")
    decoder = NanoDetAdapter(load_labels(SAMPLES / "models" / "coco.names"))
    topics = Topics("chaos")
    figures: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    with LocalBroker(persistence=True) as broker:
        sources = await open_sources([str(SAMPLES / "video" / "vtest.avi")], fps=10, loop=True)
        pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=1, realtime=True))
        agent = Agent(pipeline, HostProbe(), AgentSettings(broker_url=broker.url, agent_id="cam1", prefix="chaos",
                                                           telemetry_interval_s=0.5))
        controller = Controller(BrokerSettings.from_url(broker.url), make_policy("deadline"), prefix="chaos",
                                controller_id="chaos-ctl", ownership="hrw")  # the CLI's default
        agent_task = asyncio.create_task(agent.run())
        ctl_task = asyncio.create_task(controller.run())
        try:
            await agent.bus.wait_connected(10)
            await controller.bus.wait_connected(10)
            order = DesiredState(agent_id="cam1", generation=100, batch_size=2, reason="chaos: before the kill")
            await publish_order(broker.url, topics.desired("cam1"), order)
            await wait_for(lambda: agent.applied_generation == order.generation, 20)
            await wait_for(lambda: controller.may_handle("cam1"), 20)  # steady state: it owns the agent
            # mosquitto checks its autosave interval (1 s here) on whole seconds: a change is on disk within ~2 s.
            await asyncio.sleep(args.autosave_wait)

            # 1. kill -9 and restart
            broker.kill()
            await asyncio.sleep(args.outage_s)
            decisions = controller.counters.decisions
            telemetry_before = controller.counters.telemetry
            broker.start()  # same port, same persistence folder
            restarted = time.monotonic()
            agent_back, controller_back = await asyncio.gather(  # both timed from the restart
                wait_for(agent.bus.connected.is_set, 60), wait_for(controller.bus.connected.is_set, 60))
            back = {"agent": agent_back, "controller": controller_back}
            # Ready to order again: it owns the agent again (its view of the replicas is stable).
            controller_ready = await wait_for(lambda: controller.may_handle("cam1"), 60)
            raw = await retained_desired(broker.url, topics.desired("cam1"))
            kept = decode(DesiredState, raw) if raw else None
            figures["kill9"] = {
                "outage_s": args.outage_s,
                "agent_back_s": back["agent"],
                "controller_back_s": back["controller"],
                "controller_ready_s": None if controller_ready is None or controller_back is None
                else round(controller_back + controller_ready, 3),
                "controller_telemetry_again_s": await wait_for(
                    lambda: controller.counters.telemetry > telemetry_before, 60),
                # The last order before the kill (ours, or the controller's decision after it) is still there.
                "retained_desired_kept": kept is not None and kept.generation >= order.generation,
                "retained_generation": kept.generation if kept is not None else None,
            }
            # An operator pins batch 8, more than one 10 fps stream needs: the controller must decide again.
            pinned = DesiredState(agent_id="cam1", generation=200, batch_size=8, reason="chaos: after the restart")
            await publish_order(broker.url, topics.desired("cam1"), pinned)
            figures["kill9"]["operator_order_at_s"] = round(time.monotonic() - restarted, 3)  # type: ignore[index]
            figures["kill9"]["first_decision_after_restart_s"] = (  # type: ignore[index]
                None if await wait_for(lambda: controller.counters.decisions > decisions, args.decision_wait_s) is None
                else round(time.monotonic() - restarted, 3))

            # 2. a hung broker: the process is there, the socket accepts, nothing answers
            assert broker.process is not None
            broker.process.send_signal(signal.SIGSTOP)
            try:
                agent_noticed, controller_noticed = await asyncio.gather(  # both timed from the hang
                    wait_for(lambda: not agent.bus.connected.is_set(), 60),
                    wait_for(lambda: not controller.bus.connected.is_set(), 60))
                figures["hung"] = {"agent_noticed_s": agent_noticed, "controller_noticed_s": controller_noticed,
                                   "keepalive_s": BrokerSettings().keepalive_s,
                                   "silence_probe_s": agent.bus.silence_probe_s,
                                   "probe_answer_s": agent.bus.probe_answer_s}
            finally:
                broker.process.send_signal(signal.SIGCONT)
            figures["hung"]["agent_back_after_resume_s"] = await wait_for(
                agent.bus.connected.is_set, 60)
        finally:
            pipeline.stop()
            summary = await asyncio.wait_for(agent_task, 60)
            ctl_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctl_task
        figures["pipeline"] = {"frames_in": summary.frames_in, "frames_out": summary.frames_out,
                               "dropped": summary.dropped,
                               "lost": summary.frames_in - summary.frames_out - summary.dropped}
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outage-s", type=float, default=2.0, help="how long the broker stays dead")
    p.add_argument("--autosave-wait", type=float, default=2.5, help="seconds between the order and the kill")
    p.add_argument("--decision-wait-s", type=float, default=20.0, help="how long to wait for a decision after")
    print(json.dumps(asyncio.run(run(p.parse_args())), indent=2))


if __name__ == "__main__":
    main()
