"""Host probe: CPU, process RSS and MemAvailable, for devices without a GPU."""

from __future__ import annotations

import platform

import psutil

from schemas import ResourceSample

KEY = "host"


def available() -> bool:
    return True


class HostProbe:
    name = KEY

    def __init__(self) -> None:
        self._process = psutil.Process()
        psutil.cpu_percent(None)  # prime: the first call has no interval to compare against

    def sample(self) -> ResourceSample:
        mem = psutil.virtual_memory()
        return ResourceSample(
            probe=KEY,
            host_memory_used_bytes=int(mem.total - mem.available),
            host_memory_total_bytes=int(mem.total),
            process_rss_bytes=int(self._process.memory_info().rss),
            cpu_util_pct=min(100.0, float(psutil.cpu_percent(None))),
        )

    def device_name(self) -> str:
        return f"{platform.machine()} CPU x{psutil.cpu_count()} ({platform.processor() or platform.machine()})"

    def close(self) -> None:
        return None
