"""The README's main job, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_the_whole_loop_and_loses_nothing() -> None:
    result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "demo", "--streams", "1", "--duration", "9"],
                            capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pushed 6 artifacts" in out
    # It starts at batch 4, more than one 10 fps stream needs: the default policy brings it down for latency.
    assert "controller generation 1: batch 4 -> 2" in out, out[-3000:]
    assert "agent swapped to nanodet-m-416-coco 1 batch 2" in out
    assert "frames lost: 0" in out
    assert "delay per stage" in out
