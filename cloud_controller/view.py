"""The controller's view of each agent: availability, last figures, and what it was told."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from cloud_controller.policies import AgentLimits, Decision
from schemas import AgentStatus, DesiredState, OrderOutcome, Telemetry

MAX_DECISIONS = 200  # kept per agent for the fleet view; older ones are in the controller's log


@dataclass
class PendingChange:
    generation: int
    batch_size: int
    issued_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Refusal:
    """An order the agent refused: its size is not ordered again until ``until`` (monotonic)."""

    generation: int
    reason: str
    until: float


@dataclass
class AgentView:
    agent_id: str
    online: bool = False
    status: AgentStatus | None = None
    telemetry: Telemetry | None = None
    desired_generation: int = 0
    pending: PendingChange | None = None
    last_desired: DesiredState | None = None  # the latest order on the wire, whoever gave it
    last_seen: float = 0.0  # time.monotonic() of the last message about this agent (views expire)
    decisions: deque[tuple[float, int, Decision]] = field(default_factory=lambda: deque(maxlen=MAX_DECISIONS))
    last_outcome: OrderOutcome | None = None  # the agent's verdict on the last order it decided
    refused: dict[int, Refusal] = field(default_factory=dict)  # by batch size

    def next_generation(self) -> int:
        applied = self.status.applied_generation if self.status else 0
        seen = self.telemetry.applied_generation if self.telemetry else 0
        decided = self.last_outcome.generation if self.last_outcome else 0
        return max(self.desired_generation, applied, seen, decided) + 1

    def limits(self, now: float) -> AgentLimits:
        """What the policy may order: the sizes the agent says it serves, less those it refused lately."""
        serving = self.status.serving if self.status else None
        servable = serving.servable_batch_sizes if serving else None
        return AgentLimits(
            servable_batch_sizes=frozenset(servable) if servable is not None else None,
            refused_batch_sizes=frozenset(size for size, r in self.refused.items() if r.until > now),
        )

    def adopt_pending(self, latest: Telemetry) -> None:
        """Taking the agent over from another replica: an order it gave that the agent has not applied
        yet (by the ``latest`` telemetry) is pending here too, so the cool-down holds until it is."""
        d = self.last_desired
        if d is not None and d.batch_size is not None and d.generation > latest.applied_generation:
            self.pending = PendingChange(d.generation, d.batch_size)

    def settled(self, t: Telemetry) -> bool:
        """Cool-down: decide only on telemetry measured entirely at the batch size last ordered."""
        if t.batches == 0 or not t.batch_size_uniform:
            return False
        if self.pending is None:
            return True
        if t.applied_generation >= self.pending.generation and t.batch_size == self.pending.batch_size:
            self.pending = None  # the whole window ran at the new size: its figures are the new size's
            return True
        return False
