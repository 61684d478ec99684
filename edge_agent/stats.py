"""Per-stage delay statistics over a rolling window and over the whole run."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edge_agent.frames import Batch
from schemas import LatencyStats

Stage = Literal["pre", "queue", "infer", "post", "e2e", "batch"]
STAGES: tuple[Stage, ...] = ("pre", "queue", "infer", "post", "e2e", "batch")


RESERVOIR_SIZE = 20_000  # samples kept per stage: bounded memory however long an agent runs


class Reservoir:
    """Exact count, mean and max; percentiles from a uniform sample of at most ``size`` values
    (Vitter's algorithm R), so a run of days costs the same memory as a run of minutes."""

    def __init__(self, size: int = RESERVOIR_SIZE, seed: int = 0) -> None:
        self.size = size
        self.samples: list[float] = []
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.max = max(self.max, value)
        if len(self.samples) < self.size:
            self.samples.append(value)
        else:
            slot = self._rng.randrange(self.count)
            if slot < self.size:
                self.samples[slot] = value

    def summary(self) -> LatencyStats:
        if not self.count:
            return LatencyStats(count=0, mean_ms=0, p50_ms=0, p95_ms=0, p99_ms=0, max_ms=0)
        p50, p95, p99 = np.percentile(np.asarray(self.samples, dtype=np.float64), [50, 95, 99])
        return LatencyStats(
            count=self.count,
            mean_ms=round(self.total / self.count, 3),
            p50_ms=round(float(p50), 3),
            p95_ms=round(float(p95), 3),
            p99_ms=round(float(p99), 3),
            max_ms=round(self.max, 3),
        )


def summarize(samples_ms: list[float]) -> LatencyStats:
    reservoir = Reservoir(size=max(1, len(samples_ms)))
    for value in samples_ms:
        reservoir.add(value)
    return reservoir.summary()


@dataclass
class _Samples:
    by_stage: dict[Stage, Reservoir] = field(default_factory=lambda: {s: Reservoir() for s in STAGES})
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


@dataclass
class StreamCounts:
    """One stream's counts since start (the figures admission and overrun detection work from)."""

    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    deadline_misses: int = 0

    def copy(self) -> StreamCounts:
        return StreamCounts(self.frames_in, self.frames_out, self.dropped, self.deadline_misses)


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
        self.streams: dict[str, StreamCounts] = {}

    def stream(self, stream_id: str) -> StreamCounts:
        counts = self.streams.get(stream_id)
        if counts is None:
            counts = self.streams[stream_id] = StreamCounts()
        return counts

    def frame_in(self, stream_id: str = "") -> None:
        self._window.frames_in += 1
        self._run.frames_in += 1
        self.stream(stream_id).frames_in += 1

    def frame_dropped(self, stream_id: str = "") -> None:
        self.dropped += 1
        self.stream(stream_id).dropped += 1

    def batch_done(self, batch: Batch) -> None:
        size = batch.target_size
        for target in (self._window, self._run):
            target.batches += 1
            target.batch_sizes[size] += 1
            target.by_stage["batch"].add(batch.pre_ms + batch.infer_ms + batch.post_ms)
        for f in batch.frames:
            values: dict[Stage, float] = {
                "pre": (f.t_pre_end - f.t_pre_start) * 1000.0,
                "queue": f.queue_s * 1000.0,
                "infer": batch.infer_ms,
                "post": batch.post_ms,
                "e2e": (f.t_post_end - f.t_capture) * 1000.0,
            }
            counts = self.stream(f.stream_id)
            counts.frames_out += 1
            if f.t_post_end > f.deadline:
                self.deadline_misses += 1
                counts.deadline_misses += 1
            for target in (self._window, self._run):
                target.frames_out += 1
                for stage, value in values.items():
                    target.by_stage[stage].add(value)

    def _freeze(self, samples: _Samples, now: float) -> WindowStats:
        return WindowStats(
            window_s=max(1e-6, now - samples.started),
            frames_in=samples.frames_in,
            frames_out=samples.frames_out,
            batches=samples.batches,
            batch_sizes=dict(samples.batch_sizes),
            latency={s: samples.by_stage[s].summary() for s in STAGES},
        )

    def take_window(self) -> WindowStats:
        now = time.monotonic()
        stats = self._freeze(self._window, now)
        self._window = _Samples(started=now)
        return stats

    @property
    def frames_in(self) -> int:
        return self._run.frames_in

    @property
    def frames_out(self) -> int:
        return self._run.frames_out

    def run_totals(self) -> WindowStats:
        """Whole-run figures with percentiles (costs a sort of the reservoirs: for summaries)."""
        return self._freeze(self._run, time.monotonic())
