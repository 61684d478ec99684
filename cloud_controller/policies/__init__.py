"""Batch-size policies, one module each, behind the BatchPolicy Protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cloud_controller.policies.base import BatchPolicy, Decision
from cloud_controller.policies.deadline import DeadlineConfig, DeadlinePolicy
from cloud_controller.policies.kum2022 import Kum2022Config, Kum2022Policy

POLICIES: dict[str, Callable[[], BatchPolicy]] = {"kum2022": Kum2022Policy, "deadline": DeadlinePolicy}


def make_policy(name: str, ladder: tuple[int, ...] | None = None, memory_threshold: float | None = None,
                slo_ms: float | None = None) -> BatchPolicy:
    """A policy by name; parameters left None keep the policy's defaults."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    given: dict[str, Any] = {"ladder": ladder, "memory_threshold": memory_threshold}
    if name == "kum2022":
        if slo_ms is not None:
            raise ValueError("kum2022 has no SLO (the paper's criterion is batch x frame interval); "
                             "use --policy deadline")
        return Kum2022Policy(replace(Kum2022Config(), **{k: v for k, v in given.items() if v is not None}))
    given["slo_ms"] = slo_ms
    return DeadlinePolicy(replace(DeadlineConfig(), **{k: v for k, v in given.items() if v is not None}))


__all__ = ["POLICIES", "BatchPolicy", "DeadlineConfig", "DeadlinePolicy", "Decision", "Kum2022Config",
           "Kum2022Policy", "make_policy"]
