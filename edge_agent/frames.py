"""The unit of work that flows through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    tensor: np.ndarray | None = None
    detections: list[Detection] = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """Frames inferred together, with the batch-level timings."""

    frames: list[Frame]
    target_size: int
    engine_batch_size: int = 0
    infer_ms: float = 0.0
    post_ms: float = 0.0
    outputs: dict[str, np.ndarray] | None = None

    @property
    def pre_ms(self) -> float:
        return sum((f.t_pre_end - f.t_pre_start) for f in self.frames) * 1000.0
