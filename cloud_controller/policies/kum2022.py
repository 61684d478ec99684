"""Kum et al., Sensors 2022, Algorithm 1: the batch-size decision, faithfully.

With batch size n on a ladder (default 1, 2, 4, 8, 16) and frame interval T:
- if the measured batch delay D(n) < n x T (the real-time criterion) and n < N:
  step up when the memory in use is under the threshold ratio, else hold;
- if the criterion holds and n = N: hold;
- if the criterion fails: step down (hold at the bottom).

Its trap, measured on an H100 with 24 real-time streams: under overload batch 1 never meets
``1 x T``, so the algorithm never grows to the batch size that would keep up (batch 32 would); it
held batch 1 for 78 s and dropped 66 % of the frames. It is kept as the paper's reference, not the
default. It learns nothing, so it has no state to hand over between controller replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cloud_controller.policies.base import NO_LIMITS, AgentLimits, Decision, PolicySpec, check_ladder
from schemas import PolicyState, Telemetry

KEY = "kum2022"


@dataclass(frozen=True)
class Kum2022Config:
    ladder: tuple[int, ...] = (1, 2, 4, 8, 16)
    memory_threshold: float = 0.8
    delay_statistic: Literal["mean_ms", "p50_ms", "p95_ms"] = "mean_ms"

    def __post_init__(self) -> None:
        check_ladder(self.ladder)
        if not 0 < self.memory_threshold <= 1:
            raise ValueError(f"memory threshold {self.memory_threshold} must be in (0, 1]")


class Kum2022Policy:
    name = KEY

    def __init__(self, config: Kum2022Config | None = None) -> None:
        self.config = config or Kum2022Config()

    def _rung(self, batch_size: int) -> int:
        """Index of the highest ladder size <= batch_size (an off-ladder size snaps down)."""
        ladder = self.config.ladder
        below = [i for i, s in enumerate(ladder) if s <= batch_size]
        return below[-1] if below else 0

    def refused(self, agent_id: str, batch_size: int, reason: str) -> None:
        return None  # the paper's algorithm has no memory; the limits passed to decide() steer it

    def export_state(self, agent_id: str) -> PolicyState | None:
        return None

    def import_state(self, state: PolicyState) -> None:
        return None

    def forget(self, agent_id: str) -> None:
        return None

    def decide(self, telemetry: Telemetry, limits: AgentLimits = NO_LIMITS) -> Decision | None:
        cfg = self.config
        n = telemetry.batch_size
        batch = telemetry.latency.get("batch")
        if telemetry.source_fps_total <= 0 or batch is None or batch.count == 0:
            return None  # nothing measured (or an agent that does not report the batch delay)
        interval_ms = 1000.0 / telemetry.source_fps_total
        criterion_ms = n * interval_ms
        delay_ms = float(getattr(batch, cfg.delay_statistic))
        memory = telemetry.resources.memory_used_ratio
        figures = {"batch_delay_ms": round(delay_ms, 2), "criterion_ms": round(criterion_ms, 2),
                   "memory_ratio": round(memory, 4), "batch_size": n}
        rung = self._rung(n)
        top = len(cfg.ladder) - 1
        if delay_ms < criterion_ms:
            if rung >= top:
                return None
            if memory >= cfg.memory_threshold:
                return None
            up = cfg.ladder[rung + 1]
            if not limits.allows(up):
                return None
            return Decision(up, f"delay {delay_ms:.1f} ms < {n} x {interval_ms:.1f} ms = {criterion_ms:.1f} ms and "
                            f"memory {memory:.0%} < {cfg.memory_threshold:.0%}: grow {n} -> {up}", figures)
        if rung == 0 and n <= cfg.ladder[0]:
            return None
        down = cfg.ladder[rung - 1] if n == cfg.ladder[rung] else cfg.ladder[rung]
        return Decision(down, f"delay {delay_ms:.1f} ms >= {n} x {interval_ms:.1f} ms = {criterion_ms:.1f} ms: "
                        f"shrink {n} -> {down}", figures)


SPEC = PolicySpec(KEY, Kum2022Config, Kum2022Policy,
                  "the paper's Algorithm 1: one rung at a time on the real-time criterion (traps at batch 1 "
                  "under overload)")
