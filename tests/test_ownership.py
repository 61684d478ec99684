"""Agent ownership among controller replicas: rendezvous hashing and the membership view (pure)."""

from __future__ import annotations

from collections import Counter

import pytest

from cloud_controller.ownership import OwnerMap, owner, score
from cloud_controller.replicas import Membership, ReplicaIdClash
from schemas import ControllerAlive, ControllerTopic, Topics

AGENTS = [f"cam-{i:04d}" for i in range(3000)]


def assignment(replicas: list[str]) -> dict[str, str | None]:
    return {a: owner(a, replicas) for a in AGENTS}


def test_owner_is_deterministic_and_order_independent() -> None:
    assert owner("cam-1", ["a", "b", "c"]) == owner("cam-1", ["c", "a", "b"]) == owner("cam-1", {"b", "c", "a"})
    assert owner("cam-1", []) is None
    assert owner("cam-1", ["only"]) == "only"
    assert score("a", "cam-1") == score("a", "cam-1") and score("a", "cam-1") != score("b", "cam-1")


def test_owner_balances_the_fleet() -> None:
    replicas = ["ctl-a", "ctl-b", "ctl-c", "ctl-d"]
    counts = Counter(assignment(replicas).values())
    assert set(counts) == set(replicas)
    expected = len(AGENTS) / len(replicas)
    assert all(abs(c - expected) < 0.1 * expected for c in counts.values()), counts


def test_a_joining_replica_takes_only_its_share_from_the_others() -> None:
    before = assignment(["ctl-a", "ctl-b", "ctl-c"])
    after = assignment(["ctl-a", "ctl-b", "ctl-c", "ctl-d"])
    moved = [a for a in AGENTS if before[a] != after[a]]
    assert all(after[a] == "ctl-d" for a in moved), "an agent moved between two replicas that stayed"
    assert abs(len(moved) - len(AGENTS) / 4) < 0.1 * len(AGENTS) / 4


def test_a_leaving_replica_gives_up_only_its_own_agents_spread_over_the_rest() -> None:
    before = assignment(["ctl-a", "ctl-b", "ctl-c"])
    after = assignment(["ctl-a", "ctl-c"])
    moved = [a for a in AGENTS if before[a] != after[a]]
    assert moved and all(before[a] == "ctl-b" for a in moved)
    assert len(moved) == sum(1 for a in AGENTS if before[a] == "ctl-b")
    share = Counter(after[a] for a in moved)
    assert abs(share["ctl-a"] - share["ctl-c"]) < 0.15 * len(moved), share


def test_owner_map_memoises_and_is_bounded() -> None:
    m = OwnerMap(["b", "a"], max_cached=10)
    assert m.replicas == ("a", "b")
    assert [m(a) for a in AGENTS[:50]] == [owner(a, ["a", "b"]) for a in AGENTS[:50]]
    assert len(m._cache) <= 10
    assert OwnerMap([])("cam-1") is None


def test_controller_topics_round_trip() -> None:
    t = Topics("site1/edgebatch")
    assert t.controller_alive("ctl-1") == "site1/edgebatch/controllers/ctl-1/alive"
    assert t.parse(t.controller_alive("ctl-1")) == ControllerTopic("ctl-1", "alive")
    assert t.all_controllers_alive() == "site1/edgebatch/controllers/+/alive"
    assert t.profile("cam1") == "site1/edgebatch/agents/cam1/profile"
    assert t.telemetry_agent_id(t.telemetry("cam-1.x")) == "cam-1.x"
    for other in (t.status("cam1"), "site1/edgebatch/agents/a/b/telemetry", "site1/edgebatch/agents//telemetry",
                  "other/agents/cam1/telemetry"):
        assert t.telemetry_agent_id(other) is None


# --- membership ------------------------------------------------------------------------------


def beat(rid: str, nonce: str, state: str = "online", started: float = 100.0) -> ControllerAlive:
    return ControllerAlive(controller_id=rid, nonce=nonce, state=state, started=started, heartbeat_s=1.0,  # type: ignore[arg-type]
                           ownership="hrw")


def me(**kw: int) -> Membership:
    m = Membership("ctl-a", "aaaaaaaa", 100.0, **kw)
    m.announced = True
    return m


def test_membership_becomes_stable_after_the_grace_period() -> None:
    m = me(miss_beats=3, grace_beats=4)
    assert m.observe(beat("ctl-b", "bbbbbbbb"), retained=True)
    assert m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
    assert m.live == ("ctl-a", "ctl-b") and not m.stable
    for _ in range(4):
        assert not m.stable
        m.observe(beat("ctl-b", "bbbbbbbb"), retained=False)
        m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
    assert m.stable


def test_a_last_will_removes_a_replica_at_once_and_restarts_the_grace_period() -> None:
    m = me()
    for _ in range(6):
        m.observe(beat("ctl-b", "bbbbbbbb"), retained=False)
        m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
    assert m.stable
    epoch = m.epoch
    assert not m.observe(beat("ctl-b", "cccccccc", state="offline"), retained=True), \
        "the will of another instance must not remove the live one"
    assert m.observe(beat("ctl-b", "bbbbbbbb", state="offline"), retained=False)
    assert m.live == ("ctl-a",) and m.epoch == epoch + 1 and not m.stable


def test_a_silent_replica_is_dropped_after_missed_beats_counted_in_own_heartbeats() -> None:
    m = me(miss_beats=3, grace_beats=4)
    m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
    m.observe(beat("ctl-b", "bbbbbbbb"), retained=False)  # heard at our beat 1
    for _ in range(3):  # beats 2, 3, 4: up to 3 of ours without one of its
        m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
        assert "ctl-b" in m.live
    m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
    assert m.live == ("ctl-a",)


def stable_pair() -> Membership:
    m = me(miss_beats=3, grace_beats=4)
    for _ in range(6):
        m.observe(beat("ctl-b", "bbbbbbbb"), retained=False)
        m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
    assert m.stable
    return m


def test_a_reconnect_that_finds_the_same_replicas_is_stable_at_once() -> None:
    m = stable_pair()
    m.reset()  # the broker restarted
    assert not m.stable
    m.observe(beat("ctl-b", "bbbbbbbb"), retained=True)  # its heartbeat, from the broker's store
    m.observe(beat("ctl-a", "aaaaaaaa"), retained=True)  # our own earlier one: no proof of anything
    assert not m.stable
    m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)  # our first beat of the new session came back
    assert m.stable and m.live == ("ctl-a", "ctl-b")


def test_a_reconnect_that_finds_other_replicas_waits_the_grace_period() -> None:
    for heard in (["ctl-b", "ctl-c"], []):  # a newcomer; or the other replica's heartbeat was not kept
        m = stable_pair()
        m.reset()
        for rid in heard:
            m.observe(beat(rid, rid[-1] * 8), retained=True)
        m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
        assert not m.stable, heard
        for n in range(4):
            assert not m.stable, (heard, n)
            for rid in heard:
                m.observe(beat(rid, rid[-1] * 8), retained=False)
            m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
        assert m.stable, heard


def test_a_reconnect_after_our_own_will_fired_waits_the_grace_period() -> None:
    """Only our connection dropped: the broker published our will, the others saw us leave and may hold
    our agents. Finding the same set again is no proof they gave them back: wait the grace period."""
    m = stable_pair()
    m.reset()
    m.observe(beat("ctl-b", "bbbbbbbb"), retained=True)
    m.observe(beat("ctl-a", "aaaaaaaa", state="offline"), retained=True)  # our will, kept by the broker
    m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
    assert m.live == ("ctl-a", "ctl-b") and not m.stable


def test_a_reconnect_from_an_unstable_view_waits_the_grace_period() -> None:
    m = me(miss_beats=3, grace_beats=4)
    m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)  # just started: not stable yet
    m.reset()
    m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
    assert m.live == ("ctl-a",) and not m.stable


def test_cut_off_holds_nothing_until_own_heartbeats_return() -> None:
    m = me(miss_beats=1, grace_beats=2)
    for _ in range(3):
        m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
    assert m.stable
    assert m.cut_off() and not m.stable and m.live == ()
    m.observe(beat("ctl-a", "aaaaaaaa"), retained=False)
    assert not m.stable


def test_a_second_live_instance_with_the_same_id_is_refused() -> None:
    fresh = Membership("ctl-a", "aaaaaaaa", 200.0)
    fresh.observe(beat("ctl-a", "0000ffff", started=100.0), retained=True)  # stale retained: no verdict yet
    with pytest.raises(ReplicaIdClash, match="already in use"):
        fresh.observe(beat("ctl-a", "0000ffff", started=100.0), retained=False)
    older = me()  # announced, started at 100: the newcomer (started 200) is the one that must yield
    assert not older.observe(beat("ctl-a", "ffff0000", started=200.0), retained=False)
    with pytest.raises(ReplicaIdClash):
        older.observe(beat("ctl-a", "ffff0000", started=50.0), retained=False)


def test_grace_must_exceed_the_miss_limit() -> None:
    with pytest.raises(ValueError):
        Membership("a", "aaaaaaaa", 0.0, miss_beats=3, grace_beats=3)
