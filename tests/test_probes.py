"""Resource probes: the host probe for real, the Jetson parsers on recorded real outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.probes import auto_probe
from edge_agent.probes.host import HostProbe
from edge_agent.probes.tegra import TegraProbe, parse_devfreq_load, parse_meminfo, parse_tegrastats_line

# tegrastats lines as printed by JetPack on an AGX Xavier (JetPack 4.x) and an AGX Orin (JetPack 5.x).
XAVIER_LINE = (
    "RAM 2718/31920MB (lfb 6993x4MB) SWAP 0/15960MB (cached 0MB) CPU [2%@1190,1%@1190,0%@1190,0%@1190,"
    "off,off,off,off] EMC_FREQ 0% GR3D_FREQ 61%@1377 APE 150 MTS fg 0% bg 0% AO@36.5C GPU@37C"
)
ORIN_LINE = (
    "RAM 3018/30536MB (lfb 6783x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@729,0%@729,0%@729,0%@729,"
    "0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 12%@[305,305] VIC_FREQ 729 APE 174 "
    "CV0@-256C CPU@47.5C SOC2@44.4C"
)
MEMINFO = """MemTotal:       31267512 kB
MemFree:        27011324 kB
MemAvailable:   28431916 kB
Buffers:          114380 kB
Cached:          1691264 kB
"""


def test_tegrastats_lines_from_xavier_and_orin() -> None:
    x = parse_tegrastats_line(XAVIER_LINE)
    assert (x.ram_used_bytes, x.ram_total_bytes, x.gpu_util_pct) == (2718 * 2**20, 31920 * 2**20, 61.0)
    o = parse_tegrastats_line(ORIN_LINE)
    assert (o.ram_used_bytes, o.ram_total_bytes, o.gpu_util_pct) == (3018 * 2**20, 30536 * 2**20, 12.0)
    with pytest.raises(ValueError):
        parse_tegrastats_line("CPU [1%@1190]")


def test_devfreq_and_meminfo_parsers() -> None:
    assert parse_devfreq_load("613\n") == 61.3
    assert parse_devfreq_load("1000") == 100.0
    mem = parse_meminfo(MEMINFO)
    assert mem["MemTotal"] == 31267512 * 1024 and mem["MemAvailable"] == 28431916 * 1024


def test_tegra_probe_on_a_recorded_orin_tree(tmp_path: Path) -> None:
    load = tmp_path / "sys/class/devfreq/17000000.ga10b/device/load"
    load.parent.mkdir(parents=True)
    load.write_text("254\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(MEMINFO)
    sample = TegraProbe(tmp_path).sample()
    assert sample.probe == "tegra" and sample.gpu_util_pct == 25.4
    assert sample.gpu_memory_total_bytes == 31267512 * 1024
    assert sample.gpu_memory_used_bytes == (31267512 - 28431916) * 1024
    assert sample.memory_used_ratio == pytest.approx((31267512 - 28431916) / 31267512)


def test_host_probe_reads_real_figures() -> None:
    sample = HostProbe().sample()
    assert sample.host_memory_total_bytes > sample.host_memory_used_bytes > 0
    assert sample.process_rss_bytes > 10 * 2**20
    assert 0 <= sample.memory_used_ratio < 1
    assert sample.gpu_memory_used_bytes is None


def test_auto_probe_picks_one_that_works_here() -> None:
    probe = auto_probe()
    assert probe.sample().host_memory_total_bytes > 0
    assert probe.device_name()
