"""Batch-size policies, one module each, behind the BatchPolicy Protocol.

Every module of this package that defines ``SPEC`` (a ``PolicySpec``) is a policy, registered under
``SPEC.key``: adding a policy is adding one file.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from cloud_controller.policies.base import NO_LIMITS, AgentLimits, BatchPolicy, Decision, PolicySpec
from cloud_controller.policies.deadline import DeadlineConfig, DeadlinePolicy
from cloud_controller.policies.kum2022 import Kum2022Config, Kum2022Policy

DEFAULT_POLICY = "deadline"


def _discover() -> dict[str, PolicySpec]:
    found: dict[str, PolicySpec] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        spec = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SPEC", None)
        if isinstance(spec, PolicySpec):
            if spec.key in found:
                raise RuntimeError(f"two policies register the key {spec.key!r}")
            found[spec.key] = spec
    return dict(sorted(found.items()))


POLICIES: dict[str, PolicySpec] = _discover()


class UnknownPolicyError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
        self.name = name


def check_policy_name(name: str) -> str:
    if name not in POLICIES:
        raise UnknownPolicyError(name)
    return name


def make_policy(name: str, **parameters: Any) -> BatchPolicy:
    """A policy by key; parameters given as None keep the policy's defaults. A parameter the policy
    does not have is a ValueError naming it."""
    spec = POLICIES[check_policy_name(name)]
    given = {k: v for k, v in parameters.items() if v is not None}
    known = {f.name for f in dataclasses.fields(spec.config_type)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"policy {name} has no parameter {', '.join(unknown)} (it takes: {', '.join(sorted(known))})")
    return spec.factory(spec.config_type(**given))


__all__ = ["DEFAULT_POLICY", "NO_LIMITS", "POLICIES", "AgentLimits", "BatchPolicy", "DeadlineConfig",
           "DeadlinePolicy", "Decision", "Kum2022Config", "Kum2022Policy", "PolicySpec", "UnknownPolicyError",
           "check_policy_name", "make_policy"]
