"""Host pre-processing: every frame of a batch through the adapter into one engine input, on measured
worker threads."""

from __future__ import annotations

import time

import numpy as np

from edge_agent.adapters import ModelAdapter
from edge_agent.engines import padded_batch_size
from edge_agent.stages.base import Work, record_stage
from edge_agent.stages.workers import MeasuredWorkers


class HostPreprocess:
    """BGR uint8 frames -> the float32 ``[B, 3, H, W]`` batch the engine runs, zero rows padding a static size."""

    name = "pre"

    def __init__(self, adapter: ModelAdapter, workers: int | None = None, max_workers: int | None = None) -> None:
        self.adapter = adapter
        self.workers = MeasuredWorkers("pre", workers, max_workers)

    def process(self, work: Work) -> None:
        batch = work.batch
        start = time.monotonic()
        rows = padded_batch_size(work.serving.engine, len(batch.frames))
        w, h = self.adapter.input_size
        tensor = np.zeros((rows, 3, h, w), dtype=np.float32)

        def fill(i: int) -> None:
            tensor[i] = self.adapter.preprocess(batch.frames[i].image)

        self.workers.map(fill, range(len(batch.frames)))
        batch.tensor = tensor
        batch.engine_batch_size = rows
        record_stage(batch, "pre", start, time.monotonic())

    def close(self) -> None:
        self.workers.close()
