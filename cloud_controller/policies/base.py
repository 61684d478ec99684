"""The batch-size policy Protocol and what every policy shares.

A policy is one module in this package that defines ``SPEC = PolicySpec(key, config_type, factory)``;
``cloud_controller.policies`` discovers it, so adding a policy is adding one file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas import PolicyState, Telemetry


@dataclass(frozen=True)
class Decision:
    batch_size: int
    reason: str
    figures: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentLimits:
    """What the controller knows an agent can do, beyond its telemetry."""

    servable_batch_sizes: frozenset[int] | None = None  # None: any size (a dynamic engine, or unknown)
    refused_batch_sizes: frozenset[int] = frozenset()  # the agent refused these recently: not again yet

    def allows(self, size: int) -> bool:
        if size in self.refused_batch_sizes:
            return False
        return self.servable_batch_sizes is None or size in self.servable_batch_sizes


NO_LIMITS = AgentLimits()


def check_ladder(ladder: tuple[int, ...]) -> None:
    if not ladder or list(ladder) != sorted(set(ladder)) or ladder[0] < 1 or ladder[-1] > 1024:
        raise ValueError(f"ladder {ladder} must be increasing batch sizes between 1 and 1024")


class BatchPolicy(Protocol):
    name: str

    def decide(self, telemetry: Telemetry, limits: AgentLimits = NO_LIMITS) -> Decision | None:
        """A new batch size with the reason, or None to hold. Called only on settled telemetry."""
        ...

    def refused(self, agent_id: str, batch_size: int, reason: str) -> None:
        """The agent refused an order for ``batch_size``: do not order it again soon."""
        ...

    def export_state(self, agent_id: str) -> PolicyState | None:
        """What this policy learned about the agent, for a replica that takes it over (None: nothing)."""
        ...

    def import_state(self, state: PolicyState) -> None:
        """Resume from what another replica (or this one before a restart) learned."""
        ...

    def forget(self, agent_id: str) -> None:
        """Drop all per-agent state (the agent left, or another replica owns it now)."""
        ...


@dataclass(frozen=True)
class PolicySpec:
    """How ``make_policy`` builds a policy: its key, its parameter dataclass, and the class."""

    key: str
    config_type: type[Any]
    factory: Callable[[Any], BatchPolicy]
    summary: str
