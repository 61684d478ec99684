"""The asyncio pipeline: sources -> batcher -> stages (pre-process, infer, decode, filter) -> sinks.

Sources hand frames to the batcher one by one; from there on every stage takes a whole batch per
call (``edge_agent/stages``), each on its own thread, bounded queues between them so CPU and
inference work overlap. The loop only moves frames and batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edge_agent.adapters import AdapterError, ModelAdapter
from edge_agent.engines import InferenceEngine, is_out_of_memory
from edge_agent.errors import OutOfMemoryAtBatchSize, SourceError, SwapError
from edge_agent.frames import Batch, Frame
from edge_agent.nanodet import is_valid_image
from edge_agent.sources import Backoff, SourceHealth, VideoSource, monotonic_to_wall, one_line, redact
from edge_agent.stages import (
    BatchStage,
    DetectionFilter,
    ServingConfig,
    StageSettings,
    Work,
    default_stages,
    device_of,
    uses_device_chain,
)
from edge_agent.stats import PipelineStats
from schemas import RunSummary

log = logging.getLogger(__name__)


class _EndOfStream:
    """Marker passed down every queue once all sources are done."""


END = _EndOfStream()


class FrameSink(Protocol):
    """Where finished frames go (JSON lines, annotated video, MQTT, ...)."""

    async def write(self, frames: Sequence[Frame]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class PipelineConfig:
    batch_size: int = 4
    realtime: bool = True
    deadline_ms: float = 1000.0
    max_frames: int | None = None
    ingress_capacity: int = 32  # frames; absorbs a swap or a GC pause before any drop
    batch_queue_capacity: int = 1  # one batch ready ahead of each stage is enough to overlap; more delays a switch
    stages: StageSettings = field(default_factory=StageSettings)
    keep_open: bool = False  # keep running with no source left (streams may be added later); else end with them
    reconnect: Backoff = field(default_factory=Backoff)  # live sources that fail to open or drop are reopened


@dataclass
class _Reader:
    """One source being read (and, a live one, reconnected): its task and the event that stops it at the next
    frame boundary or backoff wait."""

    source: VideoSource
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


_ReadOutcome = Literal["stopped", "ended", "dropped"]


class ServiceTimeEstimate:
    """Expected infer+post time per batch size (EWMA), used for deadline dispatch."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self._by_size: dict[int, float] = {}

    def update(self, batch_size: int, seconds: float) -> None:
        old = self._by_size.get(batch_size)
        self._by_size[batch_size] = seconds if old is None else old + self.alpha * (seconds - old)

    def expected(self, batch_size: int) -> float:
        if batch_size in self._by_size:
            return self._by_size[batch_size]
        if not self._by_size:
            return 0.0
        # Scale the nearest known size linearly: a good first guess until measured.
        nearest = min(self._by_size, key=lambda s: abs(s - batch_size))
        return self._by_size[nearest] * batch_size / nearest


class Pipeline:
    def __init__(
        self,
        sources: Sequence[VideoSource],
        engine: InferenceEngine,
        decoder: ModelAdapter,
        config: PipelineConfig | None = None,
        sinks: Sequence[FrameSink] = (),
        model: str = "nanodet-m-416-coco",
        version: str = "1",
        artifact_sha256: str | None = None,
        stages: Sequence[BatchStage] | None = None,
    ) -> None:
        self.config = config or PipelineConfig()
        self.sources = list(sources)  # the streams being read
        self.parked: list[VideoSource] = []  # opened, not read (admission control): no frame, no drop
        self._readers: dict[str, _Reader] = {}
        self._next_seq: dict[str, int] = {}
        self._reader_group: asyncio.TaskGroup | None = None
        self._sources_ended = False
        self.source_end_listeners: list[Callable[[VideoSource], None]] = []
        self.decoder = decoder
        self.sinks = list(sinks)
        self.stats = PipelineStats()
        self.service_time = ServiceTimeEstimate()
        self._check_batch_size(engine, self.config.batch_size)
        self.serving = ServingConfig(engine, self.config.batch_size, model, version,
                                     artifact_sha256=artifact_sha256)
        self.detection_filters: dict[str, DetectionFilter] = {}  # by stream id: per-camera score and classes
        self._on_device = uses_device_chain(engine, self.config.stages.device_path)
        self.stages: list[BatchStage] = list(stages) if stages is not None else default_stages(
            engine, decoder, self.detection_filters, self.config.stages)
        names = [st.name for st in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self._ingress: asyncio.Queue[Frame | _EndOfStream] = asyncio.Queue(self.config.ingress_capacity)
        # One queue in front of each stage, and one for the sinks.
        self._stage_queues: list[asyncio.Queue[Work | _EndOfStream]] = [
            asyncio.Queue(self.config.batch_queue_capacity) for _ in range(len(self.stages) + 1)
        ]
        self._stopping = asyncio.Event()
        self._accepted = 0
        self._last_good: ServingConfig | None = None  # the last serving config a batch was inferred with
        self.refused_sizes: dict[int, str] = {}  # batch sizes the device ran out of memory at (this engine), and why
        # One thread per stage: a stage sees its batches in order; its own workers (if any) fan out inside.
        self._stage_pools = [ThreadPoolExecutor(1, thread_name_prefix=f"stage-{n}") for n in names]
        # Opens of live sources: their own threads, so dead cameras (each open blocking up to its timeout)
        # never hold the threads the live streams are read on.
        self._open_pool = ThreadPoolExecutor(4, thread_name_prefix="open")
        # Reads block up to a camera's read timeout when it drops: on their own threads (made as needed),
        # so cameras dropping together do not starve the others' reads or the loop's to_thread calls.
        self._read_pool = ThreadPoolExecutor(64, thread_name_prefix="read")
        self.batch_listeners: list[Callable[[Batch, ServingConfig], None]] = []
        self.started = asyncio.Event()
        self._finished = False

    # --- control ------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.serving.batch_size

    @property
    def state(self) -> Literal["starting", "running", "draining", "stopped"]:
        """starting (sources opening), running, draining (stopped or sources ended: finishing what it
        accepted) or stopped (``run`` returned)."""
        if self._finished:
            return "stopped"
        if not self.started.is_set():
            return "starting"
        return "draining" if self._stopping.is_set() or self._sources_ended else "running"

    @staticmethod
    def _check_batch_size(engine: InferenceEngine, batch_size: int) -> None:
        if batch_size < 1:
            raise SwapError(f"batch size must be >= 1, got {batch_size}")
        sizes = engine.batch_sizes
        if sizes is not None and batch_size not in sizes:
            raise SwapError(f"engine {engine.path} serves batch sizes {sorted(sizes)}, not {batch_size}")

    def switch(
        self,
        batch_size: int | None = None,
        engine: InferenceEngine | None = None,
        model: str | None = None,
        version: str | None = None,
        generation: int | None = None,
        artifact_sha256: str | None = None,
    ) -> asyncio.Future[float]:
        """Serve a new batch size and/or engine from the next batch boundary on.

        Returns a future that resolves (with the monotonic time) when the first batch at the new
        setting has been inferred. The old engine is released after its last batch.
        """
        current = self.serving
        new_engine = engine or current.engine
        new_size = batch_size or current.batch_size
        self._check_batch_size(new_engine, new_size)
        if engine is not None and uses_device_chain(engine, self.config.stages.device_path) != self._on_device:
            chains = ("device", "host") if self._on_device else ("host", "device")
            raise SwapError(f"engine {engine.path} would need the {chains[1]} chain; this pipeline runs the "
                            f"{chains[0]} chain (same backend and device only)")
        if engine is not None and self._on_device and device_of(engine) != device_of(current.engine):
            raise SwapError(f"engine {engine.path} runs on {device_of(engine)}; the device chain uploads to "
                            f"{device_of(current.engine)}")
        if engine is not None:
            try:  # another model family would need another adapter: refuse, nothing changes
                self.decoder.check_engine(engine.input_size, engine.output_names)
            except AdapterError as exc:
                family = self.decoder.model_type
                raise SwapError(f"engine {engine.path} does not fit the {family} adapter: {exc}") from exc
        if engine is not None and engine is not current.engine:
            self.refused_sizes.clear()  # another engine, another memory footprint
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if current.switched is not None and not current.switched.done():
            current.switched.cancel()  # superseded before it took effect
        self.serving = ServingConfig(
            new_engine,
            new_size,
            model or current.model,
            version or current.version,
            current.generation if generation is None else generation,
            done,
            artifact_sha256 if engine is not None else current.artifact_sha256,
        )
        return done

    def set_batch_size(self, batch_size: int) -> asyncio.Future[float]:
        return self.switch(batch_size=batch_size)

    def stop(self) -> None:
        """Stop reading sources; frames already accepted are still processed."""
        self._stopping.set()
        for reader in self._readers.values():
            reader.stop.set()

    # --- streams at run time ------------------------------------------------------------

    def stream_ids(self) -> list[str]:
        return [s.stream_id for s in (*self.sources, *self.parked)]

    def find_source(self, stream_id: str) -> VideoSource | None:
        return next((s for s in (*self.sources, *self.parked) if s.stream_id == stream_id), None)

    def add_source(self, source: VideoSource, parked: bool = False) -> None:
        """Add a source: read from now on, or kept parked (not read). A file must be opened first; a live
        source is connected (and reconnected) by its reader. Raises SourceError once the sources have ended
        (the pipeline is draining)."""
        if self.find_source(source.stream_id) is not None:
            raise SourceError(redact(source.uri), f"stream id {source.stream_id!r} is already in use")
        if source.info is None and not source.live:
            raise SourceError(source.uri, "open() the source before adding it")
        if parked:
            self.parked.append(source)
            return
        self._check_open(source)
        self.sources.append(source)
        self._start_reader(source)

    def park(self, stream_id: str) -> VideoSource | None:
        """Stop reading a stream (at its next frame boundary) but keep it open; frames it already gave are
        processed as usual."""
        source = next((s for s in self.sources if s.stream_id == stream_id), None)
        if source is None:
            return None
        self.sources.remove(source)
        self.parked.append(source)
        reader = self._readers.pop(stream_id, None)
        if reader is not None:
            reader.stop.set()
        return source

    def unpark(self, stream_id: str) -> VideoSource | None:
        """Read a parked stream again (its frame numbers go on where they stopped)."""
        source = next((s for s in self.parked if s.stream_id == stream_id), None)
        if source is None:
            return None
        self._check_open(source)
        self.parked.remove(source)
        self.sources.append(source)
        self._start_reader(source)
        return source

    async def remove_source(self, stream_id: str) -> VideoSource | None:
        """Stop reading a stream and close it. Frames it already gave are still processed."""
        source = self.find_source(stream_id)
        if source is None:
            return None
        reader = self._readers.pop(stream_id, None)
        if source in self.sources:
            self.sources.remove(source)
        else:
            self.parked.remove(source)
        if reader is not None:
            reader.stop.set()
            if reader.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(reader.task)
        self.stats.corrupt += source.corrupt
        await asyncio.to_thread(source.close)
        return source

    def _check_open(self, source: VideoSource) -> None:
        if self._sources_ended or self._stopping.is_set():
            raise SourceError(source.uri, "the pipeline's sources have ended; it is draining")

    def _start_reader(self, source: VideoSource) -> None:
        if self._reader_group is None:
            return  # not running yet: run() starts it
        reader = _Reader(source)
        if self._stopping.is_set():  # stop() came before the readers started: they stop at once
            reader.stop.set()
        try:
            reader.task = self._reader_group.create_task(self._read_source(reader),
                                                         name=f"source[{source.stream_id}]")
        except RuntimeError as exc:  # the group has just finished: the sources ended
            raise SourceError(source.uri, "the pipeline's sources have ended; it is draining") from exc
        self._readers[source.stream_id] = reader

    def stream_states(self) -> dict[str, SourceHealth]:
        """Each stream's link to its source (connecting / live / failed / ended, reconnects, last error, since
        when), as copies: read it, the readers own it."""
        return {s.stream_id: s.health.snapshot() for s in (*self.sources, *self.parked)}

    def queue_depths(self) -> dict[str, int]:
        depths = {"ingress": self._ingress.qsize()}
        for stage, queue in zip(self.stages, self._stage_queues, strict=False):
            depths[stage.name] = queue.qsize()
        depths["sinks"] = self._stage_queues[-1].qsize()
        return depths

    @property
    def source_fps_total(self) -> float:
        return sum(s.info.fps for s in self.sources if s.info is not None)

    # --- stages -------------------------------------------------------------------------

    async def _read_source(self, reader: _Reader) -> None:
        """Read one source until it ends or is stopped; a live source that fails to open or drops (and any
        source whose read raises) is reopened with backoff meanwhile, the other streams unaffected."""
        source = reader.source
        outcome: _ReadOutcome = "stopped"
        while not reader.stop.is_set():
            if not source.is_open and not await self._connect(reader):
                break
            outcome = await self._read_frames(reader)
            if outcome != "dropped":
                break
            await asyncio.get_running_loop().run_in_executor(self._open_pool, source.disconnect)
        if outcome == "ended":
            if self._readers.get(source.stream_id) is reader:
                del self._readers[source.stream_id]
            for listener in self.source_end_listeners:
                listener(source)  # may add or unpark a stream: this task still holds the group open

    async def _connect(self, reader: _Reader) -> bool:
        """Open the source (reopen, after a failure or a drop) on the open threads, waiting the backoff
        between attempts. False: stopped first."""
        source, health = reader.source, reader.source.health
        loop = asyncio.get_running_loop()
        shown = redact(source.uri)
        # The first open of a stream is at once; a reopen waits, so a camera flapping costs little.
        delay = self.config.reconnect.delay(max(1, health.failures)) if health.failures or source.info else 0.0
        while True:
            if delay:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await reader.stop.wait()
                if reader.stop.is_set():
                    return False
                health.reconnects += 1
            health.enter("connecting")
            opening: asyncio.Future[Any] = loop.run_in_executor(self._open_pool, source.open)
            # A stop (end of run, park, removal) does not wait out an open that blocks on a dead camera:
            # the open finishes on its thread, and the source releases what it opened once closed.
            opening.add_done_callback(lambda f: None if f.cancelled() else f.exception())
            stopping: asyncio.Future[Any] = asyncio.ensure_future(reader.stop.wait())
            try:
                await asyncio.wait([opening, stopping], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not opening.done():
                return False
            try:
                opening.result()
            except SourceError as exc:
                error = exc.problem
            except Exception as exc:  # an OpenCV failure of any kind: this stream's, not the pipeline's
                error = f"{type(exc).__name__}: {exc}"
            else:
                health.failures = 0
                health.enter("live")
                if health.reconnects:
                    log.warning("stream %s (%s): live again (reconnect %d)", source.stream_id, shown,
                                health.reconnects)
                return True
            if reader.stop.is_set():
                return False
            health.failures += 1
            delay = self.config.reconnect.delay(health.failures)
            health.enter("failed", error)
            log.warning("stream %s (%s): %s; retrying in %.1f s (failure %d in a row)", source.stream_id, shown,
                        health.last_error, delay, health.failures)

    async def _read_frames(self, reader: _Reader) -> _ReadOutcome:
        """Frames from an open source into the pipeline until it is stopped, ends (a file), or drops (a live
        source gave no frame, or a read raised)."""
        source = reader.source
        assert source.info is not None
        interval = 1.0 / source.info.fps
        pace = self.config.realtime and not source.info.live
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        first_seq = seq = self._next_seq.get(source.stream_id, 0)
        deadline_s = (source.deadline_ms or self.config.deadline_ms) / 1000.0
        health = source.health
        health.enter("live")
        while not reader.stop.is_set():
            if pace:
                delay = t0 + (seq - first_seq) * interval - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await reader.stop.wait()
                    if reader.stop.is_set():
                        return "stopped"
            t_read = time.monotonic()
            try:
                image = await loop.run_in_executor(self._read_pool, source.read)
            except Exception as exc:  # a decoder crash: this stream's, not the pipeline's
                error = f"read failed: {type(exc).__name__}: {one_line(str(exc))}"
                log.warning("stream %s (%s): %s", source.stream_id, redact(source.uri), error)
                if source.live:
                    health.enter("failed", error)
                    return "dropped"
                health.enter("ended", error)
                return "ended"
            if reader.stop.is_set():
                return "stopped"  # parked or removed while reading: the frame, if any, was never accepted
            if image is None:
                if source.live:
                    health.enter("failed", "stream dropped: no frame (disconnected or read timed out)")
                    log.warning("stream %s (%s): dropped; reconnecting", source.stream_id, redact(source.uri))
                    return "dropped"
                health.enter("ended")
                return "ended"
            if self.config.max_frames is not None and self._accepted >= self.config.max_frames:
                self.stop()
                return "stopped"
            now = time.monotonic()
            frame = Frame(source.stream_id, seq, image, now, now + deadline_s, monotonic_to_wall(now),
                          decode_ms=(now - t_read) * 1000.0)
            seq += 1
            self._next_seq[source.stream_id] = seq
            self._accepted += 1
            self.stats.frame_in(source.stream_id)
            if self.config.realtime:
                if self._ingress.full():
                    oldest = self._ingress.get_nowait()  # drop the oldest frame, never silently
                    self.stats.frame_dropped(oldest.stream_id if isinstance(oldest, Frame) else "")
                self._ingress.put_nowait(frame)
            else:
                await self._ingress.put(frame)
        return "stopped"

    async def _keep_open(self) -> None:
        await self._stopping.wait()

    async def _read_sources(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._reader_group = tg
                for s in list(self.sources):
                    self._start_reader(s)
                if self.config.keep_open:
                    tg.create_task(self._keep_open(), name="pipeline.sources.keep_open")
        finally:
            self._reader_group = None
            self._sources_ended = True
            self.stats.corrupt += sum(s.corrupt for s in (*self.sources, *self.parked))
        # Only on a normal end: when the pipeline is cancelled nobody drains the queue any more,
        # and awaiting a put on a full one would hang the teardown.
        await self._ingress.put(END)

    async def _assemble(self) -> None:
        """Dispatch a batch when it is full, or when waiting longer would make its oldest frame
        miss its deadline (real-time mode), or at the end of the stream."""
        pending: list[Frame] = []
        ended = False
        while not ended or pending:
            if not pending and not ended:
                item = await self._ingress.get()
                if isinstance(item, _EndOfStream):
                    break
                if self._valid(item):
                    pending.append(item)
                continue
            serving = self.serving
            target = serving.batch_size
            while len(pending) < target and not ended:
                try:
                    item = self._ingress.get_nowait()
                except asyncio.QueueEmpty:
                    if self.config.realtime:
                        latest_start = min(f.deadline for f in pending) - self.service_time.expected(target)
                        wait_s = latest_start - time.monotonic()
                        if wait_s <= 0:
                            break
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can turn a cancellation that
                        # races its timeout into TimeoutError, and the batcher would then block forever.
                        try:
                            async with asyncio.timeout(wait_s):
                                item = await self._ingress.get()
                        except TimeoutError:
                            break
                    else:
                        item = await self._ingress.get()
                if isinstance(item, _EndOfStream):
                    ended = True
                elif self._valid(item):
                    pending.append(item)
            if not pending:
                continue
            frames, pending = pending[:target], pending[target:]
            await self._stage_queues[0].put(Work(Batch(frames, target_size=target), serving))
        await self._stage_queues[0].put(END)

    def _valid(self, frame: Frame) -> bool:
        if is_valid_image(frame.image):
            return True
        self.stats.corrupt += 1
        log.warning("stream %s frame %d is not a valid image; skipped", frame.stream_id, frame.seq)
        return False

    async def _run_stage(self, index: int) -> None:
        """Feed stage ``index`` its batches in order, on its own thread, and pass them on."""
        stage, pool = self.stages[index], self._stage_pools[index]
        inbox, outbox = self._stage_queues[index], self._stage_queues[index + 1]
        loop = asyncio.get_running_loop()
        while True:
            item = await inbox.get()
            if isinstance(item, _EndOfStream):
                await outbox.put(END)
                return
            try:
                await loop.run_in_executor(pool, stage.process, item)
            except Exception as exc:
                if stage.name != "infer" or not is_out_of_memory(exc):
                    raise
                item.batch.carry["max_rows"] = self._after_out_of_memory(item, exc)  # here, on the loop
                await loop.run_in_executor(pool, stage.process, item)
            else:
                if stage.name == "infer":
                    self._last_good = item.serving
            switched = item.serving.switched
            if stage.name == "infer" and switched is not None and not switched.done():
                switched.set_result(time.monotonic())  # the first batch at the new setting is inferred
            await outbox.put(item)

    def _after_out_of_memory(self, item: Work, exc: BaseException) -> int:
        """The device ran out of memory inferring ``item``: its batch size is refused (the switch that asked for it
        fails with the figure), a size that fits serves from the next batch on (the one that served before, else
        half), and the number of rows this batch is to be inferred in, slice by slice, so no frame is lost.
        Raises ``exc`` again where no smaller size can run (a static engine serves its own size only)."""
        failed, fallback = item.serving, self._last_good
        engine = failed.engine
        if fallback is not None and fallback.batch_size < failed.batch_size and fallback.engine is engine:
            rows = fallback.batch_size
        else:
            rows = failed.batch_size // 2
        if rows < 1 or (engine.batch_sizes is not None and rows not in engine.batch_sizes):
            raise exc
        figure = one_line(str(exc))[:300]
        memory = engine.memory_bytes()
        if memory:
            figure += f"; the engine holds {memory / 2**20:.0f} MiB"
        error = OutOfMemoryAtBatchSize(failed.batch_size, rows, figure)
        if failed.batch_size not in self.refused_sizes:
            log.warning("%s", error)
        self.refused_sizes[failed.batch_size] = str(error)
        if self.serving is failed:  # no newer switch came meanwhile: serve the size that fits
            generation = fallback.generation if fallback is not None else failed.generation
            self.serving = ServingConfig(engine, rows, failed.model, failed.version, generation, None,
                                         failed.artifact_sha256)
        if failed.switched is not None and not failed.switched.done():
            failed.switched.set_exception(error)
            failed.switched.exception()  # retrieved here; the reconciler reads it when it waits on it
        return rows

    def refusal_for(self, batch_size: int) -> str | None:
        """Why ``batch_size`` cannot serve on this engine: the device ran out of memory at it or at a smaller size
        (memory grows with the batch). None when nothing says so."""
        known = [size for size in self.refused_sizes if size <= batch_size]
        return self.refused_sizes[min(known)] if known else None

    async def _finish(self) -> None:
        """Account each finished batch and hand its frames to the sinks."""
        inbox = self._stage_queues[-1]
        while True:
            item = await inbox.get()
            if isinstance(item, _EndOfStream):
                return
            batch = item.batch
            self.service_time.update(item.serving.batch_size, (batch.pre_ms + batch.infer_ms + batch.post_ms) / 1000.0)
            self.stats.batch_done(batch)
            for listener in self.batch_listeners:
                listener(batch, item.serving)
            for sink in self.sinks:
                await sink.write(batch.frames)

    # --- run ----------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        """Run until the sources end, ``max_frames`` is reached, or ``stop()``; then drain."""
        for s in (*self.sources, *self.parked):
            if s.info is None and not s.live:  # live sources are connected by their readers, with retries
                await asyncio.to_thread(s.open)
                s.health.enter("live")
        t0 = time.monotonic()
        self.started.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_sources(), name="pipeline.sources")
                tg.create_task(self._assemble(), name="pipeline.batcher")
                for i, stage in enumerate(self.stages):
                    tg.create_task(self._run_stage(i), name=f"pipeline.{stage.name}")
                tg.create_task(self._finish(), name="pipeline.sinks")
        finally:
            for sink in self.sinks:
                await sink.close()
            # Each close waits out a read still running on its thread (up to a camera's read timeout):
            # together, so several stalled cameras cost one timeout, not one each.
            await asyncio.gather(*(asyncio.to_thread(s.close) for s in (*self.sources, *self.parked)))
            for pool in (self._open_pool, self._read_pool):
                pool.shutdown(wait=False)
            # A stage is closed once its thread is done with it (after a cancellation one may still be in a batch).
            await asyncio.gather(*(asyncio.to_thread(pool.shutdown, True) for pool in self._stage_pools))
            for stage in self.stages:
                stage.close()
            self._finished = True
        return self.summary(time.monotonic() - t0)

    def summary(self, duration_s: float) -> RunSummary:
        totals = self.stats.run_totals()
        return RunSummary(
            mode="realtime" if self.config.realtime else "offline",
            streams=len(self.sources),
            duration_s=round(duration_s, 3),
            frames_in=totals.frames_in,
            frames_out=totals.frames_out,
            dropped=self.stats.dropped,
            corrupt=self.stats.corrupt,
            deadline_misses=self.stats.deadline_misses,
            fps_out=round(totals.frames_out / max(duration_s, 1e-6), 2),
            batch_size=self.batch_size,
            batches_by_size=totals.batch_sizes,
            latency={stage: stats for stage, stats in totals.latency.items()},
        )
