"""Policies on a simulated device whose batch delay has a cliff at batch 16 (as this CPU shows)."""

from __future__ import annotations

import pytest

from cloud_controller.policies import DeadlineConfig, DeadlinePolicy, Kum2022Policy
from tests.test_kum2022 import telemetry

FPS = 30.0  # 3 streams x 10 fps: interval 33.3 ms


def device_delay_ms(n: int) -> float:
    return 8 + 25 * n if n <= 8 else 40.0 * n  # batch 16 falls off a cliff (640 ms > 16 x 33.3 ms)


def run(policy, windows: int = 60) -> list[int]:
    size, sizes = 1, []
    for _ in range(windows):
        decision = policy.decide(telemetry(size, device_delay_ms(size), fps=FPS))
        if decision is not None:
            size = decision.batch_size
        sizes.append(size)
    return sizes


def changes(sizes: list[int]) -> int:
    return sum(a != b for a, b in zip(sizes, sizes[1:], strict=False))


def test_kum2022_oscillates_at_the_cliff_as_the_paper_algorithm_does() -> None:
    sizes = run(Kum2022Policy())
    assert set(sizes[-10:]) == {8, 16}
    assert changes(sizes) > 20


def test_deadline_policy_settles_on_the_largest_size_that_keeps_up_and_meets_the_slo() -> None:
    clock = [0.0]
    policy = DeadlinePolicy(clock=lambda: clock[0])
    sizes = []
    size = 1
    for _ in range(60):
        decision = policy.decide(telemetry(size, device_delay_ms(size), fps=FPS))
        if decision is not None:
            size = decision.batch_size
        sizes.append(size)
        clock[0] += 1.0
    assert sizes[-1] == 8 and set(sizes[-30:]) == {8}
    assert changes(sizes) <= 5, sizes
    assert 16 in sizes, "it explored the next rung once, measured the cliff, and came back"


def test_deadline_policy_respects_the_slo_before_throughput() -> None:
    # A fast device: everything keeps up, but a 400 ms SLO allows at most batch 8's fill time.
    policy = DeadlinePolicy(DeadlineConfig(slo_ms=400, stable_windows=1))
    size = 1
    for _ in range(20):
        decision = policy.decide(telemetry(size, 5.0 * size, fps=FPS))
        if decision is not None:
            size = decision.batch_size
    assert size == 8  # (8 - 1) x 33.3 + 40 = 273 ms; 16 would need 500 + 80 ms


def test_deadline_policy_shrinks_at_once_when_the_current_size_fails() -> None:
    policy = DeadlinePolicy()
    policy.decide(telemetry(4, 100.0, fps=FPS))  # batch 4 measured: 100 ms, well inside
    decision = policy.decide(telemetry(8, 400.0, fps=FPS))  # 400 > 0.85 x 8 x 33.3: no waiting
    assert decision is not None and decision.batch_size == 4
    assert "misses" in decision.reason


def test_deadline_policy_does_not_grow_past_the_memory_threshold() -> None:
    policy = DeadlinePolicy(DeadlineConfig(stable_windows=1))
    assert policy.decide(telemetry(2, 30.0, fps=FPS, memory_ratio=0.95)) is None


@pytest.mark.parametrize("bad", [dict(headroom=0), dict(slo_ms=0), dict(ladder=(2, 1))])
def test_bad_deadline_parameters(bad: dict) -> None:
    with pytest.raises(ValueError):
        DeadlineConfig(**bad)


def test_deadline_policy_under_overload_maximises_throughput_without_oscillating() -> None:
    # A CPU that cannot keep up with 30 fps at any size: 40 ms a frame, a little fixed cost.
    policy = DeadlinePolicy()
    size, sizes = 1, []
    for _ in range(40):
        decision = policy.decide(telemetry(size, 5 + 40.0 * size, fps=FPS))
        if decision is not None:
            assert "overloaded" in decision.reason
            size = decision.batch_size
        sizes.append(size)
    assert changes(sizes) <= 2, sizes
    assert sizes[-1] <= 2, "batching buys almost nothing here: no climb to 16"


def test_policies_are_discovered_one_file_each_and_unknown_keys_are_one_line_errors() -> None:
    from cloud_controller.policies import POLICIES, UnknownPolicyError, make_policy

    assert {"kum2022", "deadline"} <= set(POLICIES)
    for key, spec in POLICIES.items():
        assert spec.key == key and spec.summary
        assert make_policy(key).name == key
    with pytest.raises(UnknownPolicyError, match="unknown policy 'foo'; known: deadline, kum2022"):
        make_policy("foo")
    with pytest.raises(ValueError, match="policy kum2022 has no parameter slo_ms"):
        make_policy("kum2022", slo_ms=500)


def test_deadline_policy_state_round_trips_through_the_wire_model() -> None:
    from schemas import PolicyState, decode, encode

    first = DeadlinePolicy()
    for size, delay in ((1, 30.0), (2, 45.0)):
        first.decide(telemetry(size, delay, fps=FPS))
    first.refused("a1", 16, "no artifact")
    state = first.export_state("a1")
    assert state is not None and state.delay_ms_by_batch == {1: 30.0, 2: 45.0} and state.refused_batch_sizes == [16]
    second = DeadlinePolicy()
    second.import_state(decode(PolicyState, encode(state)))
    resumed = second.export_state("a1")
    assert resumed is not None and resumed.model_dump(exclude={"ts"}) == state.model_dump(exclude={"ts"})
    second.forget("a1")
    assert second.export_state("a1") is None
