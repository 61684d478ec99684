"""Real programs a test starts: stopped the way systemd or compose would stop them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from typing import IO


def stop_all(processes: Iterable[subprocess.Popen[bytes]], logs: Iterable[IO[bytes]] = ()) -> None:
    """SIGTERM to every one, then up to 30 s each to exit before SIGKILL; then close their log files."""
    processes = list(processes)
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    for f in logs:
        f.close()
