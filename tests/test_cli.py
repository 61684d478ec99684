"""The edge-agent command line, run as a user runs it: a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from model_registry.registry import Registry
from model_registry.stores import open_store
from schemas import ProfileReport, RunSummary
from tests.conftest import MODEL, ROOT, VIDEO


def edge_agent(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def wrong_input_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 224, 224])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 224, 224])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every supported onnxruntime
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--source", "/no/such/video.avi"], "source /no/such/video.avi: file not found"),
        (["--source", str(MODEL)], "unreadable video"),
        (["--model", "/no/such/model.onnx"], "model /no/such/model.onnx: file not found"),
        (["--model", str(VIDEO)], "not a loadable ONNX model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    result = edge_agent("run", "--max-frames", "4", *args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr


def test_model_whose_input_does_not_fit(tmp_path: Path) -> None:
    model = wrong_input_model(tmp_path / "small.onnx")
    result = edge_agent("run", "--model", str(model), "--model-type", "nanodet")
    assert result.returncode == 2
    assert "does not fit [batch, 3, 416, 416]" in result.stderr
    assert "Traceback" not in result.stderr
    unknown = edge_agent("run", "--model", str(model))  # nothing to infer the family from
    assert unknown.returncode == 2
    assert "give the model type with --model-type" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_run_writes_summary_and_detections(tmp_path: Path, short_video: Path) -> None:
    summary_path = tmp_path / "summary.json"
    detections = tmp_path / "det.jsonl"
    result = edge_agent("run", "--source", str(short_video), "--source", str(short_video), "--offline",
                        "--batch-size", "4", "--max-frames", "24", "--summary", str(summary_path),
                        "--detections", str(detections), "--annotated", str(tmp_path / "video"))
    assert result.returncode == 0, result.stderr
    summary = RunSummary.model_validate_json(summary_path.read_text())
    assert summary.frames_in == summary.frames_out == 24
    assert summary.streams == 2 and summary.mode == "offline" and summary.batch_size == 4
    assert set(summary.latency) == {"pre", "queue", "infer", "post", "e2e", "batch"}
    assert len(detections.read_text().splitlines()) == 24
    assert "delay per stage" in result.stdout
    for stream in ("s0", "s1"):
        assert (tmp_path / "video" / f"{stream}.avi").stat().st_size > 10_000


def test_profile_prints_the_table_and_writes_json(tmp_path: Path, short_video: Path) -> None:
    out = tmp_path / "profile.json"
    result = edge_agent("profile", "--source", str(short_video), "--batch-sizes", "1,2", "--batches", "2",
                        "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = ProfileReport.model_validate_json(out.read_text())
    assert [r.batch_size for r in report.rows] == [1, 2]
    for row in report.rows:
        assert row.total_ms == pytest.approx(row.pre_ms + row.infer_ms + row.post_ms, abs=0.05)
        assert row.realtime_limit_ms == pytest.approx(row.batch_size * 100.0)  # the video is 10 fps
        assert row.margin_ms == pytest.approx(row.realtime_limit_ms - row.total_ms, abs=0.05)
        assert row.peak_memory_bytes > 50 * 2**20
    assert "RT limit ms" in result.stdout
    assert json.loads(out.read_text())["fps"] == 10.0


def test_profile_rejects_bad_batch_list() -> None:
    result = edge_agent("profile", "--batch-sizes", "1,x")
    assert result.returncode == 2
    assert "comma-separated" in result.stderr


def test_profile_measures_the_artifact_the_device_picks_per_size(tmp_path: Path, short_video: Path) -> None:
    """--registry: each batch size runs on the artifact an agent would load for it (static before dynamic)."""
    pushed = asyncio.run(Registry(open_store(str(tmp_path / "reg"))).push(MODEL, "nanodet", "1", export_static=[1]))
    static_b1 = next(a for a in pushed if not a.dynamic_batch)
    dynamic = next(a for a in pushed if a.dynamic_batch)
    out = tmp_path / "profile.json"
    result = edge_agent("profile", "--registry", str(tmp_path / "reg"), "--model-name", "nanodet", "--source",
                        str(short_video), "--batch-sizes", "1,2", "--batches", "1", "--cache-dir",
                        str(tmp_path / "cache"), "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = ProfileReport.model_validate_json(out.read_text())
    engines = {r.batch_size: r.engine or "" for r in report.rows}
    assert static_b1.id[:12] in engines[1] and " b1 " in engines[1]
    assert dynamic.id[:12] in engines[2] and "dynamic" in engines[2]
    assert report.model == f"nanodet 1 from {tmp_path / 'reg'}" and report.backend == "onnxruntime"
    assert len(list((tmp_path / "cache").iterdir())) == 2, "both artifacts fetched into the cache"

    missing = edge_agent("profile", "--registry", str(tmp_path / "reg"), "--model-name", "nope")
    assert missing.returncode == 2 and "unknown model 'nope'" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("command", ["run", "profile"])
def test_a_model_type_the_registry_record_contradicts_is_refused(tmp_path: Path, short_video: Path,
                                                                 command: str) -> None:
    """The agent starts from a registry artifact: its recorded type picks the adapter (a TensorRT plan has no
    graph to infer it from), and a --model-type that disagrees with it is one line, exit 2."""
    asyncio.run(Registry(open_store(str(tmp_path / "reg"))).push(MODEL, "nano", "1"))
    result = edge_agent(command, "--registry", str(tmp_path / "reg"), "--model-name", "nano", "--model-type",
                        "yolo-v5", "--source", str(short_video), "--cache-dir", str(tmp_path / "cache"),
                        *(["--max-frames", "1"] if command == "run" else ["--batch-sizes", "1", "--batches", "1"]))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "--model-type yolo-v5, but the registry records nano 1 as nanodet" in lines[0]


def test_pytorch_missing_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # Where PyTorch is installed, a package that fails to import the way a missing one does shadows it.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--max-frames", "4", "--backend",
                             "pytorch"], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 2, result.stderr
    assert "PyTorch is not installed" in result.stderr and "Traceback" not in result.stderr


def test_tensorrt_missing_is_one_line_and_exit_2() -> None:
    from edge_agent.engines import available_backends

    if "tensorrt" in available_backends():
        pytest.skip("TensorRT is installed here: tests/test_gpu_path.py runs its real path instead")
    result = edge_agent("run", "--max-frames", "4", "--backend", "tensorrt")
    assert result.returncode == 2, result.stderr
    assert "TensorRT is not installed" in result.stderr and "Traceback" not in result.stderr


def test_run_admits_against_a_profile_file_and_reports_every_stream(tmp_path: Path) -> None:
    row = dict(realtime_limit_ms=0, margin_ms=0, meets_realtime=True, throughput_fps=1, infer_fps=1,
               peak_memory_bytes=0, memory_kind="process_rss")
    # ~15 ms a frame at every size: two 24 fps streams fit (0.72 at b4 with headroom 0.8), three do not.
    rows = [dict(batch_size=b, pre_ms=b * 0.5, infer_ms=b * 14, post_ms=b * 0.5, total_ms=b * 15, **row)
            for b in (1, 2, 4)]
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(dict(device="x86_64 CPU x2", backend="onnxruntime", model="m", source="v",
                                       fps=24, batches_per_size=4, rows=rows)))
    summary_path = tmp_path / "summary.json"
    result = edge_agent("run", *["--source", str(VIDEO)] * 4, "--fps", "24", "--max-frames", "24", "--profile",
                        str(profile), "--summary", str(summary_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stream s0: admitted" in result.stdout and "stream s1: admitted" in result.stdout
    assert "stream s2: PARKED - refused: 3 stream(s), 72 fps" in result.stdout
    assert "utilisation 1.08 > headroom 0.80" in result.stdout
    assert "streams (admission control)" in result.stdout
    summary = RunSummary.model_validate_json(summary_path.read_text())
    states = {s.stream_id: s for s in summary.per_stream}
    assert [states[f"s{i}"].state for i in range(4)] == ["admitted", "admitted", "parked", "parked"]
    assert states["s3"].frames_in == 0 and states["s0"].frames_in + states["s1"].frames_in == 24
    assert summary.streams == 2

    bad = edge_agent("run", "--max-frames", "4", "--profile", str(tmp_path / "none.json"))
    assert bad.returncode == 2 and "--profile" in bad.stderr and "Traceback" not in bad.stderr


async def test_run_takes_its_broker_settings_from_the_environment(broker, short_video: Path, tmp_path: Path) -> None:
    """EDGEBATCH_BROKER_URL, _PREFIX, _AGENT_ID and _TELEMETRY_INTERVAL_S alone make the agent publish
    (the README promises it; argparse defaults used to win over them)."""
    import asyncio
    import os

    from mqtt_bus import BrokerSettings
    from tests.mqtt_helpers import Peer, eventually

    env = {**os.environ, "EDGEBATCH_BROKER_URL": broker.url, "EDGEBATCH_PREFIX": "site7/eb",
           "EDGEBATCH_AGENT_ID": "env-cam", "EDGEBATCH_TELEMETRY_INTERVAL_S": "0.2"}
    async with Peer(BrokerSettings.from_url(broker.url), "env-observer", ["site7/eb/agents/+/telemetry"]) as peer:
        await peer.bus.wait_connected(10)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_agent.cli", "run", "--source", str(short_video), "--loop", "--fps", "10",
            "--no-admission", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await eventually(lambda: len(peer.heard) >= 3 or process.returncode is not None, 60,
                             "telemetry on the prefix from the environment")
        finally:
            if process.returncode is None:
                process.terminate()
            _, err = await process.communicate()
    assert len(peer.heard) >= 3, err.decode()[-2000:]
    assert {m.topic for m in peer.heard} == {"site7/eb/agents/env-cam/telemetry"}


def test_registry_cli_habits_json_listing_store_after_the_command_and_pull_into_a_folder(tmp_path: Path) -> None:
    store = tmp_path / "reg"

    def registry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "model_registry.cli", *args], capture_output=True, text=True,
                              timeout=240, cwd=tmp_path)

    pushed = registry("push", str(MODEL), "--name", "nano", "--version", "1", "--export-static", "2", "--store",
                      str(store))
    assert pushed.returncode == 0, pushed.stderr
    listed = registry("list", "--store", str(store), "--json")  # --store after the command
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {(r["name"], r["version"], tuple(r["batch_sizes"]), r["dynamic_batch"]) for r in rows} >= {
        ("nano", "1", (2,), False)}
    assert all(len(r["sha256"]) == 64 for r in rows)
    pulled = registry("--store", str(store), "pull", "--name", "nano", "--version", "1", "--batch-size", "2",
                      "--out", f"{tmp_path / 'models'}/")
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "models" / "nano-1-b2.onnx").stat().st_size > 1_000_000, "written into the folder, named"
    assert "nano-1-b2.onnx" in pulled.stdout
