"""A MongoDB wire-protocol server (secantusdb, test-only) on a free loopback port, as a process a test owns:
the session's ``mongo_url`` fixture runs one, and a fault test runs its own to kill -9 and restart."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mqtt_bus.local_broker import free_port, wait_listening

MEMORY = ":memory:"


class MongoServerMissing(RuntimeError):
    """No MongoDB wire server to start (scripts/test.sh installs secantusdb)."""


def server_binary() -> str:
    server = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    if not Path(server).exists():
        raise MongoServerMissing("no MongoDB: set MONGO_URL or run scripts/test.sh (it installs secantusdb)")
    return server


class MongoServer:
    """``storage`` is a folder (kept across ``start()`` calls: a restart finds what was pushed, even after
    ``kill()``, since every commit is synced) or ``:memory:`` (lost when the process ends)."""

    def __init__(self, log_dir: Path, storage: str | Path = MEMORY, port: int | None = None) -> None:
        self.log = Path(log_dir) / "mongo-server.log"
        self.storage = str(storage)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> MongoServer:
        """Listen on the same port as before; RuntimeError (with the log's tail) if it does not come up."""
        durable = [] if self.storage == MEMORY else ["--sync-on-commit"]  # so a kill -9 loses no commit
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [server_binary(), "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", self.storage,
                 "--log-level", "WARNING", *durable], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_listening("127.0.0.1", self.port, self.process, timeout_s)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"MongoDB test server {exc}: {self.log.read_text()[-2000:]}") from None
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown, sockets reset."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
