"""The data-path benches run end to end on a tiny load and print what they promise (the figures themselves are
measured by running them, never asserted here): a bench that rots breaks this, not the next GPU visit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def bench(name: str, tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    out = tmp_path / f"{name}.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_pipeline_vs_sequential(tmp_path: Path) -> None:
    r = bench("pipeline_vs_sequential", tmp_path, "--batch-size", "2", "--frames", "8", "--rounds", "1")
    assert r["sequential_fps"] > 0 and r["pipeline_fps"] > 0 and r["raw_engine_fps"] > 0
    assert set(r["stage_ms_per_frame"]) == {"decode", "pre", "infer", "post"}
    assert r["pipeline_over_raw_engine"] > 0 and r["ideal_pipelined_over_sequential"] >= 1.0


@pytest.mark.parametrize("chain", ["never", "always"])
def test_gpu_throughput_on_either_chain(tmp_path: Path, chain: str) -> None:
    backend = "onnxruntime" if chain == "never" else "pytorch"
    if backend == "pytorch":
        pytest.importorskip("torch", reason="PyTorch (scripts/test.sh installs it) runs the device chain")
    r = bench("gpu_throughput", tmp_path, "--backend", backend, "--device-path", chain, "--batch-sizes", "2",
              "--frames", "32", "--streams", "1", "--raw-seconds", "0.2")
    (row,) = r["rows"]
    assert row["batch_size"] == 2 and row["raw_engine_fps"] > 0 and row["pipeline_fps"] > 0
    assert row["frames_out"] == 32 and set(row["stage_ms_per_batch"]) == {"pre", "infer", "post"}
    assert row["chain"][0] == ("DeviceUpload" if chain == "always" else "HostPreprocess")


def test_decode_scaling(tmp_path: Path) -> None:
    r = bench("decode_scaling", tmp_path, "--streams", "1,2", "--seconds", "0.3")
    assert [row["streams"] for row in r["rows"]] == [1, 2] and all(row["fps"] > 0 for row in r["rows"])


def test_realtime_streams_under_the_controller(tmp_path: Path) -> None:
    r = bench("realtime_streams", tmp_path, "--backend", "onnxruntime", "--streams", "1", "--seconds", "5")
    assert r["frames_in"] > 0 and r["lost"] == 0 and r["frames_out"] + r["dropped"] == r["frames_in"]
    assert r["windows"] and r["settled_batch_size"] >= 1 and r["steady_state"]["windows"] >= 1


def test_swap(tmp_path: Path) -> None:
    r = bench("swap", tmp_path)
    assert [s["outcome"] for s in r["swaps"]] == ["desired_applied"] * 3 and r["frames_lost"] == 0
    assert all(s["command_to_first_batch_ms"] > 0 for s in r["swaps"])
