"""Worker threads for a stage's per-image work, as many as measurably help on this machine.

The count is measured, not guessed: the first batches run with 1, 2, 4, ... workers (up to the
CPU count and the batch size), each count timed per image over a few batches, and the stage keeps
the fewest workers within ``margin`` of the fastest. Later batches use that count, until batches twice
as large as the measured ones come (the controller grew the batch size): more workers may help them, so
the counts are measured again. OpenCV and NumPy release the GIL in the heavy parts, so threads scale
until the cores (or memory) run out.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


def candidate_counts(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit``, with ``limit`` itself last."""
    counts, n = [], 1
    while n < limit:
        counts.append(n)
        n *= 2
    counts.append(max(1, limit))
    return counts


class MeasuredWorkers:
    """Maps a function over a batch's items on a pool whose size is measured (``workers=None``) or fixed."""

    def __init__(self, name: str, workers: int | None = None, max_workers: int | None = None,
                 rounds_per_count: int = 3, margin: float = 0.1) -> None:
        self.name = name
        self.max_workers = max(1, max_workers or os.cpu_count() or 1)
        self._fixed = workers
        self._pool = ThreadPoolExecutor(workers or self.max_workers, thread_name_prefix=name)
        self.rounds_per_count = rounds_per_count
        self.margin = margin
        self._trials: dict[int, list[float]] = {}  # workers -> seconds per item, per measured batch
        self.chosen: int | None = workers
        self.measured_items = 0  # the batch size the choice was measured on

    @property
    def workers(self) -> int:
        """The count the next batch runs with."""
        return self.chosen or self._next_trial()

    def _candidates(self, items: int) -> list[int]:
        return candidate_counts(min(self.max_workers, max(1, items)))

    def _next_trial(self) -> int:
        for count in candidate_counts(self.max_workers):
            if len(self._trials.get(count, ())) < self.rounds_per_count:
                return count
        return self.max_workers

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if not items:
            return []
        if self._fixed is None and self.chosen is not None and len(items) >= 2 * self.measured_items \
                and self.chosen < self.max_workers:
            self._trials.clear()  # larger batches than measured on: more workers may pay now
            self.chosen = None
        if self.chosen is not None or len(items) == 1:
            return self._run(fn, items, min(self.chosen or 1, len(items)))
        count = min(self._next_trial(), len(items))
        start = time.perf_counter()
        result = self._run(fn, items, count)
        self._trials.setdefault(count, []).append((time.perf_counter() - start) / len(items))
        self._maybe_choose(len(items))
        return result

    def _maybe_choose(self, items: int) -> None:
        candidates = self._candidates(items)
        if any(len(self._trials.get(c, ())) < self.rounds_per_count for c in candidates):
            return
        # The median of each count's rounds: one slow batch (a GC pause, a neighbour) does not decide.
        per_item = {c: sorted(self._trials[c])[len(self._trials[c]) // 2] for c in candidates}
        best = min(per_item.values())
        self.chosen = min(c for c, t in per_item.items() if t <= best * (1 + self.margin))
        self.measured_items = items
        log.info("%s: %d worker thread(s) (measured ms per image: %s)", self.name, self.chosen,
                 ", ".join(f"{c}: {t * 1000:.2f}" for c, t in sorted(per_item.items())))

    def measurements_ms(self) -> dict[int, float]:
        """Median milliseconds per image by worker count, as measured so far."""
        return {c: sorted(t)[len(t) // 2] * 1000.0 for c, t in sorted(self._trials.items()) if t}

    def _run(self, fn: Callable[[T], R], items: Sequence[T], count: int) -> list[R]:
        if count <= 1:
            return [fn(item) for item in items]
        # Contiguous chunks, one per worker: one task each, not one per image.
        bounds = [round(i * len(items) / count) for i in range(count + 1)]
        chunks = [items[bounds[i]:bounds[i + 1]] for i in range(count)]
        futures = [self._pool.submit(lambda chunk: [fn(x) for x in chunk], chunk) for chunk in chunks[1:]]
        result = [fn(x) for x in chunks[0]]  # the stage's own thread takes the first chunk
        for f in futures:
            result.extend(f.result())
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False)
