"""The agent's settings tree: a YAML file, EDGEBATCH_* variables and flags, in that order of strength;
cameras by name with their own rate, deadline, score threshold and classes; one-line errors naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cli import build_parser, load_settings
from edge_agent.config import AgentConfig, source_cameras
from edge_agent.errors import EdgeAgentError
from edge_agent.stages import DetectionFilter
from schemas import Detection
from tests.conftest import VIDEO


def settings(tmp_path: Path, yaml_text: str | None, *flags: str, env: dict[str, str] | None = None,
             monkeypatch: pytest.MonkeyPatch | None = None):  # type: ignore[no-untyped-def]
    argv = ["config"]
    if yaml_text is not None:
        path = tmp_path / "agent.yml"
        path.write_text(yaml_text)
        argv += ["--config", str(path)]
    if monkeypatch is not None:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
    args = build_parser().parse_args([*argv, *flags])
    return load_settings(args), args


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_text = "agent: {id: from-file, prefix: file/prefix, telemetry_interval_s: 2}\npipeline: {fps: 3}\n"
    layered, args = settings(tmp_path, yaml_text, "--telemetry-interval", "0.5", monkeypatch=monkeypatch,
                             env={"EDGEBATCH_PREFIX": "env/prefix", "EDGEBATCH_TELEMETRY_INTERVAL_S": "4"})
    cfg = layered.config
    assert (cfg.agent.id, cfg.agent.prefix, cfg.agent.telemetry_interval_s, cfg.pipeline.fps) == (
        "from-file", "env/prefix", 0.5, 3.0)
    origin = {k: o for k, _, o in layered.effective()}
    assert origin["agent.id"].startswith("file ")
    assert origin["agent.prefix"] == "env EDGEBATCH_PREFIX"
    assert origin["agent.telemetry_interval_s"] == "flag --telemetry-interval"
    assert origin["pipeline.deadline_ms"] == "default"
    # What the rest of the CLI reads: the effective values under the flags' names.
    assert (args.prefix, args.telemetry_interval, args.fps, args.deadline_ms) == ("env/prefix", 0.5, 3.0, 1000.0)


def test_cameras_by_name_become_streams_with_their_own_settings(tmp_path: Path) -> None:
    yaml_text = f"""
pipeline: {{fps: 6, deadline_ms: 900, loop: true}}
cameras:
  gate: {{url: "{VIDEO}", fps: 10, deadline_ms: 400, score_threshold: 0.6, classes: [person, car]}}
  yard: {{url: "rtsp://10.0.0.9/cam", enabled: false}}
  dock: {{url: "{VIDEO}", loop: false}}
"""
    layered, _ = settings(tmp_path, yaml_text)
    specs = {s.stream_id: s for s in layered.config.stream_specs()}
    assert set(specs) == {"gate", "dock"}, "a disabled camera is not opened"
    assert (specs["gate"].fps, specs["gate"].deadline_ms, specs["gate"].loop) == (10.0, 400.0, True)
    assert (specs["dock"].fps, specs["dock"].deadline_ms, specs["dock"].loop) == (6.0, None, False)
    # --source replaces the file's cameras; NAME=URL names a stream, a plain URL is s<i>.
    layered, _ = settings(tmp_path, yaml_text, "--source", f"door={VIDEO}", "--source", str(VIDEO))
    assert [s.stream_id for s in layered.config.stream_specs()] == ["door", "s1"]
    assert source_cameras(["rtsp://u:p@h/x?a=b"]) == {"s0": {"url": "rtsp://u:p@h/x?a=b"}}
    with pytest.raises(ValueError, match="given twice"):
        source_cameras(["a=x.avi", "a=y.avi"])


@pytest.mark.parametrize(("yaml_text", "flags", "expected"), [
    ("cameras:\n  gate: {url: x.avi, fsp: 10}\n", [], "cameras.gate.fsp: unknown key (from file"),
    ("agnet: {id: x}\n", [], "agnet: unknown key (in file"),
    ("pipeline: {deadline_ms: -5}\n", [], "pipeline.deadline_ms: Input should be greater than 0 (from file"),
    ("cameras:\n  gate: {url: x.avi, score_threshold: 2}\n", [], "cameras.gate.score_threshold"),
    ("cameras:\n  gate: {url: x.avi, model: yolo}\n", [], "camera 'gate' asks for model 'yolo'"),
    ("cameras:\n  'a/b': {url: x.avi}\n", [], "cameras.a/b"),
    ("cameras: [1, 2\n", [], "line 2"),
    ("- just\n- a list\n", [], "expected a mapping of settings"),
    ("agent: {id: 'a/b'}\n", [], "agent.id"),
    (None, ["--source", "a=x.avi", "--source", "a=y.avi"], "stream name 'a' given twice"),
])
def test_a_bad_setting_is_one_line_naming_the_key(tmp_path: Path, yaml_text: str | None, flags: list[str],
                                                   expected: str) -> None:
    with pytest.raises(EdgeAgentError, match="settings: |given twice") as caught:
        settings(tmp_path, yaml_text, *flags)
    message = str(caught.value)
    assert expected in message and "\n" not in message, message


def test_a_bad_environment_value_names_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EdgeAgentError, match=r"agent.telemetry_interval_s: .* \(from env "
                       r"EDGEBATCH_TELEMETRY_INTERVAL_S\)"):
        settings(tmp_path, None, monkeypatch=monkeypatch, env={"EDGEBATCH_TELEMETRY_INTERVAL_S": "soon"})


def test_config_print_is_a_command_with_json(tmp_path: Path) -> None:
    path = tmp_path / "agent.yml"
    path.write_text("agent: {id: box-7}\n")
    result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "config", "--config", str(path), "--json",
                             "--fps", "4"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["agent.id"] == {"value": "box-7", "from": f"file {path}"}
    assert shown["pipeline.fps"] == {"value": 4.0, "from": "flag --fps"}
    bad = tmp_path / "bad.yml"
    bad.write_text("pipeline: {fsp: 4}\n")
    result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"edge-agent: error: settings: pipeline.fsp: unknown key (from file "
                                                  f"{bad})"]


def test_defaults_serve_the_sample_video() -> None:
    cfg = AgentConfig()
    assert [s.stream_id for s in cfg.stream_specs()] == ["s0"] and Path(cfg.cameras["s0"].url) == VIDEO


def test_a_camera_filter_keeps_its_classes_above_its_score() -> None:
    dets = [Detection(class_id=0, label="person", score=0.9, box=(0, 0, 1, 1)),
            Detection(class_id=0, label="person", score=0.4, box=(0, 0, 1, 1)),
            Detection(class_id=2, label="car", score=0.95, box=(0, 0, 1, 1))]
    assert DetectionFilter(0.5, frozenset({"person"})).apply(dets) == [dets[0]]
    assert DetectionFilter(None, frozenset({"car"})).apply(dets) == [dets[2]]
    assert DetectionFilter(0.5, None).apply(dets) == [dets[0], dets[2]]


def test_run_serves_named_cameras_with_their_filters(tmp_path: Path) -> None:
    path = tmp_path / "agent.yml"
    detections = tmp_path / "d.jsonl"
    path.write_text(f"""
pipeline: {{fps: 10, max_frames: 24}}
admission: {{enabled: false}}
outputs: {{detections: "{detections}"}}
cameras:
  gate: {{url: "{VIDEO}", score_threshold: 0.5, classes: [person]}}
  lobby: {{url: "{VIDEO}"}}
  yard: {{url: "rtsp://127.0.0.1:9/none", enabled: false}}
""")
    result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(path)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in detections.read_text().splitlines()]
    by_stream: dict[str, list[dict]] = {}
    for row in rows:
        by_stream.setdefault(row["stream_id"], []).extend(row["detections"])
    assert set(by_stream) == {"gate", "lobby"}
    assert by_stream["gate"] and all(d["label"] == "person" and d["score"] >= 0.5 for d in by_stream["gate"])
    assert any(d["score"] < 0.5 for d in by_stream["lobby"]), "the other camera keeps the decoder's threshold"


def test_a_backends_own_settings_reach_its_engine(tmp_path: Path) -> None:
    from edge_agent.engines import load_engine
    from tests.conftest import MODEL

    yaml_text = "backends: {onnxruntime: {intra_op_threads: 1, providers: [CPUExecutionProvider]}}\n"
    layered, _ = settings(tmp_path, yaml_text)
    options = layered.config.backends.options()
    assert options == {"onnxruntime": {"intra_op_threads": 1, "providers": ["CPUExecutionProvider"]},
                       "pytorch": {}, "tensorrt": {}}
    engine = load_engine(MODEL, "onnxruntime", options["onnxruntime"])
    try:
        assert engine._session.get_session_options().intra_op_num_threads == 1  # type: ignore[attr-defined]
        assert engine._session.get_providers() == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    finally:
        engine.close()
    with pytest.raises(EdgeAgentError, match=r"backends.onnxruntime.threads: unknown key"):
        settings(tmp_path, "backends: {onnxruntime: {threads: 1}}\n")


def test_printed_settings_never_show_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_text = "cameras:\n  gate: {url: 'rtsp://admin:cam-p/w@10.0.0.5/s1'}\n"
    layered, _ = settings(tmp_path, yaml_text, "--broker", "mqtt://u:broker-pw@h", monkeypatch=monkeypatch,
                          env={"EDGEBATCH_REGISTRY": "mongodb://agent:mongo-pw@cloud:27017/edgebatch"})
    shown = "\n".join(layered.lines())
    for secret in ("broker-pw", "mongo-pw", "cam-p/w", "cam-p"):
        assert secret not in shown, secret
    assert "mqtt://u:***@h" in shown and "mongodb://agent:***@cloud:27017/edgebatch" in shown
    assert layered.config.broker.url == "mqtt://u:broker-pw@h", "only the display hides it"


def test_a_section_that_is_not_a_mapping_is_an_error_not_replaced(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EdgeAgentError, match="broker: expected a mapping of settings, got str"):
        settings(tmp_path, "broker: 'mqtt://h'\n", monkeypatch=monkeypatch,
                 env={"EDGEBATCH_BROKER_CA_FILE": "/etc/ca.crt"})
