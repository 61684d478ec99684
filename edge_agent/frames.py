"""The unit of work that flows through the pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas import Detection


@dataclass(slots=True)
class Frame:
    """One video frame and everything measured about it on its way through the pipeline.

    Times are ``time.monotonic()`` seconds except ``wall_capture`` (unix time, for the wire).
    """

    stream_id: str
    seq: int
    image: np.ndarray
    t_capture: float
    deadline: float
    wall_capture: float
    t_pre_start: float = 0.0
    t_pre_end: float = 0.0
    t_infer_start: float = 0.0
    t_infer_end: float = 0.0
    t_post_end: float = 0.0
    decode_ms: float = 0.0  # reading + decoding it from its source
    detections: list[Detection] = field(default_factory=list)

    @property
    def queue_s(self) -> float:
        """Waiting from capture to inference that was not pre-processing: the batch filling, the queues."""
        return (self.t_infer_start - self.t_capture) - (self.t_pre_end - self.t_pre_start)


@dataclass(slots=True)
class Batch:
    """Frames inferred together, with the batch-level timings."""

    frames: list[Frame]
    target_size: int
    engine_batch_size: int = 0
    pre_ms: float = 0.0
    infer_ms: float = 0.0
    post_ms: float = 0.0
    # Between stages: the engine input (a NumPy array, or a device tensor on the GPU path), then its outputs.
    tensor: Any = None
    outputs: Mapping[str, Any] | None = None
    # Stage-private state that travels with the batch (the upload's CUDA event; the rows to infer at a time
    # after an out-of-memory).
    carry: dict[str, Any] = field(default_factory=dict)
