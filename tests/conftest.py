"""Shared fixtures: the real sample model and video, and a real mosquitto on a free port."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from edge_agent.adapters import ModelAdapter, NanoDetAdapter
from edge_agent.engines import InferenceEngine, load_engine
from edge_agent.nanodet import load_labels
from mqtt_bus.local_broker import BrokerNotInstalled, LocalBroker
from tests.darknet_model import yolov3_tiny_path
from tests.mongo_server import MongoServer
from tests.ultralytics_model import yolov8n_path

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
def decoder() -> ModelAdapter:
    return NanoDetAdapter(load_labels(LABELS))


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
    server = MongoServer(tmp_path_factory.mktemp("mongo"))
    try:
        server.start()
    except RuntimeError as exc:  # MongoServerMissing, or it did not come up
        pytest.fail(str(exc))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def yolov3_tiny() -> Path:
    """darknet yolov3-tiny as ONNX (fetched and converted once, then cached)."""
    return yolov3_tiny_path()


@pytest.fixture(scope="session")
def yolov8n() -> Path:
    """Ultralytics' COCO yolov8n as its ONNX export lays it out (fetched and exported once, then cached;
    skipped where PyTorch, which exports it, is missing)."""
    return yolov8n_path()
