"""The detector finds what ../shared/data/README.md lists, and batching never changes a result."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.adapters import ModelAdapter
from edge_agent.engines import run_padded
from edge_agent.nanodet import NanoDetDecoder, is_valid_image, preprocess
from schemas import Detection
from tests.conftest import IMAGES

EXPECTED = {
    "dog.jpg": [("bicycle", (122, 128, 569, 424)), ("dog", (131, 221, 360, 542)), ("truck", (464, 85, 693, 166))],
    "person.jpg": [("person", (187, 100, 279, 376)), ("horse", (405, 139, 602, 347)), ("dog", (70, 264, 202, 346))],
    "grace_hopper.jpg": [("person", (4, 7, 513, 607))],
    "astronaut.png": [("person", (14, 14, 364, 507))],
    "coffee.png": [("cup", (147, 10, 426, 398))],
    "kite.jpg": [("kite", (594, 78, 673, 154)), ("person", None)],
}


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def detect(engine, decoder: ModelAdapter | NanoDetDecoder, images: list[np.ndarray]) -> list[list[Detection]]:
    outputs = run_padded(engine, np.stack([preprocess(im) for im in images]))
    return decoder.decode_batch(outputs, [im.shape[:2] for im in images])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_finds_expected_objects(engine, decoder, name: str) -> None:
    image = cv2.imread(str(IMAGES / name))
    found = detect(engine, decoder, [image])[0]
    for label, box in EXPECTED[name]:
        same_class = [d for d in found if d.label == label]
        assert same_class, f"{name}: no {label} among {[d.label for d in found]}"
        if box is not None:
            best = max(iou(d.box, box) for d in same_class)
            assert best >= 0.5, f"{name}: best {label} IoU {best:.2f} < 0.5"


def test_horses_are_found(engine, decoder) -> None:
    found = detect(engine, decoder, [cv2.imread(str(IMAGES / "horses.jpg"))])[0]
    assert sum(d.label in ("horse", "cow") for d in found) >= 2


def test_detections_identical_alone_and_in_a_batch(engine, decoder) -> None:
    names = sorted(EXPECTED)
    images = [cv2.imread(str(IMAGES / n)) for n in names]
    alone = [detect(engine, decoder, [im])[0] for im in images]
    batched = detect(engine, decoder, images)
    batched_reversed = detect(engine, decoder, images[::-1])[::-1]
    for name, a, b, c in zip(names, alone, batched, batched_reversed, strict=True):
        assert a, f"{name}: nothing detected"
        assert [d.label for d in a] == [d.label for d in b] == [d.label for d in c], name
        for da, db, dc in zip(a, b, c, strict=True):
            assert np.allclose(da.box, db.box, atol=0.15) and np.allclose(da.box, dc.box, atol=0.15), name
            assert abs(da.score - db.score) < 1e-3 and abs(da.score - dc.score) < 1e-3, name


def test_boxes_are_scaled_back_to_the_frame(engine, decoder) -> None:
    image = cv2.imread(str(IMAGES / "coffee.png"))
    small = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2))
    full, half = detect(engine, decoder, [image, small])
    cup_full = next(d for d in full if d.label == "cup")
    cup_half = next(d for d in half if d.label == "cup")
    assert iou(cup_full.box, tuple(v * 2 for v in cup_half.box)) > 0.8


def test_invalid_images_are_recognised() -> None:
    assert is_valid_image(np.zeros((4, 4, 3), np.uint8))
    assert not is_valid_image(None)
    assert not is_valid_image(np.zeros((0, 4, 3), np.uint8))
    assert not is_valid_image(np.zeros((4, 4), np.uint8))
    assert not is_valid_image(np.zeros((4, 4, 3), np.float32))
