"""YOLO heads with boxes decoded in the graph (cx, cy, w, h in input pixels):

- ``yolo-v5``: ``[B, N, 5+C]`` = box, objectness, class scores (YOLOv5/v7, darknet v3/v4 converted);
- ``yolo-ultralytics``: ``[B, 4+C, N]`` = box, class scores, no objectness (YOLOv8/v11);

and the anchor-free YOLOX head as its official ONNX export leaves it:

- ``yolox``: ``[B, N, 5+C]``, one row per cell of strides 8, 16, 32, box still relative to its cell
  (x, y offsets and log w, h in stride units), objectness and class scores after their sigmoid.

v5 and ultralytics letterbox (centred) an RGB /255 input; YOLOX letterboxes into the top-left corner
and takes BGR 0..255. Scores are the best class (times objectness where there is one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.adapters.base import (
    AdapterError,
    DecoderConfig,
    PreprocessSpec,
    nms_detections,
    placement,
    preprocess_with,
)
from schemas import Detection


class _YoloAdapter:
    has_objectness: bool
    model_type: str

    def __init__(
        self,
        labels: Sequence[str],
        input_size: tuple[int, int] = (640, 640),
        config: DecoderConfig | None = None,
        spec: PreprocessSpec | None = None,
        output_name: str | None = None,
    ) -> None:
        self.labels = list(labels)
        self.input_size = input_size
        self.config = config or DecoderConfig()
        self.spec = spec or self.default_spec(input_size)
        if self.spec.input_size != input_size:
            raise AdapterError(f"spec input size {self.spec.input_size} differs from {input_size}")
        self.output_name = output_name

    @staticmethod
    def default_spec(input_size: tuple[int, int]) -> PreprocessSpec:
        """Centred letterbox, RGB, /255: what v5/v7, darknet and ultralytics exports take."""
        return PreprocessSpec(input_size=input_size)

    def check_engine(self, input_size: tuple[int, int], output_names: Sequence[str]) -> None:
        if input_size != self.input_size:
            raise AdapterError(f"{self.model_type}: model input {input_size} is not the adapter's {self.input_size}")
        if self.output_name is None and len(output_names) != 1:
            raise AdapterError(f"{self.model_type}: expected one output, the model has {list(output_names)}")
        if self.output_name is not None and self.output_name not in output_names:
            raise AdapterError(f"{self.model_type}: output {self.output_name} not among {list(output_names)}")

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return preprocess_with(self.spec, image)

    def _predictions(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The output as [B, N, K] rows."""
        if self.output_name is not None:
            out = outputs[self.output_name]
        elif len(outputs) == 1:
            out = next(iter(outputs.values()))
        else:
            raise AdapterError(f"{self.model_type}: {len(outputs)} outputs {sorted(outputs)}; which one is the head?")
        if out.ndim != 3:
            raise AdapterError(f"{self.model_type}: output has shape {out.shape}, expected rank 3")
        return out

    def decode_batch(
        self, outputs: Mapping[str, np.ndarray], frame_sizes: Sequence[tuple[int, int]]
    ) -> list[list[Detection]]:
        pred = self._predictions(outputs)
        return [self.decode_one(pred[i], h, w) for i, (h, w) in enumerate(frame_sizes)]

    def decode_one(self, rows: np.ndarray, height: int, width: int) -> list[Detection]:
        """``rows`` is [N, 4(+1)+C] for one image."""
        first_class = 5 if self.has_objectness else 4
        cls = rows[:, first_class:]
        best = cls.argmax(axis=1)
        score = cls[np.arange(cls.shape[0]), best]
        if self.has_objectness:
            score = score * rows[:, 4]
        keep = np.nonzero(score > self.config.score_threshold)[0]
        if keep.size == 0:
            return []
        cxcywh = rows[keep, :4].astype(np.float32)
        xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
        p = placement(height, width, self.input_size, self.spec.letterbox, self.spec.centre)
        boxes = p.to_original(xyxy, height, width)
        scores, classes = score[keep].astype(np.float32), best[keep].astype(np.int32)
        return nms_detections(boxes, scores, classes, self.labels, self.config)


class YoloV5Adapter(_YoloAdapter):
    """``[B, N, 5+C]``: cx, cy, w, h, objectness, class scores."""

    model_type = "yolo-v5"
    has_objectness = True


class YoloUltralyticsAdapter(_YoloAdapter):
    """``[B, 4+C, N]``: cx, cy, w, h, class scores; rows are the last axis."""

    model_type = "yolo-ultralytics"
    has_objectness = False

    def _predictions(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return super()._predictions(outputs).transpose(0, 2, 1)


class YoloXAdapter(_YoloAdapter):
    """YOLOX ``[B, N, 5+C]`` raw head: boxes decoded here against the cell grid of each stride."""

    model_type = "yolox"
    has_objectness = True
    strides = (8, 16, 32)

    @staticmethod
    def default_spec(input_size: tuple[int, int]) -> PreprocessSpec:
        """Letterbox into the top-left corner, BGR, 0..255: what YOLOX's own export takes."""
        return PreprocessSpec(input_size, centre=False, rgb=False, std=(1.0, 1.0, 1.0))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        input_size = self.input_size
        cells: list[np.ndarray] = []
        scales: list[np.ndarray] = []
        for stride in self.strides:
            gw, gh = input_size[0] // stride, input_size[1] // stride
            ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
            cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
            scales.append(np.full((gw * gh, 1), stride))
        # Per row of the head: its cell's (x, y) and its stride (the device decoder uses the same grid).
        self.cells = np.concatenate(cells).astype(np.float32)
        self.cell_strides = np.concatenate(scales).astype(np.float32)

    def _predictions(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        raw = super()._predictions(outputs)
        if raw.shape[1] != self.cells.shape[0]:
            raise AdapterError(
                f"yolox: {raw.shape[1]} rows, but a {self.input_size} input has {self.cells.shape[0]} cells "
                f"at strides {self.strides}"
            )
        rows = raw.astype(np.float32, copy=True)
        rows[..., :2] = (raw[..., :2] + self.cells) * self.cell_strides
        rows[..., 2:4] = np.exp(raw[..., 2:4]) * self.cell_strides
        return rows
