"""Batch-size policies, one module each, behind the BatchPolicy Protocol."""

from __future__ import annotations

from collections.abc import Callable

from cloud_controller.policies.base import BatchPolicy, Decision
from cloud_controller.policies.deadline import DeadlineConfig, DeadlinePolicy
from cloud_controller.policies.kum2022 import Kum2022Config, Kum2022Policy

POLICIES: dict[str, Callable[[], BatchPolicy]] = {"kum2022": Kum2022Policy, "deadline": DeadlinePolicy}


def make_policy(name: str) -> BatchPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}") from None


__all__ = ["POLICIES", "BatchPolicy", "DeadlineConfig", "DeadlinePolicy", "Decision", "Kum2022Config",
           "Kum2022Policy", "make_policy"]
