"""The controller: telemetry in, policy, desired state out (retained); replicas split the fleet by agent.

Replicas (``ownership="hrw"``, what ``cloud-controller`` runs): every replica reads every agent's telemetry on a plain
subscription, and handles only the agents it owns: ``ownership.owner(agent, live replicas)``, the
live set coming from the replicas' heartbeats (``replicas.Membership``). The owner test is string
work on the topic and a memoised hash, done *before* the payload is decoded, so a replica spends
almost nothing on the others' agents. An agent is taken over only while the membership view is
stable (longer than a heartbeat may be late) and given up the moment the view says it is someone
else's: no agent is ordered by two replicas at once, and a dead replica's agents are picked up
about ``grace_beats`` heartbeats after its last will. Orders carry ``issued_by``.

What the policy learned about an agent (``PolicyState``) is published retained on
``{p}/agents/{id}/profile`` by the owner when it changes (at most every ``profile_interval_s`` per
agent, and once more when it gives the agent up); every replica keeps the latest payload of each, and
the one that takes an agent over imports it before its first decision. So a profile survives the
death or restart of the replica that learned it.

``ownership="shared-hash"``: telemetry through an MQTT v5 shared subscription, every agent received
is owned. Only correct on a broker that shares by topic hash (EMQX ``hash_topic``), never on
mosquitto, which shares message by message. ``ownership="single"`` (the constructor's default, for
code that embeds one controller: the demo, tests, simulators): this process owns every agent.

Replica ids must be unique: a second live instance with an id in use refuses to run
(``ReplicaIdClash``); the MQTT client id is the replica id plus a random nonce, so the broker never
silently kicks one instance for the other.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from cloud_controller.operator import MAX_REASON, OPERATOR, BadOrder, NotHere, Pin, UnknownAgent
from cloud_controller.ownership import OwnerMap
from cloud_controller.policies import BatchPolicy, Decision
from cloud_controller.replicas import Membership, ReplicaIdClash
from cloud_controller.view import AgentView, PendingChange, Refusal
from mqtt_bus import BrokerSettings, IncomingMessage, MqttBus, Subscription, WillMessage
from schemas import (
    MAX_PAYLOAD_BYTES,
    AgentEvent,
    AgentStatus,
    AgentTopic,
    ControllerAlive,
    ControllerTopic,
    DesiredState,
    OrderOutcome,
    PayloadError,
    PolicyState,
    Telemetry,
    TopicError,
    Topics,
    decode,
    encode,
)

log = logging.getLogger(__name__)

# Refusals that say the batch size itself cannot be served here; others (fetch_error, unknown_model, ...) are
# about the order, and holding its size off would only keep a working size out of reach.
SIZE_REFUSALS = frozenset({"no_artifact", "memory", "load_error", "no_registry"})
_OUTCOME_OF_EVENT: dict[str, Literal["applied", "refused", "superseded", "stale"]] = {
    "desired_applied": "applied",
    "desired_refused": "refused",
    "desired_superseded": "superseded",
    "desired_ignored": "stale",
}

DecisionListener = Callable[[AgentView, DesiredState, Decision], None]  # the policy's orders
DesiredListener = Callable[[AgentView, DesiredState], None]  # every order this replica gives (policy, operator)
TelemetryListener = Callable[[AgentView, Telemetry], None]  # every window handled, before the policy sees it
EventListener = Callable[[AgentEvent], None]
ExpiryListener = Callable[[str], None]  # an agent's view was forgotten
OwnershipMode = Literal["hrw", "shared-hash", "single"]
OWNERSHIP_MODES: tuple[OwnershipMode, ...] = ("hrw", "shared-hash", "single")

SHARED_HASH_RELEASE_S = 30.0  # shared-hash: an agent whose telemetry stopped coming here is given up
PROFILE_CHANGE = 0.05  # a learned delay must move by more than this share to be worth republishing


@dataclass
class ControllerCounters:
    telemetry: int = 0
    statuses: int = 0
    events: int = 0
    rejected: int = 0
    decisions: int = 0
    publish_failed: int = 0
    not_owned: int = 0  # telemetry of agents another replica owns: skipped before decoding
    takeovers: int = 0
    releases: int = 0
    profiles_imported: int = 0
    profiles_published: int = 0
    views_expired: int = 0
    refusals: int = 0  # orders an agent refused (each generation once)
    orders_timed_out: int = 0  # pending orders that got no outcome in time
    held_outside_limits: int = 0  # decisions for a size the agent cannot serve or refused lately
    held_no_status: int = 0  # windows of agent ids that never announced themselves: not decided on
    held_pinned: int = 0  # windows of agents an operator pinned: not decided on
    operator_orders: int = 0  # pins and releases published


class Controller:
    def __init__(
        self,
        broker: BrokerSettings,
        policy: BatchPolicy,
        prefix: str = "edgebatch",
        controller_id: str = "controller-1",
        share_group: str = "edgebatch-controllers",
        *,
        ownership: OwnershipMode = "single",
        heartbeat_s: float = 1.0,
        miss_beats: int = 3,
        grace_beats: int = 4,
        profile_interval_s: float = 2.0,
        view_ttl_s: float = 300.0,
        max_queued_incoming: int = 50_000,
        pending_timeout_s: float = 120.0,
        refusal_hold_s: float = 600.0,
    ) -> None:
        if ownership not in OWNERSHIP_MODES:
            raise ValueError(f"ownership {ownership!r} must be one of {', '.join(OWNERSHIP_MODES)}")
        self.topics = Topics(prefix)
        self.policy = policy
        self.controller_id = controller_id
        self.ownership: OwnershipMode = ownership
        self.heartbeat_s = heartbeat_s
        self.profile_interval_s = profile_interval_s
        self.view_ttl_s = view_ttl_s
        self.agents: dict[str, AgentView] = {}
        self.counters = ControllerCounters()
        self.decision_listeners: list[DecisionListener] = []
        self.desired_listeners: list[DesiredListener] = []
        self.telemetry_listeners: list[TelemetryListener] = []
        self.event_listeners: list[EventListener] = []
        self.expiry_listeners: list[ExpiryListener] = []
        self.pins: dict[str, Pin] = {}  # agents an operator holds at a batch size (this replica's own)
        self.nonce = secrets.token_hex(8)
        self.started = time.time()
        self.membership = Membership(controller_id, self.nonce, self.started, miss_beats, grace_beats)
        self.owned: set[str] = set()  # agents this replica decides for, now
        self._owner = OwnerMap(())
        self._profiles: dict[str, bytes] = {}  # latest retained profile payload of every agent, undecoded
        self._profile_sent: dict[str, tuple[float, PolicyState | None]] = {}
        self._own_beat_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clash: asyncio.Future[None] | None = None
        self._leaving = False
        self._last_window: dict[str, float] = {}  # shared-hash: when each held agent's telemetry last came
        self.pending_timeout_s = pending_timeout_s  # an order with no outcome by then is given up on
        self.refusal_hold_s = refusal_hold_s  # a refused size is not ordered again for this long
        t = self.topics
        telemetry = t.all_agents("telemetry")
        self.bus = MqttBus(
            broker,
            client_id=f"{controller_id}-{self.nonce}",  # unique: the broker never kicks a namesake
            subscriptions=[
                Subscription(t.shared(share_group, telemetry) if ownership == "shared-hash" else telemetry, qos=0),
                Subscription(t.all_agents("status"), qos=1),
                Subscription(t.all_agents("desired"), qos=1),
                Subscription(t.all_agents("events"), qos=1),
                Subscription(t.all_agents("profile"), qos=1),
                Subscription(t.all_controllers_alive(), qos=1),
            ],
            will=WillMessage(t.controller_alive(controller_id), encode(self._alive("offline")), qos=1, retain=True),
            on_connect=self._on_connect,
            max_queued_incoming=max_queued_incoming,
        )

    def _alive(self, state: Literal["online", "offline"]) -> ControllerAlive:
        return ControllerAlive(controller_id=self.controller_id, nonce=self.nonce, state=state, started=self.started,
                               heartbeat_s=self.heartbeat_s, ownership=self.ownership)

    def view(self, agent_id: str) -> AgentView:
        v = self.agents.get(agent_id)
        if v is None:
            v = self.agents[agent_id] = AgentView(agent_id)
        v.last_seen = time.monotonic()
        return v

    # --- messages in ---------------------------------------------------------------------------

    async def handle(self, message: IncomingMessage) -> None:
        agent_id = self.topics.telemetry_agent_id(message.topic)
        if agent_id is not None:  # the hot path: decide on ownership before decoding anything
            if not message.payload:
                return
            if not self.may_handle(agent_id):
                self.counters.not_owned += 1
                return
            try:
                telemetry = decode(Telemetry, message.payload)
            except PayloadError as exc:
                self.counters.rejected += 1
                log.warning("dropped telemetry from %s: %s", agent_id, exc)
                return
            if telemetry.agent_id == agent_id and agent_id not in self.owned:
                self._take_over(agent_id, telemetry)
            if self.ownership == "shared-hash":
                self._last_window[agent_id] = time.monotonic()
            await self.on_telemetry(agent_id, telemetry)
            return
        try:
            topic = self.topics.parse(message.topic)
        except TopicError:
            self.counters.rejected += 1
            return
        if not message.payload:
            return
        try:
            if isinstance(topic, ControllerTopic):
                self.on_alive(decode(ControllerAlive, message.payload), message.retain)
            elif not isinstance(topic, AgentTopic):
                return
            elif topic.channel == "status":
                self.on_status(topic.agent_id, decode(AgentStatus, message.payload))
            elif topic.channel == "desired":
                self.on_desired(topic.agent_id, decode(DesiredState, message.payload))
            elif topic.channel == "profile":
                if len(message.payload) <= MAX_PAYLOAD_BYTES:
                    self._profiles[topic.agent_id] = message.payload  # decoded only by a replica taking it over
            elif topic.channel == "events":
                self.on_event(topic.agent_id, decode(AgentEvent, message.payload))
        except PayloadError as exc:
            self.counters.rejected += 1
            log.warning("dropped %s: %s", message.topic, exc)

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

    def on_desired(self, agent_id: str, desired: DesiredState) -> None:
        if desired.agent_id != agent_id:
            self.counters.rejected += 1
            return
        view = self.view(agent_id)
        view.desired_generation = max(view.desired_generation, desired.generation)
        if view.last_desired is None or desired.generation >= view.last_desired.generation:
            view.last_desired = desired

    async def on_telemetry(self, agent_id: str, telemetry: Telemetry) -> None:
        """One telemetry window of an agent this replica handles (callers in-process: any agent)."""
        if telemetry.agent_id != agent_id:
            self.counters.rejected += 1
            return
        self.counters.telemetry += 1
        view = self.view(agent_id)
        view.telemetry = telemetry
        view.online = True
        if view.status is not None:  # ids that never announced themselves fill no history
            for listener in self.telemetry_listeners:
                listener(view, telemetry)
        self._expire_pending(view)
        if not view.settled(telemetry):
            return
        if view.status is None:
            # A real agent announces itself (retained status, on every connect) before its telemetry;
            # an id that only ever sent telemetry gets no order, so no retained desired state is left
            # behind for ids that never came online (its view still expires like any other).
            self.counters.held_no_status += 1
            return
        if agent_id in self.pins:
            self.counters.held_pinned += 1
            return
        limits = view.limits(time.monotonic())
        decision = self.policy.decide(telemetry, limits)
        if agent_id in self.owned:
            self._publish_profile(agent_id)
        if decision is None or decision.batch_size == telemetry.batch_size:
            return
        if not limits.allows(decision.batch_size):
            self.counters.held_outside_limits += 1
            log.info("%s: holding; %s wanted batch %d, outside what the agent serves (%s)", view.agent_id,
                     self.policy.name, decision.batch_size, limits)
            return
        await self.order(view, decision)

    # --- ownership ---------------------------------------------------------------------------

    def owns(self, agent_id: str) -> bool:
        """Whether this replica decides for the agent now. Code reacting to an agent's events (which
        every replica reads) must act only where this is true."""
        return self.ownership == "single" or agent_id in self.owned

    def may_handle(self, agent_id: str) -> bool:
        if self._leaving:
            return False
        if agent_id in self.owned or self.ownership != "hrw":
            return True  # owned is pruned at every change of the live set; the other modes own what they get
        return self.membership.stable and self._owner(agent_id) == self.controller_id

    def on_alive(self, alive: ControllerAlive, retained: bool) -> None:
        if alive.controller_id == self.controller_id and alive.nonce == self.nonce and not retained:
            self._own_beat_at = time.monotonic()
        try:
            changed = self.membership.observe(alive, retained)
        except ReplicaIdClash as exc:
            self._release_all()
            if self._clash is not None and not self._clash.done():
                self._clash.set_exception(exc)
            return
        if changed:
            self._on_view_change()

    def _on_view_change(self) -> None:
        m = self.membership
        self._owner = OwnerMap(m.live)
        if self.ownership == "hrw":
            for agent_id in [a for a in self.owned if self._owner(a) != self.controller_id]:
                self._release(agent_id)
            if m.stable:  # pins kept across a reconnect for agents that are now another replica's
                for agent_id in [a for a in self.pins if a not in self.owned and self._owner(a) != self.controller_id]:
                    log.warning("%s: pinned here, now another replica's: the pin is dropped", agent_id)
                    del self.pins[agent_id]
        log.info("controller %s: live replicas %s (epoch %d); holding %d agents", self.controller_id,
                 ", ".join(m.live) or "none", m.epoch, len(self.owned))

    def _take_over(self, agent_id: str, latest: Telemetry) -> None:
        self.owned.add(agent_id)
        self.counters.takeovers += 1
        view = self.view(agent_id)
        view.adopt_pending(latest)
        source = "no profile"
        payload = self._profiles.get(agent_id)
        if payload is not None:
            try:
                state = decode(PolicyState, payload)
            except PayloadError as exc:
                source = f"unreadable profile ({exc})"
            else:
                if state.agent_id == agent_id:
                    self.policy.import_state(state)
                    self.counters.profiles_imported += 1
                    self._profile_sent[agent_id] = (time.monotonic(), state)
                    source = (f"profile by {state.controller_id or '?'}: batch sizes "
                              f"{sorted(state.delay_ms_by_batch) or '-'}")
        log.info("controller %s: took over %s (%s)", self.controller_id, agent_id, source)

    def _release(self, agent_id: str, keep_pin: bool = False) -> None:
        """Give the agent up: hand over what was learned (publish it now), then forget it. ``keep_pin``:
        a reconnect, not a move; if the agent turns out to be this replica's again, the pin holds."""
        if agent_id not in self.owned:
            return
        self._publish_profile(agent_id, force=True)
        self.owned.discard(agent_id)
        self.policy.forget(agent_id)
        self._profile_sent.pop(agent_id, None)
        pin = None if keep_pin else self.pins.pop(agent_id, None)
        if pin is not None:  # the order stays retained; the next owner's policy decides from there
            log.warning("%s: pinned at batch %d, now given up: the pin is dropped", agent_id, pin.batch_size)
        view = self.agents.get(agent_id)
        if view is not None:
            view.pending = None
        self.counters.releases += 1

    def _release_all(self, keep_pins: bool = False) -> None:
        for agent_id in list(self.owned):
            self._release(agent_id, keep_pin=keep_pins)

    # --- messages out ------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run a publish beside the message loop: waiting for a PUBACK must not stall the next message."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        ok = await self.bus.publish(topic, payload, qos=qos, retain=retain)
        if not ok:
            self.counters.publish_failed += 1
        return ok

    async def order(self, view: AgentView, decision: Decision) -> DesiredState:
        """Publish the decision as the agent's desired state (retained). Returns once it is handed to
        the bus; the broker's acknowledgement is awaited beside the message loop."""
        desired = self._desire(view, decision.batch_size, f"{self.policy.name}: {decision.reason}")
        view.decisions.append((time.time(), decision.batch_size, decision))
        self.counters.decisions += 1
        for listener in self.decision_listeners:
            listener(view, desired, decision)
        self._send(view, desired)
        return desired

    def _desire(self, view: AgentView, batch_size: int | None, reason: str) -> DesiredState:
        """The next generation of the agent's desired state, taken as this replica's latest order."""
        desired = DesiredState(agent_id=view.agent_id, generation=view.next_generation(), batch_size=batch_size,
                               reason=reason, issued_by=self.controller_id)
        view.desired_generation = desired.generation
        view.last_desired = desired
        view.pending = PendingChange(desired.generation, batch_size) if batch_size is not None else None
        return desired

    def _send(self, view: AgentView, desired: DesiredState) -> None:
        for listener in self.desired_listeners:
            listener(view, desired)
        self._spawn(self._publish(self.topics.desired(view.agent_id), encode(desired), 1, True),
                    f"controller[{self.controller_id}].order[{view.agent_id}]")

    # --- operator orders -----------------------------------------------------------------------

    def _operable(self, agent_id: str, reason: str) -> AgentView:
        view = self.agents.get(agent_id)
        if view is None or view.status is None:  # an id that never announced itself gets no order (on_telemetry)
            raise UnknownAgent(agent_id, f"no agent {agent_id!r} here" if view is None
                               else f"{agent_id!r} never announced itself (no status): not an agent to order")
        if not self.owns(agent_id):
            owner = self._owner(agent_id) if self.ownership == "hrw" else None
            if owner == self.controller_id:
                raise NotHere(agent_id, f"{agent_id} is not held by {self.controller_id} yet (taken over on its "
                              "next telemetry window): try again in a moment")
            raise NotHere(agent_id, f"{agent_id} is decided by replica {owner or 'another replica'}, not "
                          f"{self.controller_id}: give the order there")
        if len(reason) > MAX_REASON:
            raise BadOrder(agent_id, f"the reason is {len(reason)} characters; at most {MAX_REASON}")
        return view

    def pin(self, agent_id: str, batch_size: int, reason: str = "") -> DesiredState:
        """An operator's order: serve ``batch_size`` and no policy decisions until ``unpin``. Published
        retained like the policy's orders, reason ``operator: pinned at batch N: ...``. The pin lives in
        this replica: it is dropped (the order stays) if the agent moves to another replica or this one
        restarts. A size the agent refused lately may be pinned (the operator may know better; the agent
        refuses again if it still cannot)."""
        view = self._operable(agent_id, reason)
        if not 1 <= batch_size <= 1024:
            raise BadOrder(agent_id, f"batch size {batch_size} is out of bounds (1 to 1024)")
        servable = view.limits(time.monotonic()).servable_batch_sizes
        if servable is not None and batch_size not in servable:
            raise BadOrder(agent_id, f"{agent_id} cannot serve batch {batch_size}: it serves "
                           f"{', '.join(map(str, sorted(servable)))}")
        text = f"{OPERATOR}: pinned at batch {batch_size}" + (f": {reason}" if reason else "")
        desired = self._desire(view, batch_size, text)
        self.pins[agent_id] = Pin(batch_size, reason, desired.ts, desired.generation)
        view.decisions.append((time.time(), batch_size, Decision(batch_size, text)))
        self.counters.operator_orders += 1
        log.info("%s: gen %d pinned at batch %d by an operator: %s", agent_id, desired.generation, batch_size,
                 reason or "no reason given")
        self._send(view, desired)
        return desired

    def unpin(self, agent_id: str, reason: str = "") -> DesiredState:
        """Hand a pinned agent back to the policy. Published as a desired state that keeps the batch size
        (``batch_size`` None) with the reason, so the agent's retained order says who holds it now; the
        policy decides again from the next settled window."""
        view = self._operable(agent_id, reason)
        if agent_id not in self.pins:
            raise NotHere(agent_id, f"{agent_id} is not pinned on {self.controller_id}")
        text = f"{OPERATOR}: released to the policy ({self.policy.name})" + (f": {reason}" if reason else "")
        desired = self._desire(view, None, text)
        del self.pins[agent_id]
        self.counters.operator_orders += 1
        log.info("%s: gen %d released to %s by an operator: %s", agent_id, desired.generation, self.policy.name,
                 reason or "no reason given")
        self._send(view, desired)
        return desired

    def _publish_profile(self, agent_id: str, force: bool = False) -> None:
        """Publish what the policy learned about the agent if it changed; at most every
        ``profile_interval_s`` unless ``force`` (handing the agent over)."""
        now = time.monotonic()
        checked, sent = self._profile_sent.get(agent_id, (-1e18, None))
        if not force and now - checked < self.profile_interval_s:
            return
        state = self.policy.export_state(agent_id)
        self._profile_sent[agent_id] = (now, sent)
        if state is None or _same_profile(state, sent):
            return
        state = state.model_copy(update={"controller_id": self.controller_id, "ts": time.time()})
        self._profile_sent[agent_id] = (now, state)
        payload = encode(state)
        self._profiles[agent_id] = payload
        self.counters.profiles_published += 1
        if _loop_running():  # else an in-process caller without a bus: it stays in _profiles
            self._spawn(self._publish(self.topics.profile(agent_id), payload, 1, True),
                        f"controller[{self.controller_id}].profile[{agent_id}]")

    # --- life cycle ----------------------------------------------------------------------------

    async def _on_connect(self) -> None:
        """A new broker session: whatever was heard on the old one may be stale; start over."""
        self.membership.reset()
        self._release_all(keep_pins=True)  # an operator's pin outlives a reconnect; a move drops it
        self._on_view_change()

    async def _heartbeats(self) -> None:
        topic = self.topics.controller_alive(self.controller_id)
        m = self.membership
        sweep_every = max(1, int(30 / self.heartbeat_s))
        n = 0
        while True:
            await self.bus.connected.wait()
            session = self.bus.counters.connects
            if not m.announced:
                # Listen before announcing: a live namesake's heartbeats would arrive within this window.
                # Not again after a reconnect: the id is ours, and a namesake that started later yields.
                await asyncio.sleep(1.5 * self.heartbeat_s)
            first_of_session = True
            while self.bus.connected.is_set() and self.bus.counters.connects == session:
                published = await self.bus.publish(topic, encode(self._alive("online")), qos=1, retain=True)
                if published and first_of_session:
                    m.announced = True
                    first_of_session = False
                    self._own_beat_at = time.monotonic()
                # Our beats stopped coming back: hold nothing before the others could take over
                # (they would, miss_beats + grace_beats after our last beat reached them).
                late = time.monotonic() - self._own_beat_at
                if m.announced and late > (m.miss_beats + m.grace_beats - 1) * self.heartbeat_s and m.cut_off():
                    self._on_view_change()
                n += 1
                if n % sweep_every == 0:
                    self.expire_views()
                if self.ownership == "shared-hash":
                    self._release_unrouted()
                await asyncio.sleep(self.heartbeat_s)

    def _release_unrouted(self) -> None:
        """shared-hash: the broker decides who gets an agent; one whose telemetry stopped coming here
        for 30 s was moved to another member (or went away): give it up. No windows reach this replica
        for it any more, so it decides nothing for it meanwhile."""
        cutoff = time.monotonic() - SHARED_HASH_RELEASE_S
        for agent_id in [a for a in self.owned if self._last_window.get(a, 0.0) < cutoff]:
            self._release(agent_id)
            self._last_window.pop(agent_id, None)

    def expire_views(self, now: float | None = None) -> int:
        """Forget agents not heard of for ``view_ttl_s`` that are offline (or never came online), and
        agents this replica holds that went silent: per-agent state stays bounded by the live fleet."""
        now = time.monotonic() if now is None else now
        gone = [a for a, v in self.agents.items() if now - v.last_seen > self.view_ttl_s
                and (not v.online or a in self.owned)]
        for agent_id in gone:
            self._release(agent_id)
            del self.agents[agent_id]
            self._profiles.pop(agent_id, None)
            self.pins.pop(agent_id, None)
            for listener in self.expiry_listeners:
                listener(agent_id)
        for agent_id in [a for a in self._profiles if a not in self.agents]:
            del self._profiles[agent_id]  # a retained profile of an agent that is not around
        self.counters.views_expired += len(gone)
        return len(gone)

    # --- order outcomes (the agent's reconciler reports one per generation) ---------------

    def on_event(self, agent_id: str, event: AgentEvent) -> None:
        if event.agent_id != agent_id:
            self.counters.rejected += 1
            return
        self.counters.events += 1
        for listener in self.event_listeners:
            listener(event)
        outcome = _OUTCOME_OF_EVENT.get(event.kind)
        if outcome is None or event.generation is None or event.generation < 1:
            return  # not an order's outcome (generations start at 1)
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
        serving = view.status.serving.batch_size if view.status and view.status.serving else None
        if reason not in SIZE_REFUSALS or size == serving:
            return  # about the order (a registry hiccup, a wrong model), not about the size: nothing to hold off
        left = self.refusal_hold_s - max(0.0, time.time() - outcome.ts)  # a retained refusal may be old
        if left <= 0:
            return
        view.refused[size] = Refusal(outcome.generation, reason, time.monotonic() + left)
        if self.owns(view.agent_id):  # every replica keeps the view (a successor needs it); one policy learns
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
        """Serve until cancelled; raises ReplicaIdClash if another live instance has this id."""
        self._clash = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.bus.run(self.handle), name=f"controller[{self.controller_id}].bus")
                tg.create_task(self._heartbeats(), name=f"controller[{self.controller_id}].heartbeats")
                await self._clash
        except* ReplicaIdClash as group:
            raise group.exceptions[0] from None

    async def goodbye(self, timeout_s: float = 3.0) -> None:
        """Leave cleanly (a clean disconnect fires no last will): hand over every profile and tell the
        other replicas at once, so they take the agents over without waiting out missed heartbeats."""
        self._leaving = True
        self._release_all()
        pending = list(self._tasks)
        if self.bus.connected.is_set():
            pending.append(asyncio.ensure_future(self.bus.publish(
                self.topics.controller_alive(self.controller_id), encode(self._alive("offline")), qos=1,
                retain=True)))
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    # --- fleet view ----------------------------------------------------------------------------

    def fleet_lines(self) -> list[str]:
        lines = []
        for v in sorted(self.agents.values(), key=lambda a: a.agent_id):
            t = v.telemetry
            figures = "no telemetry yet" if self.owns(v.agent_id) else "figures with the replica that owns it"
            if t is not None:
                batch = t.latency.get("batch")
                delay = f"batch delay {batch.mean_ms:.0f} ms" if batch is not None else "no batch delay"
                figures = (f"batch {t.batch_size}, {t.fps_out:.1f} fps out, {delay}, "
                           f"dropped {t.dropped}, missed {t.deadline_misses}")
            lines.append(f"{v.agent_id}: {'online' if v.online else 'offline'}, {figures}{order_summary(v)}")
        return lines


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _same_profile(a: PolicyState, b: PolicyState | None) -> bool:
    """Nothing worth republishing: same policy, sizes and refusals, every delay within PROFILE_CHANGE."""
    if b is None or a.policy != b.policy or set(a.refused_batch_sizes) != set(b.refused_batch_sizes):
        return False
    if a.delay_ms_by_batch.keys() != b.delay_ms_by_batch.keys():
        return False
    return all(abs(d - b.delay_ms_by_batch[s]) <= PROFILE_CHANGE * max(b.delay_ms_by_batch[s], 1e-3)
               for s, d in a.delay_ms_by_batch.items())
def order_summary(view: AgentView) -> str:
    """The agent's verdict on the last order, for the fleet views: '; last order: gen 7 refused (no_artifact)'."""
    o = view.last_outcome
    if o is None:
        return ""
    size = f" batch {o.batch_size}" if o.batch_size else ""
    return f"; last order: gen {o.generation}{size} {o.outcome}" + (f" ({o.refusal})" if o.refusal else "")
