"""Algorithm 1 of Kum et al. 2022, branch by branch."""

from __future__ import annotations

import pytest

from cloud_controller.policies import Kum2022Config, Kum2022Policy
from schemas import LatencyStats, ResourceSample, Telemetry


def lat(ms: float, count: int = 10) -> LatencyStats:
    return LatencyStats(count=count, mean_ms=ms, p50_ms=ms, p95_ms=ms * 1.2, p99_ms=ms * 1.3, max_ms=ms * 1.5)


def telemetry(batch_size: int, batch_delay_ms: float, fps: float = 10.0, memory_ratio: float = 0.1,
              batches: int = 10) -> Telemetry:
    total = 1000 * 2**20
    return Telemetry(
        agent_id="a1", seq=1, window_s=1.0, batch_size=batch_size, batch_size_uniform=True, applied_generation=1,
        source_fps_total=fps, fps_in=fps, fps_out=fps, frames_in=100, frames_out=100, dropped=0, corrupt=0,
        deadline_misses=0, batches=batches,
        latency={"pre": lat(2), "queue": lat(5), "infer": lat(batch_delay_ms * 0.8), "post": lat(2),
                 "e2e": lat(batch_delay_ms * 2), "batch": lat(batch_delay_ms, batches)},
        queue_depths={"ingress": 0},
        resources=ResourceSample(probe="nvml", gpu_util_pct=50, gpu_memory_used_bytes=int(total * memory_ratio),
                                 gpu_memory_total_bytes=total, host_memory_used_bytes=1, host_memory_total_bytes=2,
                                 process_rss_bytes=1, cpu_util_pct=10),
    )


# 10 fps: frame interval 100 ms, criterion = n x 100 ms.
@pytest.mark.parametrize(
    ("n", "delay", "memory", "expected"),
    [
        (1, 50, 0.1, 2),      # criterion holds, room in memory: grow
        (4, 390, 0.1, 8),     # just under 400 ms: grow
        (4, 390, 0.85, None),  # criterion holds but memory over the threshold: hold
        (4, 390, 0.80, None),  # at the threshold counts as over: hold
        (16, 100, 0.1, None),  # at the top of the ladder: hold
        (8, 800, 0.1, 4),     # delay == criterion fails (strict <): shrink
        (8, 1200, 0.1, 4),    # criterion fails: shrink
        (8, 1200, 0.95, 4),   # shrinking ignores memory
        (1, 150, 0.1, None),  # fails at the bottom: hold
        (6, 700, 0.1, 4),     # off-ladder size snaps down to the rung below
        (6, 100, 0.1, 8),     # off-ladder size grows to the next rung
    ],
)
def test_algorithm_1_branches(n: int, delay: float, memory: float, expected: int | None) -> None:
    decision = Kum2022Policy().decide(telemetry(n, delay, memory_ratio=memory))
    assert (decision.batch_size if decision else None) == expected
    if decision:
        assert decision.figures["criterion_ms"] == pytest.approx(n * 100.0)
        assert str(n) in decision.reason


def test_frame_interval_comes_from_all_streams_together() -> None:
    # 3 streams x 10 fps: interval 33.3 ms; 50 ms at batch 1 fails.
    assert Kum2022Policy().decide(telemetry(2, 50, fps=30)).batch_size == 4
    assert Kum2022Policy().decide(telemetry(2, 70, fps=30)).batch_size == 1


def test_parameters_are_configurable() -> None:
    policy = Kum2022Policy(Kum2022Config(ladder=(1, 3, 9), memory_threshold=0.5, delay_statistic="p95_ms"))
    assert policy.decide(telemetry(3, 200)).batch_size == 9
    assert policy.decide(telemetry(3, 200, memory_ratio=0.6)) is None
    assert policy.decide(telemetry(3, 260)).batch_size == 1  # p95 = 312 ms >= 300 ms


def test_no_decision_without_measurements() -> None:
    assert Kum2022Policy().decide(telemetry(2, 10, batches=0)) is None
    assert Kum2022Policy().decide(telemetry(2, 10, fps=0)) is None


@pytest.mark.parametrize("bad", [dict(ladder=()), dict(ladder=(4, 2)), dict(memory_threshold=0)])
def test_bad_parameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Kum2022Config(**bad)
