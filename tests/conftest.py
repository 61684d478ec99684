"""Shared fixtures: the real sample model and video, and a real mosquitto on a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from edge_agent.engines import InferenceEngine, load_engine
from edge_agent.nanodet import NanoDetDecoder, load_labels
from mqtt_bus.local_broker import BrokerNotInstalled, LocalBroker, free_port, wait_listening

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


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """One mosquitto for the session; tests isolate themselves by topic prefix."""
    try:
        b = LocalBroker(persistence=False).start()
    except BrokerNotInstalled as exc:
        pytest.fail(str(exc))
    yield b
    b.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker this test alone uses, so it may stop and restart it (retained state persists)."""
    b = LocalBroker(tmp_path, persistence=True).start()
    yield b
    b.close()


@pytest.fixture
def prefix() -> str:
    """A unique topic prefix per test, so tests never see each other's retained messages."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``MONGO_URL`` when set; else a MongoDB wire-protocol server (secantusdb, test-only) on a free port."""
    if os.environ.get("MONGO_URL"):
        yield os.environ["MONGO_URL"]
        return
    server = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    if not Path(server).exists():
        pytest.fail("no MongoDB: set MONGO_URL or run scripts/test.sh (it installs secantusdb)")
    port = free_port()
    log = tmp_path_factory.mktemp("mongo") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([server, "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:",
                                 "--log-level", "WARNING"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening("127.0.0.1", port, proc, 60)
    except RuntimeError as exc:
        proc.kill()
        pytest.fail(f"MongoDB test server {exc}: {log.read_text()[-2000:]}")
    yield f"mongodb://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
