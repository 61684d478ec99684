"""What every model adapter shares: the ``ModelAdapter`` protocol, the pre-processing spec,
letterbox geometry (boxes go back to original pixels) and the score/NMS/``Detection`` tail."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from schemas import Detection


class AdapterError(ValueError):
    """A model whose type cannot be told, or whose outputs do not fit its adapter."""


@runtime_checkable
class ModelAdapter(Protocol):
    """Owns one model family's pre-processing and output decoding."""

    @property
    def model_type(self) -> str:
        """The key in ``ADAPTERS`` and the value of ``--model-type``."""
        ...

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the network input."""
        ...

    @property
    def labels(self) -> list[str]:
        """Class names by class id."""
        ...

    @property
    def spec(self) -> PreprocessSpec:
        """The input it wants, as data (``preprocess`` follows it on the host, the device path on a GPU)."""
        ...

    @property
    def config(self) -> DecoderConfig:
        """Score and IoU thresholds, and the most detections per image."""
        ...

    def check_engine(self, input_size: tuple[int, int], output_names: Sequence[str]) -> None:
        """Raise ``AdapterError`` unless a model with this input (width, height) and these outputs fits."""
        ...

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """BGR uint8 HxWx3 -> float32 3xHxW network input."""
        ...

    def decode_batch(
        self, outputs: Mapping[str, np.ndarray], frame_sizes: Sequence[tuple[int, int]]
    ) -> list[list[Detection]]:
        """Detections per real image, boxes in original pixels; ``frame_sizes`` are (height, width).
        Padded rows beyond ``len(frame_sizes)`` are ignored."""
        ...


@dataclass(frozen=True)
class DecoderConfig:
    score_threshold: float = 0.35
    iou_threshold: float = 0.5
    max_detections: int = 100
    # Per image, the best-scoring candidates NMS considers (detectors' own post-processing caps it too): keeps
    # a crowded or badly thresholded frame from costing quadratic time, and the host and device paths equal.
    max_candidates: int = 1000


def best_candidates(scores: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``limit`` best scores, best first (all of them, in that order, when fewer)."""
    order = np.argsort(-scores, kind="stable")
    return order[:limit]


@dataclass(frozen=True)
class PreprocessSpec:
    """How a family wants its input. ``mean``/``std`` are per channel in the output channel order,
    on the 0..255 scale (``/255`` is mean 0, std 255)."""

    input_size: tuple[int, int]  # (width, height)
    letterbox: bool = True
    centre: bool = True  # letterbox centred (darknet, ultralytics) or in the top-left corner (YOLOX)
    rgb: bool = True
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    pad_value: int = 114


@dataclass(frozen=True)
class Placement:
    """Where an original frame sits in the network input: ``input = original * scale + pad``."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int

    def to_original(self, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
        """xyxy boxes in input pixels -> xyxy in original pixels, clipped to the frame."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
        out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
        return out


def placement(height: int, width: int, input_size: tuple[int, int], letterbox: bool, centre: bool = True) -> Placement:
    """The geometry of ``letterbox_image``/stretch; a pure function of the sizes, so the decoder
    needs only the frame size to map boxes back."""
    in_w, in_h = input_size
    if not letterbox:
        return Placement(in_w / width, in_h / height, 0, 0)
    scale = min(in_w / width, in_h / height)
    new_w, new_h = _scaled(width, height, scale, input_size)
    if not centre:
        return Placement(new_w / width, new_h / height, 0, 0)
    return Placement(new_w / width, new_h / height, (in_w - new_w) // 2, (in_h - new_h) // 2)


def _scaled(width: int, height: int, scale: float, input_size: tuple[int, int]) -> tuple[int, int]:
    return min(input_size[0], max(1, round(width * scale))), min(input_size[1], max(1, round(height * scale)))


def letterbox_image(
    image: np.ndarray, input_size: tuple[int, int], pad_value: int = 114, centre: bool = True
) -> np.ndarray:
    """Resize keeping the aspect ratio onto a ``pad_value`` canvas of ``input_size`` (w, h), centred or
    in the top-left corner."""
    h, w = image.shape[:2]
    p = placement(h, w, input_size, letterbox=True, centre=centre)
    new_w, new_h = round(w * p.scale_x), round(h * p.scale_y)
    canvas = np.full((input_size[1], input_size[0], 3), pad_value, dtype=np.uint8)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[p.pad_y : p.pad_y + new_h, p.pad_x : p.pad_x + new_w] = resized
    return canvas


def preprocess_with(spec: PreprocessSpec, image: np.ndarray) -> np.ndarray:
    """BGR uint8 HxWx3 -> float32 3xHxW following ``spec``."""
    if spec.letterbox:
        image = letterbox_image(image, spec.input_size, spec.pad_value, spec.centre)
    # blobFromImage resizes (a no-op after the letterbox), swaps channels, subtracts the mean
    # and goes HWC -> CHW in one C++ pass.
    blob = cv2.dnn.blobFromImage(image, 1.0, spec.input_size, spec.mean, swapRB=spec.rgb, crop=False)[0]
    blob *= (1.0 / np.asarray(spec.std, dtype=np.float32))[:, None, None]
    return np.asarray(blob)


def nms_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    labels: Sequence[str],
    config: DecoderConfig,
) -> list[Detection]:
    """Class-aware NMS on xyxy boxes (original pixels, already clipped), best score first. A box that the clip
    left empty (it lay outside the frame) is no detection."""
    top = best_candidates(scores, config.max_candidates)
    boxes, scores, classes = boxes[top], scores[top], classes[top]
    real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, classes = boxes[real], scores[real], classes[real]
    if boxes.shape[0] == 0:
        return []
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    kept = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), scores.tolist(), classes.tolist(), config.score_threshold, config.iou_threshold
    )
    order = sorted(np.asarray(kept, dtype=int).reshape(-1).tolist(), key=lambda i: -scores[i])
    result: list[Detection] = []
    for i in order[: config.max_detections]:
        c = int(classes[i])
        x1, y1, x2, y2 = (round(float(v), 1) for v in boxes[i])
        result.append(
            Detection(
                class_id=c,
                label=labels[c] if c < len(labels) else str(c),
                score=round(float(scores[i]), 4),
                box=(x1, y1, x2, y2),
            )
        )
    return result
