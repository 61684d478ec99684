"""Statistics stay exact where they can and bounded in memory however long the run."""

from __future__ import annotations

import numpy as np

from edge_agent.stats import Reservoir, summarize


def test_small_runs_are_exact() -> None:
    values = [float(v) for v in range(1, 101)]
    s = summarize(values)
    assert s.count == 100 and s.mean_ms == 50.5 and s.max_ms == 100
    assert s.p50_ms == float(np.percentile(values, 50)) and s.p99_ms == float(np.percentile(values, 99))
    assert summarize([]).count == 0


def test_long_runs_keep_bounded_memory_and_close_percentiles() -> None:
    rng = np.random.default_rng(1)
    values = rng.exponential(40.0, 300_000)
    r = Reservoir(size=20_000)
    for v in values:
        r.add(float(v))
    assert len(r.samples) == 20_000 and r.count == 300_000
    s = r.summary()
    assert abs(s.mean_ms - values.mean()) < 1e-6 * values.mean() + 1e-3
    assert s.max_ms == round(float(values.max()), 3)
    assert abs(s.p95_ms - np.percentile(values, 95)) / np.percentile(values, 95) < 0.03
