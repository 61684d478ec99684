"""NVML probe (discrete NVIDIA GPUs) through the official ``nvidia-ml-py`` binding."""

from __future__ import annotations

import os

import psutil

from schemas import ResourceSample

try:
    import pynvml
except ImportError:
    pynvml = None

KEY = "nvml"


def available() -> bool:
    if pynvml is None:
        return False
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return False
    return bool(count > 0)


class NvmlProbe:
    name = KEY

    def __init__(self, index: int = 0) -> None:
        if pynvml is None:
            raise RuntimeError("nvidia-ml-py is not installed")
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._process = psutil.Process()
        self._pid = os.getpid()
        psutil.cpu_percent(None)

    def _process_gpu_memory(self) -> int | None:
        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except pynvml.NVMLError:
            return None
        for p in procs:
            if p.pid == self._pid and p.usedGpuMemory is not None:
                return int(p.usedGpuMemory)
        # Not listed: no CUDA context yet, or NVML sees host PIDs from inside a container. Unknown,
        # not zero; readers fall back to the device-wide figure.
        return None

    def sample(self) -> ResourceSample:
        util = pynvml.nvmlDeviceGetUtilizationRates(self._handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(self._handle)
        host = psutil.virtual_memory()
        return ResourceSample(
            probe=KEY,
            gpu_util_pct=float(util.gpu),
            gpu_memory_used_bytes=int(mem.used),
            gpu_memory_total_bytes=int(mem.total),
            process_gpu_memory_bytes=self._process_gpu_memory(),
            host_memory_used_bytes=int(host.total - host.available),
            host_memory_total_bytes=int(host.total),
            process_rss_bytes=int(self._process.memory_info().rss),
            cpu_util_pct=min(100.0, float(psutil.cpu_percent(None))),
        )

    def device_name(self) -> str:
        name = pynvml.nvmlDeviceGetName(self._handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(self._handle)
        return f"{name.decode() if isinstance(name, bytes) else name} (sm {major}.{minor})"

    def compute_capability(self) -> str:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(self._handle)
        return f"{major}.{minor}"

    def close(self) -> None:
        pynvml.nvmlShutdown()
