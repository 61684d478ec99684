"""The controller: telemetry in (shared subscription), policy, desired state out (retained)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud_controller.policies import BatchPolicy, Decision
from cloud_controller.view import AgentView, PendingChange
from mqtt_bus import BrokerSettings, IncomingMessage, MqttBus, Subscription
from schemas import (
    AgentEvent,
    AgentStatus,
    AgentTopic,
    DesiredState,
    PayloadError,
    Telemetry,
    TopicError,
    Topics,
    decode,
    encode,
)

log = logging.getLogger(__name__)

DecisionListener = Callable[[AgentView, DesiredState, Decision], None]
EventListener = Callable[[AgentEvent], None]


@dataclass
class ControllerCounters:
    telemetry: int = 0
    statuses: int = 0
    events: int = 0
    rejected: int = 0
    decisions: int = 0
    publish_failed: int = 0


class Controller:
    def __init__(
        self,
        broker: BrokerSettings,
        policy: BatchPolicy,
        prefix: str = "edgebatch",
        controller_id: str = "controller-1",
        share_group: str = "edgebatch-controllers",
    ) -> None:
        self.topics = Topics(prefix)
        self.policy = policy
        self.controller_id = controller_id
        self.agents: dict[str, AgentView] = {}
        self.counters = ControllerCounters()
        self.decision_listeners: list[DecisionListener] = []
        self.event_listeners: list[EventListener] = []
        t = self.topics
        self.bus = MqttBus(
            broker,
            client_id=controller_id,
            subscriptions=[
                # Telemetry is split among controller replicas; state topics are retained, and
                # retained messages are never delivered on shared subscriptions, so every replica
                # reads those in full.
                Subscription(t.shared(share_group, t.all_agents("telemetry")), qos=0),
                Subscription(t.all_agents("status"), qos=1),
                Subscription(t.all_agents("desired"), qos=1),
                Subscription(t.all_agents("events"), qos=1),
            ],
        )

    def view(self, agent_id: str) -> AgentView:
        v = self.agents.get(agent_id)
        if v is None:
            v = self.agents[agent_id] = AgentView(agent_id)
        return v

    async def handle(self, message: IncomingMessage) -> None:
        try:
            topic = self.topics.parse(message.topic)
        except TopicError:
            self.counters.rejected += 1
            return
        if not isinstance(topic, AgentTopic) or not message.payload:
            return
        try:
            if topic.channel == "telemetry":
                await self.on_telemetry(topic.agent_id, decode(Telemetry, message.payload))
            elif topic.channel == "status":
                self.on_status(topic.agent_id, decode(AgentStatus, message.payload))
            elif topic.channel == "desired":
                desired = decode(DesiredState, message.payload)
                view = self.view(topic.agent_id)
                view.desired_generation = max(view.desired_generation, desired.generation)
            elif topic.channel == "events":
                event = decode(AgentEvent, message.payload)
                self.counters.events += 1
                for listener in self.event_listeners:
                    listener(event)
        except PayloadError as exc:
            self.counters.rejected += 1
            log.warning("dropped %s from %s: %s", topic.channel, topic.agent_id, exc)

    def on_status(self, agent_id: str, status: AgentStatus) -> None:
        if status.agent_id != agent_id:
            self.counters.rejected += 1
            return
        self.counters.statuses += 1
        view = self.view(agent_id)
        view.status = status
        view.online = status.state == "online"

    async def on_telemetry(self, agent_id: str, telemetry: Telemetry) -> None:
        if telemetry.agent_id != agent_id:
            self.counters.rejected += 1
            return
        self.counters.telemetry += 1
        view = self.view(agent_id)
        view.telemetry = telemetry
        view.online = True
        if not view.settled(telemetry):
            return
        decision = self.policy.decide(telemetry)
        if decision is None or decision.batch_size == telemetry.batch_size:
            return
        await self.order(view, decision)

    async def order(self, view: AgentView, decision: Decision) -> DesiredState:
        desired = DesiredState(
            agent_id=view.agent_id,
            generation=view.next_generation(),
            batch_size=decision.batch_size,
            reason=f"{self.policy.name}: {decision.reason}",
            issued_by=self.controller_id,
        )
        view.desired_generation = desired.generation
        view.pending = PendingChange(desired.generation, decision.batch_size)
        view.decisions.append((time.time(), decision.batch_size, decision))
        self.counters.decisions += 1
        for listener in self.decision_listeners:
            listener(view, desired, decision)
        if not await self.bus.publish(self.topics.desired(view.agent_id), encode(desired), qos=1, retain=True):
            self.counters.publish_failed += 1
        return desired

    async def run(self) -> None:
        await self.bus.run(self.handle)

    def fleet_lines(self) -> list[str]:
        lines = []
        for v in sorted(self.agents.values(), key=lambda a: a.agent_id):
            t = v.telemetry
            figures = "no telemetry yet"
            if t is not None:
                figures = (f"batch {t.batch_size}, {t.fps_out:.1f} fps out, "
                           f"batch delay {t.latency['batch'].mean_ms:.0f} ms, "
                           f"dropped {t.dropped}, missed {t.deadline_misses}")
            lines.append(f"{v.agent_id}: {'online' if v.online else 'offline'}, {figures}")
        return lines

