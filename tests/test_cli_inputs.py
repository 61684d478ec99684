"""Every command-line input of the three CLIs, given a bad value: one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL

REGISTRY_CASES = [
    (["push", "/no/such.onnx", "--name", "a", "--version", "1"], "/no/such.onnx: file not found"),
    (["push", str(MODEL), "--name", "a/b", "--version", "1"], "model name 'a/b'"),
    (["push", str(MODEL), "--name", "a", "--version", "1+"], "model version '1+'"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--batch-sizes", "0"], "batch sizes must be >= 1"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--export-static", "x"], "comma-separated list"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--format", "pt"], "invalid choice: 'pt'"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--broker", "http://x"], "scheme must be"),
    (["push", str(MODEL), "--name", "a", "--version", "1", "--prefix", "a+b", "--broker", "mqtt://127.0.0.1:9"],
     "topic prefix segment 'a+b'"),
    (["--store", "/proc/no/registry", "list"], "registry directory /proc/no/registry"),
    (["--store", "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300", "list"], "MongoDB at mongodb://127.0.0.1:9"),
    (["pull", "deadbeef", "--out", "x.onnx"], "artifact deadbeef not in registry"),
    (["pull", "--name", "a", "--version", "1", "--batch-size", "0", "--out", "x"], "0 must be between 1 and 1024"),
    (["pull", "--name", "a", "--out", "x"], "pull needs an id, or --name and --version"),
    (["rm", "nope"], "artifact nope not in registry"),
    ([], "the following arguments are required: command"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


def one_line_error(module: str, args: list[str], expected: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120,
                            cwd=cwd)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (args, result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, (args, result.stderr[-2000:])
    assert len(lines) == 1 and expected in lines[0], (args, result.stderr[-2000:])


@pytest.mark.parametrize(("args", "expected"), REGISTRY_CASES, ids=[" ".join(a)[:60] for a, _ in REGISTRY_CASES])
def test_model_registry_bad_input(args: list[str], expected: str, tmp_path: Path) -> None:
    one_line_error("model_registry.cli", args, expected, tmp_path)
