"""A private mosquitto on a free loopback port: for the one-command demo and the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class BrokerNotInstalled(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise BrokerNotInstalled("mosquitto is not installed: run scripts/setup.sh (it installs it)")


def wait_listening(host: str, port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Return once ``process`` accepts TCP connections on host:port; RuntimeError if it exits or
    does not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"exited with status {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"did not listen on port {port} within {timeout_s} s") from None
            time.sleep(0.05)


class LocalBroker:
    """mosquitto listening on 127.0.0.1 only, with its own config and data folder; anonymous
    unless ``auth_lines`` (password_file / acl_file lines) say otherwise.

    ``persistence`` keeps retained messages across ``restart()``, as a production broker does.
    """

    def __init__(self, directory: Path | None = None, port: int | None = None, persistence: bool = True,
                 auth_lines: str | None = None, extra_config: str = "") -> None:
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="edgebatch-mosquitto-")
        self.directory = Path(directory or self._tmp.name)  # type: ignore[union-attr]
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.config = self.directory / "mosquitto.conf"
        # Started as root, mosquitto would switch to its own user, who cannot write our folder.
        run_as = "user root\n" if os.geteuid() == 0 else ""
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{auth_lines or 'allow_anonymous true'}\n"
            f"{run_as}"
            f"persistence {'true' if persistence else 'false'}\n"
            f"persistence_location {self.directory}/\n"
            "autosave_interval 1\n"
            "max_packet_size 1048576\n"
            "log_dest none\n"
            f"{extra_config}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> LocalBroker:
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(self.host, self.port, self.process, timeout_s)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"mosquitto {exc}") from None
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no last save, so only what autosave wrote survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
