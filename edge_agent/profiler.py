"""Offline per-batch-size profile (the paper's Table 1): pre, infer, post, total, real-time margin,
throughput and peak memory, measured one stage after another (the pipeline's own chain of stages, so
the figures are those of the path that serves) so each stage time is clean."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil

from edge_agent.adapters import ModelAdapter
from edge_agent.engines import InferenceEngine, load_engine
from edge_agent.frames import Batch
from edge_agent.probes import ResourceProbe
from edge_agent.sources import VideoSource
from edge_agent.stages import BatchStage, MeasuredWorkers, StageSettings, default_stages, work_of
from schemas import ProfileReport, ProfileRow

if TYPE_CHECKING:
    from edge_agent.admission import DeviceProfile


class PeakMemorySampler:
    """Polls a memory figure on a thread and keeps the peak."""

    def __init__(self, read: Callable[[], int], interval_s: float = 0.005) -> None:
        self._read = read
        self._interval = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())


def read_frames(uri: str, count: int) -> tuple[list[np.ndarray], float]:
    """Decode up to ``count`` frames (looping a short file) and return them with the file's fps."""
    source = VideoSource(uri, "profile", loop=True)
    info = source.open()
    frames: list[np.ndarray] = []
    try:
        while len(frames) < count:
            frame = source.read()
            if frame is None:
                break
            frames.append(frame)
    finally:
        source.close()
    return frames, info.fps


def profile_batch_size(
    engine: InferenceEngine, decoder: ModelAdapter, frames: list[np.ndarray], batch_size: int, batches: int,
    stages: StageSettings | None = None,
) -> tuple[float, float, float]:
    """Mean (pre_ms, infer_ms, post_ms) per batch over ``batches`` batches, through the chain the pipeline
    builds for this engine (host or device), after warm-up batches that also settle its worker counts."""
    chain = default_stages(engine, decoder, {}, stages)
    pre_t: list[float] = []
    infer_t: list[float] = []
    post_t: list[float] = []
    try:
        warm_up = 0
        # The first batch warms caches and allocators up; host stages measure their worker counts meanwhile.
        while warm_up < 1 or (warm_up < 24 and not _settled(chain)):
            images = [frames[(warm_up * batch_size + i) % len(frames)] for i in range(batch_size)]
            time_stages(engine, decoder, images, chain)
            warm_up += 1
        for b in range(batches):
            images = [frames[((warm_up + b) * batch_size + i) % len(frames)] for i in range(batch_size)]
            pre, infer, post = time_stages(engine, decoder, images, chain)
            pre_t.append(pre)
            infer_t.append(infer)
            post_t.append(post)
    finally:
        for stage in chain:
            stage.close()
    return (float(np.mean(pre_t)) * 1000, float(np.mean(infer_t)) * 1000, float(np.mean(post_t)) * 1000)


def _settled(chain: Sequence[BatchStage]) -> bool:
    workers = [getattr(stage, "workers", None) for stage in chain]
    return all(w.chosen is not None for w in workers if isinstance(w, MeasuredWorkers))


def time_stages(engine: InferenceEngine, decoder: ModelAdapter, images: list[np.ndarray],
                chain: Sequence[BatchStage] | None = None) -> tuple[float, float, float]:
    """Run one batch through ``chain`` (default: the pipeline's for this engine), stage after stage with no
    overlap; seconds spent in (pre-processing, inference, decode + NMS)."""
    own = chain is None
    stages = default_stages(engine, decoder, {}) if chain is None else chain
    work = work_of(images, engine, "profile")
    try:
        for stage in stages:
            stage.process(work)
    finally:
        if own:
            for stage in stages:
                stage.close()
    batch = work.batch
    return batch.pre_ms / 1000.0, batch.infer_ms / 1000.0, batch.post_ms / 1000.0


def run_profile(
    model: str | Path,
    source: str,
    batch_sizes: list[int],
    decoder: ModelAdapter,
    probe: ResourceProbe,
    fps: float | None = None,
    batches: int = 8,
    backend: str = "onnxruntime",
    progress: Callable[[str], None] = lambda _msg: None,
    engine_for: Callable[[int], tuple[InferenceEngine, str]] | None = None,
    stages: StageSettings | None = None,
) -> ProfileReport:
    """Measure each batch size on a fresh engine: ``model`` on ``backend``, or, with ``engine_for``,
    whatever engine it returns for that size (with a description), e.g. a registry's artifacts."""

    def file_engine(_size: int) -> tuple[InferenceEngine, str]:
        return load_engine(model, backend), f"{backend} {Path(model).name}"

    open_engine = engine_for or file_engine
    frames, file_fps = read_frames(source, max(64, min(256, max(batch_sizes) * 4)))
    rate = fps or file_fps
    process = psutil.Process()
    gpu = probe.name != "host"

    def memory_now() -> int:
        if gpu:
            sample = probe.sample()
            return int(sample.process_gpu_memory_bytes or sample.gpu_memory_used_bytes or 0)
        return int(process.memory_info().rss)

    rows: list[ProfileRow] = []
    for size in batch_sizes:
        progress(f"batch {size}: loading engine and running {batches} batches ...")
        with PeakMemorySampler(memory_now) as peak:
            engine, described = open_engine(size)
            try:
                pre, infer, post = profile_batch_size(engine, decoder, frames, size, batches, stages)
            finally:
                engine.close()
        total = pre + infer + post
        limit = size * 1000.0 / rate
        rows.append(
            ProfileRow(
                batch_size=size,
                pre_ms=round(pre, 2),
                infer_ms=round(infer, 2),
                post_ms=round(post, 2),
                total_ms=round(total, 2),
                realtime_limit_ms=round(limit, 2),
                margin_ms=round(limit - total, 2),
                meets_realtime=total < limit,
                throughput_fps=round(size * 1000.0 / total, 2),
                infer_fps=round(size * 1000.0 / infer, 2),
                peak_memory_bytes=peak.peak,
                memory_kind="gpu" if gpu else "process_rss",
                engine=described,
            )
        )
    return ProfileReport(
        device=probe.device_name(),
        backend=backend,
        model=str(model),
        source=source,
        fps=rate,
        batches_per_size=batches,
        rows=rows,
    )


async def measure_pipeline_profile(
    engine: InferenceEngine,
    decoder: ModelAdapter,
    uri: str,
    batch_sizes: list[int],
    batches: int = 3,
    overlap: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
) -> DeviceProfile:
    """A short start-up profile for admission control, measured the way serving measures it: the real pipeline
    (offline, so as fast as it goes) on the serving engine and real frames of ``uri``, a few full batches per
    size after one warm-up; per stage, the median batch. Decode, pre, infer and post overlap on their threads
    here as they will while serving, so their contention for the cores is in the figures."""
    from edge_agent.admission import BatchCost, DeviceProfile
    from edge_agent.pipeline import Pipeline, PipelineConfig
    from edge_agent.sources import VideoSource

    costs: dict[int, BatchCost] = {}
    for size in batch_sizes:
        progress(f"admission profile: batch {size}, {batches} batches through the pipeline ...")
        source = VideoSource(uri, "profile", loop=True)
        pipeline = Pipeline([source], engine, decoder,
                            PipelineConfig(batch_size=size, realtime=False, max_frames=(batches + 1) * size))
        timed: list[tuple[float, float, float, float]] = []

        def record(batch: Batch, _serving: object, timed: list[tuple[float, float, float, float]] = timed) -> None:
            if len(batch.frames) == batch.target_size:
                timed.append((batch.pre_ms, batch.infer_ms, batch.post_ms, sum(f.decode_ms for f in batch.frames)))

        pipeline.batch_listeners.append(record)
        await pipeline.run()
        measured = timed[1:] or timed
        if not measured:
            continue
        pre, infer, post, decode = (float(np.median([t[i] for t in measured])) for i in range(4))
        costs[size] = BatchCost(size, pre, infer, post, decode)
    return DeviceProfile(costs, overlap=overlap, origin="start-up measurement")
