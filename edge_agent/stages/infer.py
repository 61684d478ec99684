"""Inference on the host: the batch's engine runs its input tensor; an engine swapped out is released
after its last batch (inference is sequential, so that is the batch before the first on the new one)."""

from __future__ import annotations

import time

import numpy as np

from edge_agent.engines import run_padded
from edge_agent.stages.base import EngineHandOver, Work, record_stage


class HostInfer:
    name = "infer"

    def __init__(self) -> None:
        self._engines = EngineHandOver()

    def process(self, work: Work) -> None:
        engine = work.serving.engine
        self._engines.serving(engine)
        batch = work.batch
        assert batch.tensor is not None, "a pre-processing stage comes first"
        start = time.monotonic()
        rows = batch.carry.get("max_rows")
        if rows:  # after an out-of-memory: the batch in slices of a size that fits, outputs joined
            slices = [run_padded(engine, batch.tensor[i:i + rows]) for i in range(0, batch.tensor.shape[0], rows)]
            batch.outputs = {k: np.concatenate([o[k][:min(rows, batch.tensor.shape[0] - i * rows)]
                                                for i, o in enumerate(slices)]) for k in slices[0]}
        else:
            batch.outputs = engine.infer(batch.tensor)
        batch.tensor = None  # free the input early
        record_stage(batch, "infer", start, time.monotonic())

    def close(self) -> None:
        self._engines.forget()
