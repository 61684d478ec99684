"""The controller's message path without a broker: ownership before decoding, profile hand-over,
bounded per-agent state, and telemetry without every latency key."""

from __future__ import annotations

from cloud_controller.controller import Controller
from cloud_controller.metrics import FleetMetrics
from cloud_controller.policies import DeadlinePolicy
from cloud_controller.web import fleet_json, fleet_page
from mqtt_bus import BrokerSettings, IncomingMessage
from schemas import AgentStatus, ControllerAlive, DesiredState, PolicyState, Topics, encode
from tests.test_kum2022 import telemetry

T = Topics("edgebatch")


def controller(**kw) -> Controller:  # type: ignore[no-untyped-def]
    return Controller(BrokerSettings(port=9), DeadlinePolicy(), controller_id="ctl-a", **kw)


def window(agent: str, batch: int = 1, delay: float = 33.0, **update) -> IncomingMessage:  # type: ignore[no-untyped-def]
    t = telemetry(batch, delay, fps=30.0).model_copy(update={"agent_id": agent, **update})
    return IncomingMessage(T.telemetry(agent), encode(t), False)


def online(agent: str) -> AgentStatus:
    return AgentStatus(agent_id=agent, state="online")


async def test_an_id_that_never_announced_itself_gets_no_order() -> None:
    """Telemetry alone (no retained status: not an agent that connected as agents do) is shown but
    never decided on, so a thousand made-up ids leave no retained orders behind."""
    c = controller(ownership="single")
    for i in range(50):
        await c.handle(window(f"ghost{i}", delay=40.0))  # each would be ordered up if it were an agent
    assert c.counters.decisions == 0 and c.counters.held_no_status == 50
    assert not any(v.decisions for v in c.agents.values())
    c.on_status("ghost7", online("ghost7"))  # it announces itself: now it is an agent
    await c.handle(window("ghost7", delay=40.0))
    assert c.counters.decisions == 1 and [d[1] for d in c.agents["ghost7"].decisions] == [2]


def beat(c: Controller, times: int) -> None:
    for _ in range(times):
        alive = ControllerAlive(controller_id="ctl-a", nonce=c.nonce, state="online", started=c.started,
                                heartbeat_s=1.0, ownership="hrw")
        c.on_alive(alive, retained=False)


async def test_telemetry_of_agents_it_does_not_own_is_skipped_before_decoding() -> None:
    c = controller(ownership="hrw")
    await c.handle(IncomingMessage(T.telemetry("cam1"), b"{not json", False))
    assert c.counters.not_owned == 1 and c.counters.rejected == 0 and not c.agents
    beat(c, 5)  # alone and stable: it owns every agent
    assert c.membership.stable and c.membership.live == ("ctl-a",)
    await c.handle(IncomingMessage(T.telemetry("cam1"), b"{not json", False))
    assert c.counters.rejected == 1
    c.on_status("cam1", online("cam1"))
    await c.handle(window("cam1", delay=40.0))  # 120 % of the frame budget at batch 1: it must move
    assert c.owned == {"cam1"} and c.counters.telemetry == 1 and c.counters.decisions == 1
    # Another replica joins: the agents it wins are given up at once, without waiting.
    other = ControllerAlive(controller_id="ctl-b", nonce="bbbbbbbb", state="online", started=1.0, heartbeat_s=1.0,
                            ownership="hrw")
    c.on_alive(other, retained=False)
    assert not c.membership.stable
    owners = {a: c._owner(a) for a in (f"cam{i}" for i in range(20))}
    assert set(owners.values()) == {"ctl-a", "ctl-b"}
    assert ("cam1" in c.owned) == (owners["cam1"] == "ctl-a")


async def test_the_learned_profile_is_imported_on_takeover() -> None:
    c = controller(ownership="single")
    learned = PolicyState(agent_id="cam1", policy="deadline", controller_id="ctl-dead",
                          delay_ms_by_batch={1: 33.0, 2: 58.0, 4: 108.0, 8: 208.0, 16: 640.0})
    await c.handle(IncomingMessage(T.profile("cam1"), encode(learned), True))
    c.on_status("cam1", online("cam1"))
    for _ in range(2):  # batch 1 keeps up, barely: a move it is not forced to must be wanted twice
        await c.handle(window("cam1", batch=1))
    assert c.counters.profiles_imported == 1
    # It knows the cliff at 16 and the curve: straight from 1 to 8, nothing re-measured.
    assert [d[1] for d in c.agents["cam1"].decisions] == [8]


async def test_an_order_of_the_previous_owner_not_yet_applied_is_pending_for_the_successor() -> None:
    c = controller(ownership="single")
    order = DesiredState(agent_id="cam1", generation=7, batch_size=8, issued_by="ctl-dead")
    await c.handle(IncomingMessage(T.desired("cam1"), encode(order), True))
    await c.handle(window("cam1", batch=1, applied_generation=6))  # not applied yet: wait
    assert c.counters.decisions == 0
    await c.handle(window("cam1", batch=8, delay=208.0, applied_generation=7))
    assert c.agents["cam1"].pending is None and c.agents["cam1"].next_generation() == 8


async def test_telemetry_without_batch_or_e2e_latency_does_not_break_the_views() -> None:
    c = controller(ownership="single")
    t = telemetry(2, 50.0).model_copy(update={"agent_id": "cam1", "latency": {}})
    await c.on_telemetry("cam1", t)
    assert c.counters.telemetry == 1 and c.counters.decisions == 0
    assert "no batch delay" in c.fleet_lines()[0]
    assert "cam1" in fleet_page(c) and fleet_json(c)["agents"]
    FleetMetrics(c).render()


def test_views_of_agents_that_went_away_expire() -> None:
    c = controller(ownership="hrw", view_ttl_s=60)
    c.on_status("gone", AgentStatus(agent_id="gone", state="offline"))
    c.on_desired("never-online", DesiredState(agent_id="never-online", generation=1, batch_size=2))
    c.on_status("here", AgentStatus(agent_id="here", state="online"))
    c._profiles["gone"] = b"{}"
    c._profiles["stranger"] = b"{}"
    assert c.expire_views(now=c.agents["here"].last_seen + 30) == 0
    assert c.expire_views(now=c.agents["here"].last_seen + 61) == 2
    assert set(c.agents) == {"here"} and not c._profiles
    assert c.counters.views_expired == 2


async def test_an_operators_pin_outlives_a_reconnect_but_not_a_move() -> None:
    c = controller(ownership="hrw")
    beat(c, 5)  # alone and stable: it owns every agent
    c.on_status("cam1", online("cam1"))
    await c.handle(window("cam1", delay=20.0))
    assert "cam1" in c.owned
    pinned = c.pin("cam1", 2, "night shift")
    await c._on_connect()  # a new broker session: the membership starts over, the agents are released
    assert c.pins["cam1"].batch_size == 2, "a reconnect is not a move: the pin holds"
    beat(c, 5)
    decisions = c.counters.decisions
    # Applied, and at 120 % of its budget: the policy would move it.
    await c.handle(window("cam1", batch=2, delay=80.0, applied_generation=pinned.generation))
    assert c.counters.decisions == decisions and c.counters.held_pinned >= 1, "still held for the operator"
    # Another replica joins and wins cam1: the pin goes with the ownership.
    other = ControllerAlive(controller_id="ctl-b", nonce="bbbbbbbb", state="online", started=1.0, heartbeat_s=1.0,
                            ownership="hrw")
    c.on_alive(other, retained=False)
    if c._owner("cam1") == "ctl-b":
        assert "cam1" not in c.pins
    else:
        assert "cam1" in c.pins
