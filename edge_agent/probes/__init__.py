"""Resource probes, one module each, chosen automatically: NVML, then Tegra, then host."""

from __future__ import annotations

import logging

from edge_agent.probes import host
from edge_agent.probes.base import ResourceProbe

log = logging.getLogger(__name__)


def auto_probe() -> ResourceProbe:
    """The best probe this device supports; a missing runtime is a log line, never a crash."""
    try:
        from edge_agent.probes import nvml

        if nvml.available():
            return nvml.NvmlProbe()
    except Exception as exc:  # any NVML failure means: not this probe
        log.info("NVML probe not used: %s", exc)
    try:
        from edge_agent.probes import tegra

        if tegra.available():
            return tegra.TegraProbe()
    except Exception as exc:
        log.info("Tegra probe not used: %s", exc)
    return host.HostProbe()


__all__ = ["ResourceProbe", "auto_probe"]
