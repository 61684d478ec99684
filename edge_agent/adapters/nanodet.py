"""NanoDet-m: today's stretch pre-processing and GFL decoder, unchanged, behind the adapter protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edge_agent import nanodet
from edge_agent.adapters.base import AdapterError, DecoderConfig, PreprocessSpec
from schemas import Detection


class NanoDetAdapter:
    model_type = "nanodet"

    def __init__(self, labels: Sequence[str], config: DecoderConfig | None = None) -> None:
        config = config or DecoderConfig()
        self._decoder = nanodet.NanoDetDecoder(
            labels, nanodet.DecoderConfig(config.score_threshold, config.iou_threshold, config.max_detections,
                                  config.max_candidates)
        )
        self.labels = self._decoder.labels
        self.input_size = (nanodet.INPUT_SIZE, nanodet.INPUT_SIZE)
        self.config = config
        # The same input as ``nanodet.preprocess``, as data: the device path follows it.
        self.spec = PreprocessSpec(self.input_size, letterbox=False, rgb=False,
                                   mean=tuple(float(m) for m in nanodet._MEAN),  # type: ignore[arg-type]
                                   std=tuple(float(1.0 / v) for v in nanodet._INV_STD))  # type: ignore[arg-type]

    nms_on_clipped = False  # NanoDet's decoder runs NMS on the boxes before clipping them to the frame

    def check_engine(self, input_size: tuple[int, int], output_names: Sequence[str]) -> None:
        size = nanodet.INPUT_SIZE
        if input_size != (size, size):
            raise AdapterError(f"input {input_size[0]}x{input_size[1]} does not fit [batch, 3, {size}, {size}]")
        missing = sorted(set(nanodet.OUTPUT_NAMES) - set(output_names))
        if missing:
            raise AdapterError(f"outputs {missing} missing: not a NanoDet-m {size} model")

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return nanodet.preprocess(image)

    def decode_batch(
        self, outputs: Mapping[str, np.ndarray], frame_sizes: Sequence[tuple[int, int]]
    ) -> list[list[Detection]]:
        return self._decoder.decode_batch(outputs, frame_sizes)
