"""The asyncio pipeline on the real model and real video."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_agent.errors import SourceError
from edge_agent.frames import Frame
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.sinks import JsonLinesSink
from edge_agent.sources import open_sources
from schemas import FrameDetections


class CollectingSink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.batches: list[int] = []
        self.closed = False

    async def write(self, frames: Sequence[Frame]) -> None:
        self.frames.extend(frames)
        self.batches.append(len(frames))

    async def close(self) -> None:
        self.closed = True


async def make(engine, decoder, uris, sink, fps=None, **config) -> Pipeline:
    sources = await open_sources([str(u) for u in uris], fps=fps)
    return Pipeline(sources, engine, decoder, PipelineConfig(**config), [sink])


async def test_offline_processes_every_frame_of_every_stream_in_order(engine, decoder, short_video) -> None:
    sink = CollectingSink()
    p = await make(engine, decoder, [short_video, short_video], sink, batch_size=4, realtime=False)
    summary = await p.run()
    assert summary.frames_in == summary.frames_out == 80
    assert summary.dropped == 0 and summary.corrupt == 0
    assert sink.closed
    for stream in ("s0", "s1"):
        seqs = [f.seq for f in sink.frames if f.stream_id == stream]
        assert seqs == list(range(40))
    assert all(f.detections for f in sink.frames), "people walk through every frame of vtest"
    assert summary.batches_by_size == {4: 20}
    for stage in ("pre", "queue", "infer", "post", "e2e", "batch"):
        assert summary.latency[stage].count > 0 and summary.latency[stage].p50_ms >= 0
    assert summary.latency["e2e"].p50_ms > summary.latency["infer"].p50_ms


async def test_realtime_overload_drops_the_oldest_and_counts_every_drop(engine, decoder, short_video) -> None:
    sink = CollectingSink()
    # 2 streams at 300 fps each: far beyond what 2 CPU cores infer.
    p = await make(engine, decoder, [short_video, short_video], sink, fps=300, batch_size=1, realtime=True,
                   ingress_capacity=4)
    summary = await p.run()
    assert summary.frames_in == 80
    assert summary.dropped > 0
    assert summary.frames_out + summary.dropped == summary.frames_in, "no frame lost silently"
    last_seqs = []
    for stream in ("s0", "s1"):
        seqs = [f.seq for f in sink.frames if f.stream_id == stream]
        assert seqs == sorted(seqs)
        last_seqs.append(seqs[-1])
    # Dropping the oldest keeps the newest: the last frame read is never the one dropped.
    assert 39 in last_seqs


async def test_batch_size_changes_at_a_batch_boundary_without_losing_frames(engine, decoder, short_video) -> None:
    sink = CollectingSink()
    p = await make(engine, decoder, [short_video, short_video], sink, batch_size=2, realtime=False)
    switched: list[asyncio.Future[float]] = []

    def on_batch(batch, serving) -> None:
        if len(sink.batches) == 5 and not switched:
            switched.append(p.set_batch_size(8))

    p.batch_listeners.append(on_batch)
    summary = await p.run()
    assert switched and switched[0].done()
    assert summary.frames_out == 80
    first_new = sink.batches.index(8)
    assert set(sink.batches[:first_new]) == {2}
    # Batches already assembled (in the bounded queue and on the thread of each stage) finish at the old size;
    # then only the new one.
    assert first_new - 5 <= (len(p.stages) + 1) * (p.config.batch_queue_capacity + 1)
    assert set(sink.batches[first_new:-1]) == {8}
    assert summary.batches_by_size[8] >= 8


async def test_batcher_dispatches_a_partial_batch_before_the_deadline(engine, decoder, short_video) -> None:
    sink = CollectingSink()
    # 10 fps, batch 16: filling a batch would take 1.6 s, the deadline is 400 ms.
    p = await make(engine, decoder, [short_video], sink, batch_size=16, realtime=True, deadline_ms=400,
                   max_frames=20)
    summary = await p.run()
    assert summary.frames_out == 20
    assert max(sink.batches) < 16, f"batches {sink.batches} waited for a full batch"
    assert summary.latency["e2e"].p50_ms < 1600


async def test_corrupt_frame_is_skipped_and_counted(engine, decoder, short_video, tmp_path: Path) -> None:
    data = bytearray(short_video.read_bytes())
    jpeg_starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(jpeg_starts) == 40
    start = jpeg_starts[20]
    data[start : start + 400] = bytes(400)
    broken = tmp_path / "broken.avi"
    broken.write_bytes(bytes(data))
    sink = CollectingSink()
    p = await make(engine, decoder, [broken], sink, batch_size=4, realtime=False)
    summary = await p.run()
    assert summary.corrupt == 1
    assert summary.frames_out == 39


async def test_stop_drains_what_was_accepted(engine, decoder, short_video) -> None:
    sink = CollectingSink()
    p = await make(engine, decoder, [short_video], sink, fps=40, batch_size=2, realtime=True)

    async def stop_soon() -> None:
        await asyncio.sleep(0.4)
        p.stop()

    stopper = asyncio.create_task(stop_soon())
    summary = await p.run()
    await stopper
    assert 0 < summary.frames_in < 40
    assert summary.frames_out + summary.dropped == summary.frames_in


async def test_cancelling_an_overloaded_pipeline_does_not_hang(engine, decoder, short_video) -> None:
    sink = CollectingSink()
    p = await make(engine, decoder, [short_video, short_video], sink, fps=300, batch_size=1, realtime=True,
                   ingress_capacity=4)
    task = asyncio.create_task(p.run())
    while p.stats.dropped == 0:  # the ingress queue is full: the state that used to hang
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert sink.closed


async def test_json_lines_sink_writes_one_valid_message_per_frame(engine, decoder, short_video, tmp_path) -> None:
    out = tmp_path / "d" / "detections.jsonl"
    sources = await open_sources([str(short_video)])
    p = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=4, realtime=False, max_frames=12),
                 [JsonLinesSink(out)])
    await p.run()
    lines = out.read_text().splitlines()
    assert len(lines) == 12
    messages = [FrameDetections.model_validate_json(line) for line in lines]
    assert [m.seq for m in messages] == list(range(12))
    assert any(d.label == "person" for m in messages for d in m.detections)
    assert json.loads(lines[0])["schema_version"] == 1


async def test_engine_rejects_batch_size_it_cannot_serve(engine, decoder, short_video) -> None:
    from edge_agent.errors import SwapError

    with pytest.raises(SwapError):
        await make(engine, decoder, [short_video], CollectingSink(), batch_size=0)


async def test_sources_join_park_resume_and_leave_at_run_time_without_losing_accepted_frames(
        engine, decoder, short_video) -> None:
    from edge_agent.sources import VideoSource

    sink = CollectingSink()
    p = await make(engine, decoder, [short_video], sink, fps=20, batch_size=2, realtime=True, keep_open=True)
    task = asyncio.create_task(p.run())
    await p.started.wait()
    await asyncio.sleep(0.3)
    joining = VideoSource(str(short_video), "late", fps=20, deadline_ms=5000)
    await asyncio.to_thread(joining.open)
    p.add_source(joining)
    await asyncio.sleep(0.4)
    assert p.park("late") is joining and [s.stream_id for s in p.parked] == ["late"]
    await asyncio.sleep(0.2)
    parked_in = p.stats.streams["late"].frames_in
    await asyncio.sleep(0.4)
    assert p.stats.streams["late"].frames_in == parked_in, "a parked stream is not read"
    assert p.unpark("late") is joining
    await asyncio.sleep(0.4)
    assert await p.remove_source("late") is joining
    assert p.stream_ids() == ["s0"]
    await asyncio.sleep(0.2)
    p.stop()
    summary = await asyncio.wait_for(task, 30)
    late = [f for f in sink.frames if f.stream_id == "late"]
    counts = p.stats.streams["late"]
    assert counts.frames_in > parked_in > 0
    assert counts.frames_out + counts.dropped == counts.frames_in == len(late) + counts.dropped
    assert [f.seq for f in late] == list(range(len(late))), "numbering goes on after a pause"
    assert all(f.deadline - f.t_capture == pytest.approx(5.0) for f in late)
    assert summary.frames_out + summary.dropped == summary.frames_in
    with pytest.raises(SourceError):
        p.add_source(joining)  # closed, and the pipeline has ended


async def test_a_stream_id_in_use_is_refused(engine, decoder, short_video) -> None:
    sources = await open_sources([str(short_video)])
    p = Pipeline(sources, engine, decoder, PipelineConfig())
    with pytest.raises(SourceError):
        p.add_source(sources[0])
