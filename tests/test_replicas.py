"""Three real ``cloud-controller`` processes on a real mosquitto split a simulated fleet by agent.

The fleet: 36 agents on one MQTT connection, each on a simulated device whose batch delay is
8 + 25 x n ms up to batch 8 and falls off a cliff at 16 (640 ms), at 30 fps. Each obeys its desired
state, and every few windows at batch 8 it "restarts" at batch 1, so the deadline policy keeps
ordering it back up. Once the policy has learned the curve, it orders batch 8 straight from batch 1
(the smallest size that keeps up with headroom); without the profile it would first measure batch 2.

One replica is SIGKILLed mid-run. Checked: no agent ever took orders from two replicas interleaved
(a handover from one to the next is fine), generations only grow, every agent of the dead replica
gets orders from a new owner within 5 s, and the new owner's first order for it already uses the
profile the dead one learned (batch 1 -> 8 directly), having imported it from the retained topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mqtt_bus import BrokerSettings, IncomingMessage, MqttBus, Subscription
from schemas import AgentStatus, ControllerAlive, DesiredState, PolicyState, Topics, decode, encode
from tests.mqtt_helpers import eventually, observing
from tests.test_kum2022 import telemetry

AGENTS = [f"cam{i:02d}" for i in range(36)]
WINDOW_S = 0.25
FPS = 30.0
REPLICAS = ["ctl-a", "ctl-b", "ctl-c"]


def device_delay_ms(n: int) -> float:
    return 8 + 25 * n if n <= 8 else 40.0 * n


@dataclass
class SimAgent:
    batch: int = 1
    applied: int = 0
    windows_at_size: int = 0
    seq: int = 0


@dataclass
class Order:
    t: float
    desired: DesiredState
    from_batch: int


@dataclass
class SimFleet:
    """Many agents on one connection: publish a telemetry window each per tick, obey orders."""

    url: str
    prefix: str
    agents: dict[str, SimAgent] = field(default_factory=lambda: {a: SimAgent() for a in AGENTS})
    orders: dict[str, list[Order]] = field(default_factory=lambda: {a: [] for a in AGENTS})

    def __post_init__(self) -> None:
        self.topics = Topics(self.prefix)
        self.bus = MqttBus(BrokerSettings.from_url(self.url), client_id=f"fleet-{self.prefix}",
                           subscriptions=[Subscription(self.topics.all_agents("desired"), qos=1)])

    async def on_desired(self, message: IncomingMessage) -> None:
        d = decode(DesiredState, message.payload)
        agent = self.agents[d.agent_id]
        self.orders[d.agent_id].append(Order(time.monotonic(), d, agent.batch))
        if d.generation > agent.applied and d.batch_size is not None:
            agent.applied, agent.batch, agent.windows_at_size = d.generation, d.batch_size, 0

    async def tick(self) -> None:
        for agent_id in self.agents:  # as a real agent: its retained status first
            await self.bus.publish(self.topics.status(agent_id), encode(AgentStatus(agent_id=agent_id, state="online")),
                                   qos=1, retain=True)
        while True:
            for agent_id, a in self.agents.items():
                a.seq += 1
                a.windows_at_size += 1
                t = telemetry(a.batch, device_delay_ms(a.batch), fps=FPS).model_copy(
                    update={"agent_id": agent_id, "seq": a.seq, "applied_generation": a.applied})
                await self.bus.publish(self.topics.telemetry(agent_id), encode(t))
                if a.batch == 8 and a.windows_at_size >= 4:
                    a.batch, a.windows_at_size = 1, 0  # the device restarted at batch 1
            await asyncio.sleep(WINDOW_S)


def start_controller(url: str, prefix: str, replica: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cloud_controller.cli", "--broker", url, "--prefix", prefix, "--id", replica,
             "--http", "off", "--policy", "deadline", "--heartbeat-s", "0.5", "--profile-interval-s", "0.5",
             "--fleet-interval", "3600"], stdout=out, stderr=subprocess.STDOUT)


def owner_runs(orders: list[Order]) -> list[str]:
    runs: list[str] = []
    for o in orders:
        if not runs or runs[-1] != o.desired.issued_by:
            runs.append(o.desired.issued_by)
    return runs


async def test_three_replicas_split_the_fleet_and_survive_a_sigkill(broker, prefix, tmp_path: Path) -> None:
    topics = Topics(prefix)
    logs = {r: tmp_path / f"{r}.log" for r in REPLICAS}
    procs = {r: start_controller(broker.url, prefix, r, logs[r]) for r in REPLICAS}
    fleet = SimFleet(broker.url, prefix)
    fleet_task = asyncio.create_task(fleet.bus.run(fleet.on_desired))
    ticker: asyncio.Task[None] | None = None
    try:
        async with observing(broker.url, f"{prefix}/#") as obs:
            def alive() -> set[str]:
                last: dict[str, str] = {}
                for m in obs.messages:
                    if m.topic.endswith("/alive"):
                        a = decode(ControllerAlive, m.payload)
                        last[a.controller_id] = a.state
                return {r for r, state in last.items() if state == "online"}

            await eventually(lambda: alive() == set(REPLICAS), 30, "three replicas announced")
            await fleet.bus.wait_connected(10)
            ticker = asyncio.create_task(fleet.tick())

            def profiles() -> dict[str, PolicyState]:
                return {p.agent_id: p for p in (decode(PolicyState, m.payload) for m in obs.messages
                                                 if m.topic.endswith("/profile"))}

            # Every agent's curve learned up to batch 8 (1, 2, 4 measured on the way) and published.
            await eventually(lambda: all(8 in p.delay_ms_by_batch for p in profiles().values())
                             and set(profiles()) == set(AGENTS), 30, "every profile published up to batch 8")
            owners = {a: fleet.orders[a][-1].desired.issued_by for a in AGENTS}
            assert set(owners.values()) == set(REPLICAS), f"the fleet is not split over all replicas: {owners}"
            victim = max(REPLICAS, key=lambda r: sum(o == r for o in owners.values()))
            orphans = [a for a in AGENTS if owners[a] == victim]

            os.kill(procs[victim].pid, signal.SIGKILL)
            killed_at = time.monotonic()

            def adopted() -> bool:
                return all(any(o.t > killed_at and o.desired.issued_by != victim for o in fleet.orders[a])
                           for a in orphans)

            await eventually(adopted, 15, "orders for the dead replica's agents from a new owner")
            await asyncio.sleep(1.0)
    finally:
        if ticker is not None:
            ticker.cancel()
        fleet_task.cancel()
        for t in (ticker, fleet_task):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    output = {r: logs[r].read_text(errors="replace") for r in REPLICAS}
    diagnostics = "\n".join(f"--- {r}\n{output[r][-3000:]}" for r in REPLICAS)

    for agent in AGENTS:
        runs = owner_runs(fleet.orders[agent])
        assert len(runs) == len(set(runs)), f"{agent} took orders from replicas interleaved: {runs}\n{diagnostics}"
        generations = [o.desired.generation for o in fleet.orders[agent]]
        assert generations == sorted(set(generations)), f"{agent}: generations went back: {generations}"
    for agent in orphans:
        after = [o for o in fleet.orders[agent] if o.t > killed_at]
        first = after[0]
        assert first.desired.issued_by != victim and first.desired.issued_by in REPLICAS
        assert first.t - killed_at <= 5.0, f"{agent} had no owner for {first.t - killed_at:.1f} s\n{diagnostics}"
        # The profile the dead replica learned came along: straight from batch 1 to 8, no re-measuring.
        assert (first.from_batch, first.desired.batch_size) == (1, 8), (agent, first, diagnostics)
        assert f"took over {agent} (profile by" in output[first.desired.issued_by], diagnostics
    assert all(topics.prefix in m.topic for m in obs.messages)


async def test_a_second_replica_with_an_id_in_use_refuses_to_run(broker, prefix, tmp_path: Path) -> None:
    topics = Topics(prefix)
    first = start_controller(broker.url, prefix, "ctl-x", tmp_path / "first.log")
    try:
        async with observing(broker.url, topics.controller_alive("ctl-x")) as obs:
            await eventually(lambda: obs.messages, 30, "first replica announced")
            nonce = decode(ControllerAlive, obs.messages[-1].payload).nonce
            second = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "cloud_controller.cli", "--broker", broker.url, "--prefix",
                                 prefix, "--id", "ctl-x", "--http", "off", "--heartbeat-s", "0.5"],
                capture_output=True, text=True, timeout=60)
            assert second.returncode == 2, second.stderr
            errors = [line for line in second.stderr.splitlines() if line.startswith("cloud-controller: error:")]
            assert errors == ["cloud-controller: error: controller id 'ctl-x' is already in use by a live replica "
                              f"(instance {nonce}); give each replica its own --id"], second.stderr
            assert "Traceback" not in second.stderr
            assert first.poll() is None, "the replica already running was disturbed"
            await asyncio.sleep(1.0)
            last = decode(ControllerAlive, obs.messages[-1].payload)
            assert (last.nonce, last.state) == (nonce, "online"), "the first one's heartbeat is the one retained"
    finally:
        first.terminate()
        first.wait(10)


async def test_shared_hash_mode_owns_what_the_broker_routes_to_it(broker, prefix) -> None:
    """--ownership shared-hash reads telemetry through $share (meant for EMQX's hash_topic strategy);
    on its own in the group it gets, and owns, every agent."""
    from cloud_controller.controller import Controller
    from cloud_controller.policies import DeadlinePolicy

    topics = Topics(prefix)
    controller = Controller(BrokerSettings.from_url(broker.url), DeadlinePolicy(), prefix=prefix,
                            controller_id="ctl-s", ownership="shared-hash", share_group=f"g-{prefix}")
    assert controller.bus.subscriptions[0].topic_filter == f"$share/g-{prefix}/{prefix}/agents/+/telemetry"
    task = asyncio.create_task(controller.run())
    try:
        async with observing(broker.url, f"{prefix}/agents/+/desired") as obs:
            await controller.bus.wait_connected(10)
            await asyncio.sleep(0.3)
            await obs.publish(topics.status("cam1"), encode(AgentStatus(agent_id="cam1", state="online")), retain=True)
            for seq in range(1, 4):
                t = telemetry(1, 33.0, fps=FPS).model_copy(update={"agent_id": "cam1", "seq": seq})
                await obs.publish(topics.telemetry("cam1"), encode(t), qos=0)
            await eventually(lambda: obs.on(topics.desired("cam1")), 10, "an order")
        assert controller.owned == {"cam1"} and controller.counters.telemetry >= 1
        assert decode(DesiredState, obs.on(topics.desired("cam1"))[0]).issued_by == "ctl-s"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
