"""What every pipeline stage shares: the ``BatchStage`` protocol and the unit it works on.

A stage takes one whole batch per call (no per-frame hop on the hot path) and runs on its own
thread, so stages overlap like DeepStream's elements; the pipeline owns the queues between them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from edge_agent.engines import InferenceEngine
from edge_agent.frames import Batch, Frame


@dataclass
class ServingConfig:
    """What the batcher assembles for: switched as a whole at a batch boundary."""

    engine: InferenceEngine
    batch_size: int
    model: str = "nanodet-m-416-coco"
    version: str = "1"
    generation: int = 0
    switched: asyncio.Future[float] | None = field(default=None, repr=False)
    artifact_sha256: str | None = None


@dataclass
class Work:
    """One batch on its way through the stages, with the serving config it was assembled for."""

    batch: Batch
    serving: ServingConfig


def work_of(images: Sequence[np.ndarray], engine: InferenceEngine, stream_id: str = "offline") -> Work:
    """One batch of ``images`` for ``engine``, outside a pipeline (profiling, benches, checks): frames captured
    now, with an hour to their deadline."""
    now, wall = time.monotonic(), time.time()
    frames = [Frame(stream_id, i, image, now, now + 3600.0, wall) for i, image in enumerate(images)]
    return Work(Batch(frames, target_size=len(frames)), ServingConfig(engine, len(frames)))


@runtime_checkable
class BatchStage(Protocol):
    """One step of the chain between the batcher and the sinks."""

    @property
    def name(self) -> str:
        """Short and unique in a chain: it names the stage's thread and its latency figures."""
        ...

    def process(self, work: Work) -> None:
        """Do this stage's part for the whole batch, in place, on the stage's own thread."""
        ...

    def close(self) -> None:
        """Release threads and buffers; called once, after the last batch."""
        ...


class EngineHandOver:
    """Closes the engine a swap replaced once its last batch is inferred: inference is sequential, so that is
    the batch before the first on the new one. Owned by the infer stage."""

    def __init__(self) -> None:
        self._last: InferenceEngine | None = None

    def serving(self, engine: InferenceEngine) -> None:
        if self._last is not None and self._last is not engine:
            self._last.close()
        self._last = engine

    def forget(self) -> None:
        self._last = None  # the pipeline's owner closes the engine it serves with


def record_stage(batch: Batch, stage: str, start: float, end: float) -> None:
    """The batch's time in ``stage`` (pre, infer or post), and each frame's timestamps for it."""
    ms = (end - start) * 1000.0
    if stage == "pre":
        batch.pre_ms = ms
        for f in batch.frames:
            f.t_pre_start, f.t_pre_end = start, end
    elif stage == "infer":
        batch.infer_ms = ms
        for f in batch.frames:
            f.t_infer_start, f.t_infer_end = start, end
    else:
        batch.post_ms = ms
        for f in batch.frames:
            f.t_post_end = end
