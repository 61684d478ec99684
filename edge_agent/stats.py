"""Per-stage delay statistics over a rolling window and over the whole run."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edge_agent.frames import Batch
from schemas import LatencyStats

Stage = Literal["pre", "queue", "infer", "post", "e2e", "batch"]
STAGES: tuple[Stage, ...] = ("pre", "queue", "infer", "post", "e2e", "batch")


def summarize(samples_ms: list[float]) -> LatencyStats:
    if not samples_ms:
        return LatencyStats(count=0, mean_ms=0, p50_ms=0, p95_ms=0, p99_ms=0, max_ms=0)
    arr = np.asarray(samples_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return LatencyStats(
        count=int(arr.size),
        mean_ms=round(float(arr.mean()), 3),
        p50_ms=round(float(p50), 3),
        p95_ms=round(float(p95), 3),
        p99_ms=round(float(p99), 3),
        max_ms=round(float(arr.max()), 3),
    )


@dataclass
class _Samples:
    by_stage: dict[Stage, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    frames_in: int = 0
    frames_out: int = 0
    batches: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class WindowStats:
    window_s: float
    frames_in: int
    frames_out: int
    batches: int
    batch_sizes: dict[int, int]
    latency: dict[Stage, LatencyStats]

    @property
    def fps_in(self) -> float:
        return self.frames_in / self.window_s

    @property
    def fps_out(self) -> float:
        return self.frames_out / self.window_s


class PipelineStats:
    """Collects timings from the pipeline; ``take_window`` gives and resets the current window.

    Only the event loop calls it, so no lock is needed.
    """

    def __init__(self) -> None:
        self._window = _Samples()
        self._run = _Samples()
        self.dropped = 0
        self.corrupt = 0
        self.deadline_misses = 0

    def frame_in(self) -> None:
        self._window.frames_in += 1
        self._run.frames_in += 1

    def batch_done(self, batch: Batch) -> None:
        size = batch.target_size
        for target in (self._window, self._run):
            target.batches += 1
            target.batch_sizes[size] += 1
            target.by_stage["batch"].append(batch.pre_ms + batch.infer_ms + batch.post_ms)
        for f in batch.frames:
            values: dict[Stage, float] = {
                "pre": (f.t_pre_end - f.t_pre_start) * 1000.0,
                "queue": (f.t_infer_start - f.t_pre_end) * 1000.0,
                "infer": batch.infer_ms,
                "post": batch.post_ms,
                "e2e": (f.t_post_end - f.t_capture) * 1000.0,
            }
            if f.t_post_end > f.deadline:
                self.deadline_misses += 1
            for target in (self._window, self._run):
                target.frames_out += 1
                for stage, value in values.items():
                    target.by_stage[stage].append(value)

    def _freeze(self, samples: _Samples, now: float) -> WindowStats:
        return WindowStats(
            window_s=max(1e-6, now - samples.started),
            frames_in=samples.frames_in,
            frames_out=samples.frames_out,
            batches=samples.batches,
            batch_sizes=dict(samples.batch_sizes),
            latency={s: summarize(samples.by_stage[s]) for s in STAGES},
        )

    def take_window(self) -> WindowStats:
        now = time.monotonic()
        stats = self._freeze(self._window, now)
        self._window = _Samples(started=now)
        return stats

    def run_totals(self) -> WindowStats:
        return self._freeze(self._run, time.monotonic())
