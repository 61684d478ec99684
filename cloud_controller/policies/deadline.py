"""Deadline-aware policy: the smallest batch size that keeps up, learned per agent, with hysteresis.

Where Kum2022 steps one rung at a time and traps at batch 1 under overload, this policy remembers
the measured batch delay of every batch size it has run on an agent, predicts the ones it has not,
and aims for the **smallest** batch size (the least latency) whose predicted utilisation
``delay(m) / (m x frame interval)`` stays under ``headroom`` and whose end-to-end time
``(m - 1) x frame interval + delay(m)`` (batch fill + batch delay) stays within the SLO.

- Overload (the current size does not keep up, utilisation > 1): it moves at once. If some size is
  predicted to keep up it goes there; if none is, it searches upward for the size that serves the
  most frames (one unmeasured rung at a time), so it never traps at batch 1.
- Light load: it goes back down for latency, but only to a size predicted to run at or under
  ``down_headroom`` (< ``headroom``): the gap between the two is the hysteresis band that keeps it
  from oscillating at a cliff, and a move that is not forced must be wanted ``stable_windows`` windows
  in a row.
- It never grows past the memory threshold, never orders a size the agent cannot serve (limits) or
  has refused, and explores at most one rung beyond what it has measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud_controller.policies.base import NO_LIMITS, AgentLimits, Decision, PolicySpec, check_ladder
from schemas import PolicyState, Telemetry

KEY = "deadline"


@dataclass(frozen=True)
class DeadlineConfig:
    ladder: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    slo_ms: float = 1000.0
    headroom: float = 0.8  # go to a size predicted to use at most this share of each batch's time budget
    down_headroom: float = 0.6  # ... but leave a working size for a smaller one only under this share
    memory_threshold: float = 0.8
    stable_windows: int = 2
    ewma: float = 0.5
    min_gain: float = 1.1  # under overload, move only for this throughput gain
    refusal_hold_s: float = 600.0  # a size the agent refused is not chosen again for this long

    def __post_init__(self) -> None:
        check_ladder(self.ladder)
        if not 0 < self.down_headroom <= self.headroom <= 1:
            raise ValueError(f"need 0 < down_headroom ({self.down_headroom}) <= headroom ({self.headroom}) <= 1")
        if not 0 < self.memory_threshold <= 1:
            raise ValueError(f"memory threshold {self.memory_threshold} must be in (0, 1]")
        if (self.slo_ms <= 0 or self.stable_windows < 1 or not 0 < self.ewma <= 1 or self.min_gain < 1
                or self.refusal_hold_s < 0):
            raise ValueError("slo_ms > 0, stable_windows >= 1, 0 < ewma <= 1, min_gain >= 1 and refusal_hold_s >= 0 "
                             "are required")


@dataclass
class _AgentProfile:
    delay_ms: dict[int, float] = field(default_factory=dict)
    refused_until: dict[int, float] = field(default_factory=dict)  # size -> clock() when it may be chosen again

    def refused(self, now: float) -> set[int]:
        return {s for s, until in self.refused_until.items() if until > now}
    candidate: int | None = None
    candidate_windows: int = 0


class DeadlinePolicy:
    name = KEY

    def __init__(self, config: DeadlineConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or DeadlineConfig()
        self.clock = clock
        self.profiles: dict[str, _AgentProfile] = {}

    # --- state a successor replica can resume from ---------------------------------------

    def refused(self, agent_id: str, batch_size: int, reason: str) -> None:
        profile = self.profiles.setdefault(agent_id, _AgentProfile())
        profile.refused_until[batch_size] = self.clock() + self.config.refusal_hold_s

    def export_state(self, agent_id: str) -> PolicyState | None:
        profile = self.profiles.get(agent_id)
        refused = profile.refused(self.clock()) if profile is not None else set()
        if profile is None or not (profile.delay_ms or refused):
            return None
        return PolicyState(agent_id=agent_id, policy=KEY, controller_id="",
                           delay_ms_by_batch={s: round(d, 3) for s, d in profile.delay_ms.items()},
                           refused_batch_sizes=sorted(refused))

    def import_state(self, state: PolicyState) -> None:
        if state.policy != KEY:
            return  # another policy's figures mean something else
        profile = self.profiles.setdefault(state.agent_id, _AgentProfile())
        for size, delay in state.delay_ms_by_batch.items():
            profile.delay_ms.setdefault(size, delay)  # what this replica measured itself wins
        for size in state.refused_batch_sizes:  # held off anew here: the state does not say for how long
            profile.refused_until.setdefault(size, self.clock() + self.config.refusal_hold_s)

    def forget(self, agent_id: str) -> None:
        self.profiles.pop(agent_id, None)

    # --- prediction ----------------------------------------------------------------------

    @staticmethod
    def predicted_delay(known: dict[int, float], size: int) -> float:
        if size in known:
            return known[size]
        sizes = sorted(known)
        below = [s for s in sizes if s < size]
        above = [s for s in sizes if s > size]
        if below and above:  # between two measurements: linear
            lo, hi = below[-1], above[0]
            return known[lo] + (known[hi] - known[lo]) * (size - lo) / (hi - lo)
        if below:  # above everything measured: extend the line through the two largest sizes
            if len(below) >= 2:
                a, b = below[-2], below[-1]
                slope = max(0.0, (known[b] - known[a]) / (b - a))
                return known[b] + slope * (size - b)
            return known[below[-1]] * size / below[-1]  # one point: proportional (pessimistic on a GPU)
        # Below everything measured: proportional (optimistic on a GPU). Only the rung just below the smallest
        # measured size is ever considered, and only when not forced: it is tried once, then measured.
        return known[above[0]] * size / above[0]

    def _predictions(self, known: dict[int, float], ladder: tuple[int, ...], n: int) -> dict[int, float]:
        """Every size's predicted delay, once per decision (a controller decides thousands of times a second)."""
        return {s: self.predicted_delay(known, s) for s in (*ladder, n)}

    # --- decision ------------------------------------------------------------------------

    def decide(self, telemetry: Telemetry, limits: AgentLimits = NO_LIMITS) -> Decision | None:
        cfg = self.config
        batch = telemetry.latency.get("batch")
        if telemetry.source_fps_total <= 0 or batch is None or batch.count == 0:
            return None
        profile = self.profiles.setdefault(telemetry.agent_id, _AgentProfile())
        known = profile.delay_ms
        n = telemetry.batch_size
        old = known.get(n)
        known[n] = batch.mean_ms if old is None else old + cfg.ewma * (batch.mean_ms - old)
        interval = 1000.0 / telemetry.source_fps_total
        memory = telemetry.resources.memory_used_ratio
        delay = self._predictions(known, cfg.ladder, n)

        def util(size: int) -> float:
            return delay[size] / (size * interval)

        def e2e(size: int) -> float:
            return (size - 1) * interval + delay[size]

        util_n, e2e_n = util(n), e2e(n)
        figures = {"batch_size": n, "batch_delay_ms": round(known[n], 2), "utilisation": round(util_n, 3),
                   "e2e_pred_ms": round(e2e_n, 2), "interval_ms": round(interval, 2), "memory_ratio": round(memory, 4)}
        refused = profile.refused(self.clock())

        def usable(size: int) -> bool:
            if not limits.allows(size) or size in refused:
                return False
            return not (size > n and memory >= cfg.memory_threshold)

        largest_known, smallest_known = max(known), min(known)
        # The next size the agent can actually take either way (a rung it cannot serve is skipped, not a wall).
        next_up = next((s for s in cfg.ladder if s > largest_known and usable(s)), None)
        next_down = next((s for s in reversed(cfg.ladder) if s < smallest_known and usable(s)), None)
        only_late = util_n <= 1.0 and e2e_n > cfg.slo_ms  # keeping up, but the batch fill breaks the deadline

        def allowed(size: int) -> bool:
            if not usable(size):
                return False
            if only_late and size < n:
                return True  # any smaller size may be what meets the deadline: no one-rung limit going down
            # Explore at most one rung beyond what has been measured, either way.
            return not ((size > largest_known and size != next_up) or (size < smallest_known and size != next_down))

        def fits(size: int, share: float) -> bool:
            return util(size) <= share and e2e(size) <= cfg.slo_ms

        ladder = [s for s in cfg.ladder if allowed(s) or s == n]
        forced = util_n > 1.0 or e2e_n > cfg.slo_ms
        target: int | None = None
        if forced or util_n > cfg.headroom:
            # Not keeping up, or too close to it: the smallest size predicted to keep up with headroom ...
            # When forced, frames are being lost: a measured size first (with headroom, else the one with the
            # most margin), an extrapolated one only when no measured size keeps up.
            pools = ([s for s in ladder if s in known], [s for s in ladder if s not in known]) if forced else (ladder,)
            for pool in pools:
                target = next((s for s in pool if s != n and fits(s, cfg.headroom)), None)
                if target is None and forced:
                    keeping_up = [s for s in pool if s != n and fits(s, 1.0)]
                    target = min(keeping_up, key=util, default=None)
                if target is not None:
                    break
            if target is None and not forced:  # keeping up, barely: measure the next size up rather than guess
                target = next((s for s in ladder if s > n and s not in known and e2e(s) <= cfg.slo_ms), None)
            if target is None and only_late:  # late, not overloaded: never bigger, the least late smaller size
                smaller = [s for s in ladder if s < n and util(s) <= 1.0]
                target = min(smaller, key=e2e, default=None)
            elif target is None and forced:
                return self._overloaded(profile, n, interval, memory, ladder, figures)
        else:
            # Keeping up: a smaller size is worth it only well inside its budget (the hysteresis band).
            target = next((s for s in ladder if s < n and fits(s, cfg.down_headroom)), None)
        if target is None or target == n:
            profile.candidate, profile.candidate_windows = None, 0
            return None
        if not forced:  # a move that is not forced must be wanted for a while
            if profile.candidate != target:
                profile.candidate, profile.candidate_windows = target, 0
            profile.candidate_windows += 1
            if profile.candidate_windows < cfg.stable_windows:
                return None
        profile.candidate, profile.candidate_windows = None, 0
        util_t, e2e_t = util(target), e2e(target)
        verb = "shrink for latency" if target < n and not forced else ("misses: move" if forced else "grow")
        why = (f"{verb}: batch {n} uses {util_n:.0%} of its time budget, e2e {e2e_n:.0f} ms -> batch {target}: "
               f"predicted {util_t:.0%}, e2e {e2e_t:.0f} ms (SLO {cfg.slo_ms:.0f} ms, "
               f"frame interval {interval:.1f} ms)")
        return Decision(target, why, figures)

    def _overloaded(self, profile: _AgentProfile, n: int, interval: float, memory: float, ladder: list[int],
                    figures: dict[str, float]) -> Decision | None:
        """No size is predicted to keep up: serve the most frames per second (fewest drops). Measure the next
        rung up while its throughput is unknown; move only for a clear gain."""
        known = profile.delay_ms

        def fps(size: int) -> float:
            return size * 1000.0 / max(1e-6, self.predicted_delay(known, size))

        up = next((s for s in ladder if s > n), None)
        if up is not None and up not in known and memory < self.config.memory_threshold and len(known) == 1:
            # One measurement says nothing about how the batch amortises: measure the next size up.
            return Decision(up, f"overloaded at batch {n} (input {1000.0 / interval:.1f} fps, {fps(n):.1f} fps "
                            f"served): measuring batch {up}", figures)
        best = max(ladder, key=fps, default=n)
        if best == n or fps(best) < self.config.min_gain * fps(n):
            return None
        return Decision(best, f"overloaded at every size (input {1000.0 / interval:.1f} fps): batch {best} serves "
                        f"{fps(best):.1f} fps vs {fps(n):.1f} fps at batch {n}", figures)


SPEC = PolicySpec(KEY, DeadlineConfig, DeadlinePolicy,
                  "smallest batch size that keeps up and keeps the deadline, learned per agent, with hysteresis; "
                  "searches upward under overload (default)")
