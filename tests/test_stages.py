"""Stage plumbing: measured worker counts, and which chain an engine gets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.stages import MeasuredWorkers, candidate_counts, uses_device_chain
from tests.conftest import ROOT


def test_candidate_counts_double_up_to_the_limit() -> None:
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(5) == [1, 2, 4, 5]
    assert candidate_counts(16) == [1, 2, 4, 8, 16]


def test_work_that_waits_takes_every_worker_and_keeps_the_order() -> None:
    workers = MeasuredWorkers("t", max_workers=4)

    def wait(i: int) -> int:  # releases the GIL, as OpenCV's resize and NumPy's copies do
        time.sleep(0.005)
        return i * 10

    for _ in range(12):
        assert workers.map(wait, list(range(8))) == [i * 10 for i in range(8)]
    assert workers.chosen == 4, workers.measurements_ms()
    assert workers.measured_items == 8


def test_batches_twice_as_large_are_measured_again() -> None:
    workers = MeasuredWorkers("t", max_workers=4)

    def wait(i: int) -> int:
        time.sleep(0.003)
        return i

    for _ in range(6):
        workers.map(wait, [0, 1])
    assert workers.chosen == 2 and workers.measured_items == 2  # two items: two workers at most
    for _ in range(12):
        workers.map(wait, list(range(8)))
    assert workers.chosen == 4 and workers.measured_items == 8


def test_a_fixed_count_is_kept() -> None:
    workers = MeasuredWorkers("t", workers=3, max_workers=8)
    assert workers.map(lambda i: i + 1, list(range(9))) == list(range(1, 10)) and workers.chosen == 3


class TensorEngine:
    """The two attributes the chain choice reads (TensorRT's engine has them; it cannot run here)."""

    on_gpu = True

    def infer_device(self, batch: object) -> dict[str, object]:
        raise NotImplementedError


def test_without_pytorch_auto_keeps_the_host_chain(tmp_path: Path) -> None:
    assert uses_device_chain(TensorEngine(), "never") is False
    if __import__("importlib").util.find_spec("torch") is not None:
        assert uses_device_chain(TensorEngine(), "auto") is True and uses_device_chain(TensorEngine(), "always")
    # A TensorRT-only device: no PyTorch. The host chain serves, and "always" says what is missing.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\")\n")
    script = (
        "from tests.test_stages import TensorEngine\n"
        "from edge_agent.adapters import NanoDetAdapter\n"
        "from edge_agent.errors import BackendUnavailable\n"
        "from edge_agent.stages import HostPreprocess, StageSettings, default_stages, uses_device_chain\n"
        "assert not uses_device_chain(TensorEngine(), 'auto')\n"
        "assert isinstance(default_stages(TensorEngine(), NanoDetAdapter([]), {})[0], HostPreprocess)\n"
        "try:\n"
        "    default_stages(TensorEngine(), NanoDetAdapter([]), {}, StageSettings(device_path='always'))\n"
        "except BackendUnavailable as exc:\n"
        "    print('refused:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: the device chain (--device-path always) needs PyTorch" in done.stdout


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_an_engine_that_takes_no_tensors_gets_the_host_chain(engine, mode: str) -> None:
    assert uses_device_chain(engine, mode) is False  # ONNX Runtime's engine: host arrays only
