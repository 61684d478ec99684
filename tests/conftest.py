"""Shared fixtures: the real sample model and video, and a real mosquitto on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

from edge_agent.engines import InferenceEngine, load_engine
from edge_agent.nanodet import NanoDetDecoder, load_labels

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
MODEL = SAMPLES / "models" / "nanodet-m-416-coco.onnx"
LABELS = SAMPLES / "models" / "coco.names"
VIDEO = SAMPLES / "video" / "vtest.avi"
IMAGES = SAMPLES / "images"


@pytest.fixture(scope="session")
def engine() -> InferenceEngine:
    return load_engine(MODEL)


@pytest.fixture(scope="session")
def decoder() -> NanoDetDecoder:
    return NanoDetDecoder(load_labels(LABELS))


@pytest.fixture(scope="session")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 frames of the sample video, re-encoded as MJPG (fast to decode, easy to corrupt)."""
    path = tmp_path_factory.mktemp("video") / "short.avi"
    cap = cv2.VideoCapture(str(VIDEO))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 576))
    for _ in range(40):
        ok, frame = cap.read()
        assert ok
        writer.write(frame)
    writer.release()
    cap.release()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        pytest.fail("mosquitto is not installed: run scripts/test.sh, which installs it")
    return found


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    config: Path

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def start(self) -> None:
        self.process = start_mosquitto(self.config, self.port)


def start_mosquitto(config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {proc.returncode}") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start listening within 10 s")


def write_mosquitto_config(directory: Path, port: int) -> Path:
    config = directory / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_packet_size 1048576\nlog_dest none\n"
    )
    return config


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    port = free_port()
    config = write_mosquitto_config(tmp_path_factory.mktemp("mosquitto"), port)
    b = Broker("127.0.0.1", port, start_mosquitto(config, port), config)
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker this test alone uses, so it may stop and restart it."""
    port = free_port()
    config = write_mosquitto_config(tmp_path, port)
    b = Broker("127.0.0.1", port, start_mosquitto(config, port), config)
    yield b
    b.stop()


@pytest.fixture
def prefix() -> str:
    """A unique topic prefix per test, so tests never see each other's retained messages."""
    return f"t{uuid.uuid4().hex[:10]}"
