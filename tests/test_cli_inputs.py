"""Every command-line input of the three CLIs, given a bad value: one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mqtt_bus.local_broker import free_port
from tests.conftest import MODEL, VIDEO

REGISTRY_CASES = [
    (["push", "/no/such.onnx", "--name", "a", "--version", "1"], "/no/such.onnx: file not found"),
    (["push", str(MODEL), "--name", "a/b", "--version", "1"], "model name 'a/b'"),
    (["push", str(MODEL), "--name", "a", "--version", "1+"], "model version '1+'"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--batch-sizes", "0"], "between 1 and 1024"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--export-static", "4096"], "between 1 and 1024"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--export-static", "x"], "comma-separated list"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--format", "pt"], "invalid choice: 'pt'"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--broker", "http://x"], "scheme must be"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--prefix", "a+b", "--broker", "mqtt://127.0.0.1:9"],
     "topic prefix segment 'a+b'"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--model-type", "centernet"], "invalid choice: 'centernet'"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--model-type", "yolo-v5"],
     "nanodet-m-416-coco.onnx: --model-type yolo-v5 contradicts the model: its outputs are those of a nanodet model"),
    (["build", "--onnx", str(MODEL), "--name", "a", "--version", "1", "--model-type", "yolox"],
     "--model-type yolox contradicts the model"),  # checked before anything is built (or a GPU looked for)
    (["--store", "/proc/no/registry", "list"], "registry directory /proc/no/registry"),
    (["--store", "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300", "list"], "MongoDB at mongodb://127.0.0.1:9"),
    (["pull", "deadbeef", "--out", "x.onnx"], "artifact deadbeef not in registry"),
    (["pull", "--name", "a", "--version", "1", "--batch-size", "0", "--out", "x"], "0 must be between 1 and 1024"),
    (["pull", "--name", "a", "--out", "x"], "pull needs an id, or --name and --version"),
    (["rm", "nope"], "artifact nope not in registry"),
    (["list", "--store", "/proc/no/registry"], "registry directory /proc/no/registry"),
    (["pull", "--name", "a", "--version", "1", "--out", "d/", "--store", "/proc/no/registry"],
     "registry directory /proc/no/registry"),
    ([], "the following arguments are required: command"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


AGENT_CASES = [
    (["run", "--fps", "0"], "argument --fps: 0 must be in (0, 1000]"),
    (["run", "--fps", "-3"], "argument --fps: -3 must be in (0, 1000]"),
    (["run", "--fps", "nan"], "'nan' is not a finite number"),
    (["run", "--deadline-ms", "-5"], "argument --deadline-ms: -5 must be in (0, 3.6e+06]"),
    (["run", "--batch-size", "2000"], "2000 must be between 1 and 1024"),
    (["run", "--batch-size", "x"], "'x' is not an integer"),
    (["run", "--max-frames", "0"], "0 must be >= 1"),
    (["run", "--broker", "http://x"], "scheme must be mqtt:// or mqtts://"),
    (["run", "--broker", "mqtt://127.0.0.1:99999"], "Port out of range"),
    (["run", "--broker", "mqtt://host:abc"], "Port could not be cast"),
    (["run", "--broker", "mqtt://"], "has no host"),
    (["run", "--prefix", "a+b"], "topic prefix segment 'a+b'"),
    (["run", "--agent-id", "a/b"], "agent id 'a/b'"),
    (["run", "--telemetry-interval", "0"], "0 must be in [0.05, 3600]"),
    (["run", "--headroom", "2"], "admission.headroom: Input should be less than or equal to 1 (from flag --headroom)"),
    (["run", "--summary", "/proc/no/summary.json", "--max-frames", "2"], "--summary /proc/no/summary.json"),
    (["run", "--source", str(VIDEO), "--summary", "/", "--max-frames", "2"], "--summary /"),
    (["run", "--profile", "/no/profile.json"], "--profile /no/profile.json"),
    (["run", "--detections", "/proc/no/d.jsonl"], "--detections /proc/no/d.jsonl"),
    (["run", "--annotated", "/proc/no/video"], "--annotated /proc/no/video"),
    (["run", "--admission-batch-sizes", "2000"], "batch sizes must be integers between 1 and 1024"),
    (["run", "--broker", "mqtt://" + "a" * 70], "host is not a valid name"),
    (["profile", "--json", "/proc/no/p.json"], "--json /proc/no/p.json"),
    (["run", "--registry", "./empty-registry", "--model-name", "x"], "unknown model 'x'"),
    (["run", "--registry", "./empty-registry"], "--registry needs --model-name"),
    (["run", "--backend", "tflite"], "invalid choice: 'tflite'"),
    (["run", "--model-type", "centernet"], "invalid choice: 'centernet'"),
    (["profile", "--model-type", "centernet"], "invalid choice: 'centernet'"),
    (["run", "--config", "/no/agent.yml"], "--config: /no/agent.yml: No such file or directory"),
    (["config", "--config", "/no/agent.yml"], "--config: /no/agent.yml: No such file or directory"),
    (["run", "--metrics", "nowhere"], "argument --metrics: 'nowhere' must be HOST:PORT"),
    (["run", "--metrics-advertise", "a b:9108"], "argument --metrics-advertise: 'a b:9108' must be HOST:PORT"),
    (["run", "--source", "a=x.avi", "--source", "a=y.avi"], "stream name 'a' given twice"),
    (["config", "--fps", "0"], "argument --fps: 0 must be in (0, 1000]"),
    (["profile", "--batch-sizes", "0"], "batch sizes must be integers between 1 and 1024"),
    (["profile", "--fps", "0"], "argument --fps: 0 must be in (0, 1000]"),
    (["demo", "--duration", "0"], "argument --duration: 0 must be in (0, 86400]"),
    (["demo", "--streams", "0"], "0 must be >= 1"),
    (["demo", "--policy", "foo"], "unknown policy 'foo'; known: deadline, kum2022"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


def controller_cases() -> list[tuple[list[str], str]]:
    return [
        (["--policy", "foo"], "unknown policy 'foo'; known: deadline, kum2022"),
        (["--ladder", "1,x"], "comma-separated list"),
        (["--ladder", "1,2,5000"], "between 1 and 1024"),
        (["--ca-file", "/no/ca.crt"], "--ca-file: /no/ca.crt: No such file or directory"),
        (["--http", "a" * 70 + ":0"], "is not a valid host name"),
        (["--slo-ms", "nan"], "'nan' is not a finite number"),
        (["--slo-ms", "-1"], "slo_ms > 0"),
        (["--policy", "kum2022", "--memory-threshold", "1.5"], "memory threshold"),
        (["--policy", "kum2022", "--slo-ms", "500"], "policy.kum2022.slo_ms: unknown key (policy kum2022 takes:"),
        (["--broker", "http://x"], "scheme must be mqtt:// or mqtts://"),
        (["--broker", "mqtt://127.0.0.1:0"], "port 0 is not a port"),
        (["--prefix", "a/+"], "topic prefix segment '+'"),
        (["--id", "ctl/1"], "controller id 'ctl/1'"),
        (["--ownership", "random"], "invalid choice: 'random'"),
        (["--heartbeat-s", "0"], "0 must be in [0.05, 60]"),
        (["--fleet-interval", "0"], "0 must be in [0.5, 86400]"),
        (["--pending-timeout", "0"], "0 must be in (0, 86400]"),
        (["--refusal-hold", "-1"], "-1 must be in [0, 604800]"),
        (["--http", "nowhere"], "must be HOST:PORT (port 0-65535) or 'off'"),
        (["--config", "/no/controller.yml"], "--config: /no/controller.yml: No such file or directory"),
        (["--http-token-file", "/no/token"], "--http-token-file: /no/token: No such file or directory"),
        (["--ownership", "hrw", "--share-group", "a/b"], "share group 'a/b'"),
        (["--http", "127.0.0.1:70000"], "must be HOST:PORT (port 0-65535) or 'off'"),
        (["--http", "203.0.113.7:8080", "--broker", f"mqtt://127.0.0.1:{free_port()}"], "--http 203.0.113.7:8080"),
    ]


def one_line_error(module: str, args: list[str], expected: str, cwd: Path,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120,
                            cwd=cwd, env={**os.environ, **env} if env else None)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (args, result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, (args, result.stderr[-2000:])
    assert len(lines) == 1 and expected in lines[0], (args, result.stderr[-2000:])
    return result


@pytest.mark.parametrize(("args", "expected"), REGISTRY_CASES, ids=[" ".join(a)[:60] for a, _ in REGISTRY_CASES])
def test_model_registry_bad_input(args: list[str], expected: str, tmp_path: Path) -> None:
    one_line_error("model_registry.cli", args, expected, tmp_path)


@pytest.mark.parametrize(("args", "expected"), AGENT_CASES, ids=[" ".join(a)[:60] for a, _ in AGENT_CASES])
def test_edge_agent_bad_input(args: list[str], expected: str, tmp_path: Path) -> None:
    one_line_error("edge_agent.cli", args, expected, tmp_path)


@pytest.mark.parametrize(("args", "expected"), controller_cases(), ids=lambda v: " ".join(v)[:60] if isinstance(v, list)
                         else None)
def test_cloud_controller_bad_input(args: list[str], expected: str, tmp_path: Path) -> None:
    one_line_error("cloud_controller.cli", args, expected, tmp_path)


def test_cloud_controller_http_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--http", f"127.0.0.1:{port}", "--broker", f"mqtt://127.0.0.1:{free_port()}"]
        one_line_error("cloud_controller.cli", args, f"--http 127.0.0.1:{port}", tmp_path)


# The broker connection flags every connecting CLI shares (mqtt_bus.args.add_broker_options), and
# their environment variables: each mistake is one line, and never shows the password.
BROKER_CLIS = {
    "edge_agent.cli": ["run", "--source", str(VIDEO), "--max-frames", "1"],
    "cloud_controller.cli": ["--http", "off"],
    "model_registry.cli": ["push", str(MODEL), "--name", "a", "--version", "1"],
}


def broker_cases(files: Path) -> list[tuple[list[str], dict[str, str], str]]:
    (files / "pw").write_text("hunter2\n")
    (files / "empty").write_text("")
    (files / "garbage.pem").write_text("not a certificate\n")
    pw, empty, garbage = str(files / "pw"), str(files / "empty"), str(files / "garbage.pem")
    return [
        (["--broker", "mqtt://u:hunter2@h", "--broker-password-file", pw], {}, "has a password and a password file"),
        (["--broker", "mqtt://h", "--broker-password-file", pw], {}, "needs the user in the URL"),
        (["--broker", "mqtt://u@h", "--broker-password-file", empty], {}, "is empty"),
        (["--broker", "mqtt://u@h", "--broker-password-file", "/no/pw"], {}, "/no/pw: No such file"),
        (["--broker", "mqtts://u@h", "--client-cert", garbage], {}, "go together"),
        (["--broker", "mqtt://u@h", "--ca-file", garbage], {}, "needs an mqtts:// broker URL"),
        (["--broker", "mqtts://u@h", "--ca-file", garbage], {}, "broker TLS files"),
        (["--broker", "mqtt://u:hunter2@h:99999"], {}, "the port is not a number"),
        ([], {"EDGEBATCH_BROKER_URL": "http://u:hunter2@h"}, "scheme must be mqtt:// or mqtts://"),
        (["--broker", "mqtt://u@h"], {"EDGEBATCH_BROKER_PASSWORD_FILE": empty}, "is empty"),
    ]


@pytest.mark.parametrize("module", sorted(BROKER_CLIS))
def test_broker_connection_mistakes_are_one_line_without_the_password(module: str, tmp_path: Path) -> None:
    for args, env, expected in broker_cases(tmp_path):
        result = one_line_error(module, [*BROKER_CLIS[module], *args], expected, tmp_path, env)
        assert "hunter2" not in result.stderr + result.stdout, (args, env, result.stderr)
