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


def devfreq_node(root: Path, node: str, of_name: str | None, load: str) -> None:
    """One /sys/class/devfreq entry as L4T lays it out (of_node/name is NUL-terminated)."""
    device = root / "sys/class/devfreq" / node / "device"
    device.mkdir(parents=True)
    (device / "load").write_text(load)
    if of_name is not None:
        (device / "of_node").mkdir()
        (device / "of_node" / "name").write_bytes(of_name.encode() + b"\x00")


@pytest.mark.parametrize(
    ("layout", "nodes", "expected_pct"),
    [
        # JetPack 6 (L4T r36) Orin: the node is 17000000.gpu and its device-tree name is plain "gpu";
        # the memory controller's devfreq node sits beside it and must not be taken.
        ("orin-jp6", [("17000000.gpu", "gpu", "377\n"), ("2c60000.external-memory-controller", "emc", "5\n")], 37.7),
        ("orin-jp5", [("17000000.ga10b", "ga10b", "254\n")], 25.4),
        ("xavier-jp5", [("17000000.gv11b", "gv11b", "613\n")], 61.3),
        # of_node unreadable (as in some containers): the node name alone still finds the GPU.
        ("orin-jp6-no-of-node", [("15340000.vic", None, "999\n"), ("17000000.gpu", None, "120\n")], 12.0),
    ],
)
def test_tegra_probe_finds_the_gpu_load_on_each_l4t_layout(tmp_path: Path, layout: str, nodes, expected_pct) -> None:
    for node, of_name, load in nodes:
        devfreq_node(tmp_path, node, of_name, load)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(MEMINFO)
    assert TegraProbe(tmp_path).sample().gpu_util_pct == expected_pct, layout


def test_tegra_probe_is_not_chosen_without_a_gpu_node(tmp_path: Path) -> None:
    devfreq_node(tmp_path, "2c60000.external-memory-controller", "emc", "5\n")
    from edge_agent.probes.tegra import available

    assert not available(tmp_path)


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
