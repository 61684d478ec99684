"""Deadline-aware policy with a learned profile, hysteresis and a cool-down.

Where Kum2022 steps one rung at a time and oscillates around the real-time limit, this policy
remembers the measured batch delay of every batch size it has run (per agent), predicts the ones it
has not, and picks the largest batch size (best accelerator efficiency) that
- keeps up with the input with a headroom: delay(m) <= headroom x m x frame interval, and
- keeps the deadline: (m - 1) x frame interval (batch fill) + delay(m) <= SLO, and
- fits in memory (when growing).
It moves at most one rung up into the unknown, needs the better choice to hold for ``stable_windows``
windows before moving, and after a size fails it does not return to it for ``ban_s`` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cloud_controller.policies.base import NO_LIMITS, AgentLimits, Decision, PolicySpec, check_ladder
from schemas import PolicyState, Telemetry

KEY = "deadline"


@dataclass(frozen=True)
class DeadlineConfig:
    ladder: tuple[int, ...] = (1, 2, 4, 8, 16)
    slo_ms: float = 1000.0
    headroom: float = 0.85
    memory_threshold: float = 0.8
    stable_windows: int = 2
    ban_s: float = 60.0
    ewma: float = 0.5

    def __post_init__(self) -> None:
        check_ladder(self.ladder)
        if not 0 < self.headroom <= 1 or not 0 < self.memory_threshold <= 1 or self.slo_ms <= 0:
            raise ValueError("headroom and memory_threshold must be in (0, 1], slo_ms > 0")


@dataclass
class _AgentProfile:
    delay_ms: dict[int, float] = field(default_factory=dict)
    banned_until: dict[int, float] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)
    candidate: int | None = None
    candidate_windows: int = 0
    fit: tuple[float, float] | None = None  # (fixed, per_item) over delay_ms; None: refit when needed


class DeadlinePolicy:
    name = KEY

    def __init__(self, config: DeadlineConfig | None = None, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.config = config or DeadlineConfig()
        self.clock = clock
        self.profiles: dict[str, _AgentProfile] = {}

    # --- state a successor replica can resume from ---------------------------------------

    def refused(self, agent_id: str, batch_size: int, reason: str) -> None:
        self.profiles.setdefault(agent_id, _AgentProfile()).refused.add(batch_size)

    def export_state(self, agent_id: str) -> PolicyState | None:
        profile = self.profiles.get(agent_id)
        if profile is None or not (profile.delay_ms or profile.refused):
            return None
        return PolicyState(agent_id=agent_id, policy=KEY, controller_id="",
                           delay_ms_by_batch={s: round(d, 3) for s, d in profile.delay_ms.items()},
                           refused_batch_sizes=sorted(profile.refused))

    def import_state(self, state: PolicyState) -> None:
        if state.policy != KEY:
            return  # another policy's figures mean something else
        profile = self.profiles.setdefault(state.agent_id, _AgentProfile())
        for size, delay in state.delay_ms_by_batch.items():
            profile.delay_ms.setdefault(size, delay)  # what this replica measured itself wins
        profile.fit = None
        profile.refused.update(state.refused_batch_sizes)

    def forget(self, agent_id: str) -> None:
        self.profiles.pop(agent_id, None)

    def predicted_delay(self, profile: _AgentProfile, size: int) -> float:
        known = profile.delay_ms
        if size in known:
            return known[size]
        if len(known) >= 2:
            # delay = fixed + per_item x n, fitted to what was measured (the batch amortises the fixed part)
            if profile.fit is None:
                profile.fit = _line_fit(known)
            fixed, per_item = profile.fit
            return float(max(0.0, fixed) + max(0.0, per_item) * size)
        # One point: proportional, pessimistic on a GPU, about right on a CPU.
        (only,) = known
        return known[only] * size / only

    def feasible(self, profile: _AgentProfile, size: int, interval_ms: float) -> tuple[bool, float, float]:
        delay = self.predicted_delay(profile, size)
        e2e = (size - 1) * interval_ms + delay
        ok = delay <= self.config.headroom * size * interval_ms and e2e <= self.config.slo_ms
        return ok, delay, e2e

    def decide(self, telemetry: Telemetry, limits: AgentLimits = NO_LIMITS) -> Decision | None:
        cfg = self.config
        batch = telemetry.latency.get("batch")
        if telemetry.source_fps_total <= 0 or batch is None or batch.count == 0:
            return None  # nothing measured (or an agent that does not report the batch delay)
        profile = self.profiles.setdefault(telemetry.agent_id, _AgentProfile())
        n = telemetry.batch_size
        measured = batch.mean_ms
        old = profile.delay_ms.get(n)
        new = measured if old is None else old + cfg.ewma * (measured - old)
        if new != old:
            profile.delay_ms[n] = new
            profile.fit = None
        interval = 1000.0 / telemetry.source_fps_total
        now = self.clock()
        memory = telemetry.resources.memory_used_ratio
        current_ok, delay_n, e2e_n = self.feasible(profile, n, interval)
        if not current_ok:
            profile.banned_until[n] = now + cfg.ban_s
        largest_known = max(profile.delay_ms)
        next_rung = next((s for s in cfg.ladder if s > largest_known), None)
        best = None
        for size in cfg.ladder:
            if size > largest_known and size != next_rung:
                break  # explore at most one rung beyond what has been measured (the ladder is sorted)
            if not limits.allows(size) or size in profile.refused:
                continue
            if profile.banned_until and profile.banned_until.get(size, 0) > now:
                continue
            if size > n and memory >= cfg.memory_threshold:
                continue
            if self.feasible(profile, size, interval)[0]:
                best = size
        if best == n:  # the usual answer in a steady fleet: nothing to build, nothing to say
            profile.candidate, profile.candidate_windows = None, 0
            return None
        figures = {"batch_size": n, "batch_delay_ms": round(delay_n, 2), "e2e_pred_ms": round(e2e_n, 2),
                   "interval_ms": round(interval, 2), "memory_ratio": round(memory, 4)}
        if best is None:
            return self._overloaded(profile, n, interval, memory, figures)
        if current_ok:  # hysteresis: a move that is not forced must be wanted for a while
            if profile.candidate != best:
                profile.candidate, profile.candidate_windows = best, 0
            profile.candidate_windows += 1
            if profile.candidate_windows < cfg.stable_windows:
                return None
        profile.candidate, profile.candidate_windows = None, 0
        _, delay_b, e2e_b = self.feasible(profile, best, interval)
        why = ("current size misses: " if not current_ok else "") + (
            f"batch {n}: delay {delay_n:.0f} ms, e2e {e2e_n:.0f} ms -> batch {best}: predicted delay {delay_b:.0f} ms "
            f"<= {cfg.headroom:.0%} x {best} x {interval:.1f} ms, e2e {e2e_b:.0f} ms <= SLO {cfg.slo_ms:.0f} ms")
        return Decision(best, why, figures)

    def _overloaded(self, profile: _AgentProfile, n: int, interval: float, memory: float,
                    figures: dict[str, float]) -> Decision | None:
        """No size keeps up: serve the most frames per second (fewest drops). Try the next rung up
        once while its throughput is unknown; move only for a clear (> 10 %) gain."""
        cfg = self.config
        candidates = set(profile.delay_ms)
        up = next((s for s in cfg.ladder if s > max(profile.delay_ms)), None)
        if up is not None and memory < cfg.memory_threshold:
            candidates.add(up)

        def fps(size: int) -> float:
            return size * 1000.0 / max(1e-6, self.predicted_delay(profile, size))

        if len(profile.delay_ms) == 1 and up is not None and up in candidates:
            # One measurement says nothing about how the batch amortises: measure a second size.
            return Decision(up, f"overloaded at batch {n} (input {1000.0 / interval:.1f} fps, "
                            f"{fps(n):.1f} fps served): measuring batch {up}", figures)
        best = max(sorted(candidates), key=fps)
        if best == n or fps(best) < 1.1 * fps(n):
            return None
        return Decision(best, f"overloaded at every size (input {1000.0 / interval:.1f} fps): batch {best} serves "
                        f"{fps(best):.1f} fps vs {fps(n):.1f} fps at batch {n}", figures)


def _line_fit(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares line through (batch size, delay): (intercept, slope), as numpy.polyfit(deg=1)
    gives, in plain Python: a handful of points, refitted only when a delay changes."""
    n = len(points)
    mean_x = sum(points) / n
    mean_y = sum(points.values()) / n
    sxx = sum((x - mean_x) ** 2 for x in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points.items()) / sxx if sxx else 0.0
    return mean_y - slope * mean_x, slope


SPEC = PolicySpec(KEY, DeadlineConfig, DeadlinePolicy,
                  "learns delay per batch size; largest size that keeps up and keeps the deadline, with "
                  "hysteresis; searches upward under overload")
