"""The controller's view of each agent: availability, last figures, and what it was told."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cloud_controller.policies import Decision
from schemas import AgentStatus, Telemetry

MAX_DECISIONS = 200  # kept per agent for the fleet view; older ones are in the controller's log


@dataclass
class PendingChange:
    generation: int
    batch_size: int


@dataclass
class AgentView:
    agent_id: str
    online: bool = False
    status: AgentStatus | None = None
    telemetry: Telemetry | None = None
    desired_generation: int = 0
    pending: PendingChange | None = None
    decisions: deque[tuple[float, int, Decision]] = field(default_factory=lambda: deque(maxlen=MAX_DECISIONS))

    def next_generation(self) -> int:
        applied = self.status.applied_generation if self.status else 0
        seen = self.telemetry.applied_generation if self.telemetry else 0
        return max(self.desired_generation, applied, seen) + 1

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
