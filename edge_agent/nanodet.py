"""NanoDet-m (COCO, 416x416) pre- and post-processing.

Pre: resize to 416x416 (no letterbox), BGR, (x - mean) / std, HWC -> CHW.
Post: GFL decoding of the 3 strides, score threshold, per-class NMS, boxes back to frame pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from schemas import Detection

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
REG_BINS = 11
OUTPUT_NAMES = tuple(f"{kind}_s{s}" for s in STRIDES for kind in ("cls", "reg"))
_MEAN = np.array([103.53, 116.28, 123.675], dtype=np.float32)
_INV_STD = 1.0 / np.array([57.375, 57.12, 58.395], dtype=np.float32)
_MEAN_SCALAR = tuple(float(m) for m in _MEAN)
_INV_STD_CHW = _INV_STD[:, None, None]


def load_labels(path: str | Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def is_valid_image(image: object) -> bool:
    """A decodable frame: HxWx3 uint8 with both sides at least 2 pixels."""
    return (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
        and image.shape[0] >= 2
        and image.shape[1] >= 2
    )


def preprocess(image: np.ndarray) -> np.ndarray:
    """BGR uint8 HxWx3 -> float32 3x416x416, normalised."""
    # blobFromImage resizes, subtracts the mean and goes HWC -> CHW in one C++ pass.
    blob = cv2.dnn.blobFromImage(image, 1.0, (INPUT_SIZE, INPUT_SIZE), _MEAN_SCALAR, swapRB=False, crop=False)[0]
    blob *= _INV_STD_CHW
    return np.asarray(blob)


def _cell_centres(stride: int) -> np.ndarray:
    grid = INPUT_SIZE // stride
    idx = np.arange(grid * grid)
    return np.stack([((idx % grid) + 0.5) * stride, ((idx // grid) + 0.5) * stride], axis=1).astype(np.float32)


_CENTRES = {s: _cell_centres(s) for s in STRIDES}
_BINS = np.arange(REG_BINS, dtype=np.float32)


@dataclass(frozen=True)
class DecoderConfig:
    score_threshold: float = 0.35
    iou_threshold: float = 0.5
    max_detections: int = 100
    max_candidates: int = 1000  # per image, the best scores NMS considers


class NanoDetDecoder:
    """Turns the six raw output tensors of one batch into detections per image."""

    def __init__(self, labels: Sequence[str], config: DecoderConfig | None = None) -> None:
        self.labels = list(labels)
        self.config = config or DecoderConfig()

    def decode_batch(
        self, outputs: Mapping[str, np.ndarray], frame_sizes: Sequence[tuple[int, int]]
    ) -> list[list[Detection]]:
        """``frame_sizes`` are (height, width) of the original frames, one per real image;
        padded rows beyond ``len(frame_sizes)`` are ignored."""
        return [self.decode_one(outputs, i, h, w) for i, (h, w) in enumerate(frame_sizes)]

    def decode_one(self, outputs: Mapping[str, np.ndarray], index: int, height: int, width: int) -> list[Detection]:
        cfg = self.config
        boxes_all: list[np.ndarray] = []
        scores_all: list[np.ndarray] = []
        classes_all: list[np.ndarray] = []
        for stride in STRIDES:
            cls = outputs[f"cls_s{stride}"][index]
            best = cls.argmax(axis=1)
            best_score = cls[np.arange(cls.shape[0]), best]
            keep = np.nonzero(best_score > cfg.score_threshold)[0]
            if keep.size == 0:
                continue
            reg = outputs[f"reg_s{stride}"][index][keep].reshape(-1, 4, REG_BINS)
            reg = np.exp(reg - reg.max(axis=2, keepdims=True))
            reg /= reg.sum(axis=2, keepdims=True)
            dist = (reg @ _BINS) * stride  # (k, 4): left, top, right, bottom
            centres = _CENTRES[stride][keep]
            boxes = np.concatenate([centres - dist[:, :2], centres + dist[:, 2:]], axis=1)
            boxes_all.append(boxes)
            scores_all.append(best_score[keep])
            classes_all.append(best[keep])
        if not boxes_all:
            return []
        boxes = np.concatenate(boxes_all)
        scores = np.concatenate(scores_all).astype(np.float32)
        classes = np.concatenate(classes_all).astype(np.int32)
        if scores.size > cfg.max_candidates:
            top = np.argsort(-scores, kind="stable")[: cfg.max_candidates]
            boxes, scores, classes = boxes[top], scores[top], classes[top]
        scale = np.array([width, height, width, height], dtype=np.float32) / INPUT_SIZE
        boxes = boxes * scale
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        kept = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), scores.tolist(), classes.tolist(), cfg.score_threshold, cfg.iou_threshold
        )
        order = sorted(np.asarray(kept, dtype=int).reshape(-1).tolist(), key=lambda i: -scores[i])
        result: list[Detection] = []
        for i in order[: cfg.max_detections]:
            x1, y1, x2, y2 = boxes[i]
            result.append(
                Detection(
                    class_id=int(classes[i]),
                    label=self.labels[classes[i]] if classes[i] < len(self.labels) else str(classes[i]),
                    score=round(float(scores[i]), 4),
                    box=(
                        round(float(np.clip(x1, 0, width)), 1),
                        round(float(np.clip(y1, 0, height)), 1),
                        round(float(np.clip(x2, 0, width)), 1),
                        round(float(np.clip(y2, 0, height)), 1),
                    ),
                )
            )
        return result
