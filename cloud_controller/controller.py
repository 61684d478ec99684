"""The controller: telemetry in (shared subscription), policy, desired state out (retained)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cloud_controller.policies import BatchPolicy, Decision
from cloud_controller.view import AgentView, PendingChange, Refusal
from mqtt_bus import BrokerSettings, IncomingMessage, MqttBus, Subscription
from schemas import (
    AgentEvent,
    AgentStatus,
    AgentTopic,
    DesiredState,
    OrderOutcome,
    PayloadError,
    Telemetry,
    TopicError,
    Topics,
    decode,
    encode,
)

log = logging.getLogger(__name__)

_OUTCOME_OF_EVENT: dict[str, Literal["applied", "refused", "superseded", "stale"]] = {
    "desired_applied": "applied",
    "desired_refused": "refused",
    "desired_superseded": "superseded",
    "desired_ignored": "stale",
}

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
    refusals: int = 0  # orders an agent refused (each generation once)
    orders_timed_out: int = 0  # pending orders that got no outcome in time
    held_outside_limits: int = 0  # decisions for a size the agent cannot serve or refused lately


class Controller:
    def __init__(
        self,
        broker: BrokerSettings,
        policy: BatchPolicy,
        prefix: str = "edgebatch",
        controller_id: str = "controller-1",
        share_group: str = "edgebatch-controllers",
        pending_timeout_s: float = 120.0,
        refusal_hold_s: float = 600.0,
    ) -> None:
        self.topics = Topics(prefix)
        self.policy = policy
        self.controller_id = controller_id
        self.agents: dict[str, AgentView] = {}
        self.counters = ControllerCounters()
        self.decision_listeners: list[DecisionListener] = []
        self.event_listeners: list[EventListener] = []
        self.pending_timeout_s = pending_timeout_s  # an order with no outcome by then is given up on
        self.refusal_hold_s = refusal_hold_s  # a refused size is not ordered again for this long
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
                self.on_event(topic.agent_id, decode(AgentEvent, message.payload))
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
        if status.last_order is not None:  # retained: a controller that connects later learns it here
            self.on_order_outcome(view, status.last_order)

    async def on_telemetry(self, agent_id: str, telemetry: Telemetry) -> None:
        if telemetry.agent_id != agent_id:
            self.counters.rejected += 1
            return
        self.counters.telemetry += 1
        view = self.view(agent_id)
        view.telemetry = telemetry
        view.online = True
        self._expire_pending(view)
        if not view.settled(telemetry):
            return
        limits = view.limits(time.monotonic())
        decision = self.policy.decide(telemetry, limits)
        if decision is None or decision.batch_size == telemetry.batch_size:
            return
        if not limits.allows(decision.batch_size):
            self.counters.held_outside_limits += 1
            log.info("%s: holding; %s wanted batch %d, outside what the agent serves (%s)", view.agent_id,
                     self.policy.name, decision.batch_size, limits)
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

    # --- order outcomes (the agent's reconciler reports one per generation) ---------------

    def on_event(self, agent_id: str, event: AgentEvent) -> None:
        if event.agent_id != agent_id:
            self.counters.rejected += 1
            return
        self.counters.events += 1
        for listener in self.event_listeners:
            listener(event)
        outcome = _OUTCOME_OF_EVENT.get(event.kind)
        if outcome is None or event.generation is None:
            return
        view = self.view(agent_id)
        if outcome == "stale":
            # The agent had already passed this generation: an order of ours it will never apply.
            if view.pending is not None and view.pending.generation == event.generation:
                log.warning("%s: generation %d ignored as stale by the agent; not waiting for it", agent_id,
                            event.generation)
                view.pending = None
            return
        ordered = view.pending.batch_size if view.pending and view.pending.generation == event.generation else None
        self.on_order_outcome(view, OrderOutcome(generation=event.generation, outcome=outcome, refusal=event.refusal,
                                                 detail=event.detail, batch_size=ordered, ts=event.ts))

    def on_order_outcome(self, view: AgentView, outcome: OrderOutcome) -> None:
        """Act once per generation: a refusal or a supersession ends the wait, and a refused size is held off."""
        last = view.last_outcome
        if last is not None and last.generation > outcome.generation:
            return
        if last is not None and last.generation == outcome.generation and (
                last.batch_size is not None or outcome.batch_size is None):
            return  # seen already (the event, then the status); only a size the event lacked is news
        view.last_outcome = outcome
        pending = view.pending
        if pending is not None and pending.generation <= outcome.generation and outcome.outcome != "applied":
            view.pending = None  # nothing will take effect: decide again on the next settled window
        if outcome.outcome != "refused":
            return  # applied: the pending change clears when telemetry shows the new size (cool-down)
        size = outcome.batch_size or (pending.batch_size if pending and pending.generation == outcome.generation
                                      else None)
        if size is None:
            return  # the status that follows names the size
        self.counters.refusals += 1
        log.warning("%s refused generation %d (batch %s): %s: %s", view.agent_id, outcome.generation, size,
                    outcome.refusal, outcome.detail)
        reason = outcome.refusal or "unknown"
        left = self.refusal_hold_s - max(0.0, time.time() - outcome.ts)  # a retained refusal may be old
        if left <= 0:
            return
        view.refused[size] = Refusal(outcome.generation, reason, time.monotonic() + left)
        self.policy.refused(view.agent_id, size, reason)

    def _expire_pending(self, view: AgentView) -> None:
        """An order that never gets an outcome (agent restarted, message lost) is not waited on forever."""
        pending = view.pending
        if pending is not None and time.monotonic() - pending.issued_at > self.pending_timeout_s:
            self.counters.orders_timed_out += 1
            log.warning("%s: no outcome for generation %d (batch %d) in %.0f s; deciding again", view.agent_id,
                        pending.generation, pending.batch_size, self.pending_timeout_s)
            view.pending = None

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
            lines.append(f"{v.agent_id}: {'online' if v.online else 'offline'}, {figures}{order_summary(v)}")
        return lines


def order_summary(view: AgentView) -> str:
    """The agent's verdict on the last order, for the fleet views: '; last order: gen 7 refused (no_artifact)'."""
    o = view.last_outcome
    if o is None:
        return ""
    size = f" batch {o.batch_size}" if o.batch_size else ""
    return f"; last order: gen {o.generation}{size} {o.outcome}" + (f" ({o.refusal})" if o.refusal else "")
