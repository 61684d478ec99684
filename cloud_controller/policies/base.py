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


def check_ladder(ladder: tuple[int, ...]) -> None:
    if not ladder or list(ladder) != sorted(set(ladder)) or ladder[0] < 1:
        raise ValueError(f"ladder {ladder} must be increasing batch sizes >= 1")


class BatchPolicy(Protocol):
    name: str

    def decide(self, telemetry: Telemetry) -> Decision | None:
        """A new batch size with the reason, or None to hold. Called only on settled telemetry."""
        ...
