"""The resource-probe Protocol: GPU / unified / host memory and utilisation."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from schemas import ResourceSample


@runtime_checkable
class ResourceProbe(Protocol):
    name: str

    def sample(self) -> ResourceSample:
        """Read the current figures; blocking but fast (call from a thread on a hot loop)."""
        ...

    def device_name(self) -> str: ...

    def close(self) -> None: ...
