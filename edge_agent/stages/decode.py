"""Host post-processing: the adapter decodes each image's outputs (score filter, NMS, boxes back to
original pixels) on measured worker threads."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from edge_agent.adapters import ModelAdapter
from edge_agent.stages.base import Work, record_stage
from edge_agent.stages.workers import MeasuredWorkers


class HostDecode:
    name = "post"

    def __init__(self, adapter: ModelAdapter, workers: int | None = None, max_workers: int | None = None) -> None:
        self.adapter = adapter
        self.workers = MeasuredWorkers("post", workers, max_workers)

    def process(self, work: Work) -> None:
        batch = work.batch
        outputs = batch.outputs
        assert outputs is not None, "an inference stage comes first"
        start = time.monotonic()
        frames = batch.frames

        def decode(i: int) -> list:  # type: ignore[type-arg]
            one: Mapping[str, np.ndarray] = {k: v[i:i + 1] for k, v in outputs.items()}
            return self.adapter.decode_batch(one, [frames[i].image.shape[:2]])[0]

        detections = self.workers.map(decode, range(len(frames)))
        batch.outputs = None
        for f, dets in zip(frames, detections, strict=True):
            f.detections = dets
        record_stage(batch, "post", start, time.monotonic())

    def close(self) -> None:
        self.workers.close()
