"""The batch-size policy Protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from schemas import Telemetry


@dataclass(frozen=True)
class Decision:
    batch_size: int
    reason: str
    figures: dict[str, float] = field(default_factory=dict)


class BatchPolicy(Protocol):
    name: str

    def decide(self, telemetry: Telemetry) -> Decision | None:
        """A new batch size with the reason, or None to hold. Called only on settled telemetry."""
        ...
