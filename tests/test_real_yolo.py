"""The ultralytics adapter on a real YOLOv8: Ultralytics' COCO yolov8n exported as ``yolo export`` lays it out
([B, 84, 8400], ``names`` in the metadata; tests/ultralytics_model.py). The type and the labels come from the
graph, the sample photos give their objects, and ``edge-agent run`` serves it. (The device chain on it:
tests/test_device_path.py.)"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from edge_agent.adapters import (
    YoloUltralyticsAdapter,
    adapter_for,
    detect_model_type,
    input_size_of,
    labels_from_metadata,
)
from edge_agent.nanodet import load_labels
from schemas import FrameDetections, RunSummary
from tests.conftest import LABELS, VIDEO
from tests.test_adapters import EXPECTED, Served, _check_expected, _image
from tests.test_cli import edge_agent


@pytest.fixture(scope="module")
def v8(yolov8n: Path) -> Served:
    return Served(onnx.load(str(yolov8n)))


def test_the_export_is_inferred_as_an_ultralytics_detector(yolov8n: Path) -> None:
    model = onnx.load(str(yolov8n), load_external_data=False)
    assert detect_model_type(model) == "yolo-ultralytics"
    assert input_size_of(model) == (640, 640)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [84, 8400]
    labels, coco = labels_from_metadata(model), load_labels(LABELS)
    assert labels is not None and len(labels) == len(coco) == 80  # COCO's 80 in the same order; some spelt
    for label in ("person", "bicycle", "car", "truck", "dog", "horse"):  # otherwise (motorcycle/motorbike)
        assert labels.index(label) == coco.index(label)
    adapter = adapter_for(yolov8n, (640, 640), ["output0"], None, None, ["not", "these"])
    assert isinstance(adapter, YoloUltralyticsAdapter) and adapter.labels[:3] == ["person", "bicycle", "car"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_yolov8n_finds_the_objects(v8: Served, name: str) -> None:
    image = _image(name)
    found = v8.detect([image])[0]
    _check_expected(name, found, image)
    if name == "dog.jpg":
        assert {"truck", "car"} & {d.label for d in found}, [d.label for d in found]


def test_a_batch_gives_what_each_image_gives_alone(v8: Served) -> None:
    images = [_image(n) for n in sorted(EXPECTED)]
    alone = [v8.detect([im])[0] for im in images]
    for a, b in zip(alone, v8.detect(images), strict=True):
        assert [d.label for d in a] == [d.label for d in b]
        for da, db in zip(a, b, strict=True):
            assert max(abs(x - y) for x, y in zip(da.box, db.box, strict=True)) <= 0.15
            assert abs(da.score - db.score) < 1e-3


def test_agent_serves_yolov8n_with_the_type_inferred(tmp_path: Path, yolov8n: Path) -> None:
    summary_path, detections = tmp_path / "out.json", tmp_path / "det.jsonl"
    result = edge_agent("run", "--model", str(yolov8n), "--offline", "--max-frames", "8", "--source", str(VIDEO),
                        "--summary", str(summary_path), "--detections", str(detections))
    assert result.returncode == 0, result.stderr
    summary = RunSummary.model_validate_json(summary_path.read_text())
    assert summary.frames_in == summary.frames_out == 8 and summary.dropped == 0
    frames = [FrameDetections.model_validate_json(line) for line in detections.read_text().splitlines()]
    assert len(frames) == 8
    assert all(sum(d.label == "person" for d in f.detections) >= 2 for f in frames), frames  # a street of walkers
