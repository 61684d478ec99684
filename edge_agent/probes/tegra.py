"""Jetson probe (no NVML there): GPU load from devfreq, unified memory from /proc/meminfo,
or the same figures parsed from tegrastats lines."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

import psutil

from schemas import ResourceSample

KEY = "tegra"
# The integrated GPU's devfreq node, as jetson-stats finds it: the device-tree name of the node's
# device is gp10b (TX2), gv11b (Xavier), ga10b (Orin, JetPack 5) or plain gpu (Orin, JetPack 6, where
# the node is 17000000.gpu). Its ``device/load`` is in per mille.
GPU_NODE_NAMES = ("gp10b", "gv11b", "ga10b", "gpu")
DEVFREQ_DIR = "sys/class/devfreq"
# Older layouts, and a last resort when of_node is not readable (some containers).
FALLBACK_GLOBS = ("sys/class/devfreq/*gv11b*/device/load", "sys/class/devfreq/*ga10b*/device/load",
                  "sys/class/devfreq/*.gpu/device/load", "sys/devices/gpu.0/load",
                  "sys/devices/platform/gpu.0/load")


def find_load_file(root: str | Path = "/") -> Path | None:
    devfreq = Path(root) / DEVFREQ_DIR
    nodes = sorted(devfreq.iterdir()) if devfreq.is_dir() else []
    for node in nodes:
        name_file = node / "device" / "of_node" / "name"
        load = node / "device" / "load"
        try:
            name = name_file.read_text().strip("\x00\n ")
        except OSError:
            continue
        if name in GPU_NODE_NAMES and load.is_file():
            return load
    for pattern in FALLBACK_GLOBS:
        hits = sorted(glob.glob(os.path.join(str(root), pattern)))
        if hits:
            return Path(hits[0])
    return None


def available(root: str | Path = "/") -> bool:
    return find_load_file(root) is not None


def parse_devfreq_load(text: str) -> float:
    """devfreq ``load`` is per mille (0..1000) -> percent."""
    return min(100.0, max(0.0, int(text.strip()) / 10.0))


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> bytes by key (MemTotal, MemAvailable, ...)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+):\s+(\d+)(?:\s+kB)?$", line.strip())
        if m:
            values[m.group(1)] = int(m.group(2)) * (1024 if line.strip().endswith("kB") else 1)
    return values


@dataclass(frozen=True)
class TegrastatsSample:
    ram_used_bytes: int
    ram_total_bytes: int
    gpu_util_pct: float


_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")


def parse_tegrastats_line(line: str) -> TegrastatsSample:
    """One tegrastats line (Xavier ``GR3D_FREQ 0%@1377``, Orin ``GR3D_FREQ 0%@[305]`` or ``0%``)."""
    ram = _RAM.search(line)
    gr3d = _GR3D.search(line)
    if ram is None or gr3d is None:
        raise ValueError(f"not a tegrastats line: {line[:80]!r}")
    mb = 1024 * 1024
    return TegrastatsSample(int(ram.group(1)) * mb, int(ram.group(2)) * mb, float(gr3d.group(1)))


class TegraProbe:
    """Reads devfreq and meminfo under ``root`` (``/`` on a Jetson; a recorded tree in tests).

    Jetson memory is unified: the GPU's share is the whole RAM, so the memory rule is against
    MemTotal - MemAvailable.
    """

    name = KEY

    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)
        load = find_load_file(root)
        if load is None:
            raise RuntimeError(f"no Jetson GPU devfreq load file under {root}")
        self._load_file = load
        self._process = psutil.Process()
        psutil.cpu_percent(None)

    def sample(self) -> ResourceSample:
        load = parse_devfreq_load(self._load_file.read_text())
        mem = parse_meminfo((self.root / "proc/meminfo").read_text())
        total = mem["MemTotal"]
        used = total - mem.get("MemAvailable", mem.get("MemFree", 0))
        return ResourceSample(
            probe=KEY,
            gpu_util_pct=load,
            gpu_memory_used_bytes=used,
            gpu_memory_total_bytes=total,
            host_memory_used_bytes=used,
            host_memory_total_bytes=total,
            process_rss_bytes=int(self._process.memory_info().rss),
            cpu_util_pct=min(100.0, float(psutil.cpu_percent(None))),
        )

    def device_name(self) -> str:
        model = self.root / "proc/device-tree/model"
        return model.read_text().strip("\x00\n ") if model.exists() else "NVIDIA Jetson"

    def close(self) -> None:
        return None
