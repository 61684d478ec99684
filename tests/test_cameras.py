"""Cameras that heal, against a real RTSP server on loopback: a dead camera does not stop the others (nor the
agent from starting), a camera that drops is reconnected with backoff, without restarting the agent; and a file
that declares more frames than it holds loops."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from edge_agent.admission import BatchCost, DeviceProfile
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.sources import Backoff, VideoSource, open_sources, parse_source_arg, redact
from edge_agent.streams import AdmissionSettings, StreamRoster
from mqtt_bus.local_broker import free_port
from schemas import RunSummary, StreamState
from tests.conftest import VIDEO
from tests.mqtt_helpers import eventually
from tests.rtsp_server import RtspServer, RtspServerMissing

FAST = Backoff(initial_s=0.2, max_s=1.0)  # the shape of the default (0.5 s to 30 s), scaled to a test


@pytest.fixture
def rtsp() -> Iterator[RtspServer]:
    try:
        server = RtspServer(free_port())
    except RtspServerMissing as exc:
        pytest.fail(str(exc))
    with server:
        yield server.start()


def dead_url() -> str:
    return f"rtsp://127.0.0.1:{free_port()}/none"  # a free port: nobody listens


def profile() -> DeviceProfile:
    return DeviceProfile({1: BatchCost(1, 1, 15, 1), 2: BatchCost(2, 1, 29, 1), 4: BatchCost(4, 2, 56, 2)})


def out(pipeline: Pipeline, stream_id: str) -> int:
    counts = pipeline.stats.streams.get(stream_id)
    return counts.frames_out if counts else 0


def accepted(pipeline: Pipeline, stream_id: str) -> int:
    counts = pipeline.stats.streams.get(stream_id)
    return counts.frames_in if counts else 0


async def test_a_camera_that_drops_is_reconnected_without_restarting_the_agent_while_the_others_flow(
        broker, prefix, engine, decoder, short_video, rtsp) -> None:
    from edge_agent.agent import Agent
    from edge_agent.probes.host import HostProbe
    from edge_agent.settings import AgentSettings
    from schemas import Telemetry, Topics, decode
    from tests.mqtt_helpers import observing

    sources = await open_sources([("cam", rtsp.url), ("dead", dead_url()), ("file", str(short_video))], fps=None,
                                 loop=True)
    assert sources[0].info is None and sources[1].info is None, "cameras are connected by the pipeline"
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=2, realtime=True, reconnect=FAST))
    roster = StreamRoster(pipeline, profile(), AdmissionSettings(enabled=False, learn=False))
    roster.admit_initial()
    agent = Agent(pipeline, HostProbe(), AgentSettings(broker_url=broker.url, agent_id="cams", prefix=prefix,
                                                      telemetry_interval_s=0.3), roster=roster)
    telemetry_topic = Topics(prefix).telemetry("cams")

    def link(stream_id: str) -> str:
        return pipeline.stream_states()[stream_id].state

    async with observing(broker.url, telemetry_topic) as obs:
        task = asyncio.create_task(agent.run())
        try:
            # The live camera is served; the dead one fails, retried with growing attempts and a reason.
            await eventually(lambda: out(pipeline, "cam") > 5, 40, "frames served from the RTSP camera")
            await eventually(lambda: pipeline.stream_states()["dead"].reconnects >= 2, 20, "the dead one retried")
            dead = pipeline.stream_states()["dead"]
            assert dead.state in ("failed", "connecting") and "cannot connect" in dead.last_error, dead
            assert link("cam") == "live" and pipeline.stream_states()["cam"].reconnects == 0

            # The camera's server dies: that stream fails and is retried; the file keeps flowing.
            rtsp.kill()
            await eventually(lambda: link("cam") in ("failed", "connecting"), 20, "the camera seen down")
            assert "dropped" in pipeline.stream_states()["cam"].last_error
            at_drop, file_at_drop = accepted(pipeline, "cam"), out(pipeline, "file")
            await eventually(lambda: pipeline.stream_states()["cam"].reconnects >= 2, 20, "reopening the camera")
            # The file's frames keep coming out while the camera stays down (waited for: two quick reconnect
            # attempts can take less time than a frame needs to get through a loaded machine).
            await eventually(lambda: out(pipeline, "file") > file_at_drop + 2, 20,
                             "the other streams flow while the camera is down")
            assert link("cam") in ("failed", "connecting"), "the camera's server is still dead"
            assert accepted(pipeline, "cam") == at_drop, "no frame from a camera that is down"
            await eventually(lambda: any(
                {s.stream_id: s.connection for s in decode(Telemetry, p).streams}.get("cam") in ("failed", "connecting")
                for p in obs.on(telemetry_topic)), 10, "telemetry reports the camera down")

            # It comes back: frames resume on that stream, same agent, same pipeline.
            rtsp.start()
            # Served past every frame accepted before the drop: new frames came through.
            await eventually(lambda: out(pipeline, "cam") > at_drop + 5, 40, "frames from the camera again")
            cam = pipeline.stream_states()["cam"]
            assert cam.state == "live" and cam.reconnects >= 1 and cam.failures == 0
            dead_now = pipeline.stream_states()["dead"]
            assert dead_now.reconnects > dead.reconnects and dead_now.state in ("failed", "connecting")
            await eventually(lambda: any(
                {s.stream_id: s.connection for s in decode(Telemetry, p).streams}.get("cam") == "live"
                and {s.stream_id: s.reconnects for s in decode(Telemetry, p).streams}["cam"] >= 1
                for p in obs.on(telemetry_topic)), 10, "telemetry reports the camera live again")
        finally:
            pipeline.stop()
            summary = await asyncio.wait_for(task, 30)
    last = {s.stream_id: s for s in decode(Telemetry, obs.on(telemetry_topic)[-1]).streams}
    assert set(last) == {"cam", "dead", "file"}
    assert last["dead"].connection in ("failed", "connecting") and last["dead"].reconnects >= 2
    assert "cannot connect" in last["dead"].last_error and last["dead"].frames_in == 0
    assert last["dead"].connection_since is not None and last["file"].connection == "live"
    assert last["cam"].state == "admitted", "a stream down stays admitted: it is owed its capacity"
    assert summary.frames_out + summary.dropped == summary.frames_in, "no frame lost by the pipeline"
    for sid in ("cam", "file"):
        c = pipeline.stats.streams[sid]
        assert c.frames_out + c.dropped == c.frames_in, sid


async def test_the_pipeline_runs_when_every_camera_is_dead_and_stops_cleanly(engine, decoder) -> None:
    sources = await open_sources([dead_url(), dead_url()])
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=2, reconnect=FAST))
    task = asyncio.create_task(pipeline.run())
    await eventually(lambda: all(h.reconnects >= 2 for h in pipeline.stream_states().values()), 20, "both retried")
    assert not task.done(), "dead cameras do not end the pipeline: they are retried"
    states = pipeline.stream_states()
    assert set(states) == {"s0", "s1"} and all("cannot connect" in h.last_error for h in states.values())
    pipeline.stop()
    summary = await asyncio.wait_for(task, 15)
    assert summary.frames_in == summary.frames_out == 0


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    import random

    rng = random.Random(1)
    b = Backoff(initial_s=0.5, max_s=30.0)
    for failures, base in [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (40, 30.0)]:
        delays = [b.delay(failures, rng) for _ in range(200)]
        assert base * 0.5 <= min(delays) and max(delays) <= base * 1.5, (failures, min(delays), max(delays))
        assert max(delays) - min(delays) > base * 0.5, "jittered, not in lockstep"


def test_source_names_and_redaction() -> None:
    assert parse_source_arg("cam1=rtsp://u:p@h/x?a=b") == ("cam1", "rtsp://u:p@h/x?a=b")
    assert parse_source_arg("rtsp://h/x?a=b") == (None, "rtsp://h/x?a=b")
    assert parse_source_arg("/videos/a.mp4") == (None, "/videos/a.mp4")
    assert parse_source_arg("bad name=x.mp4") == (None, "bad name=x.mp4")
    assert redact("rtsp://admin:secret@10.0.0.5/live") == "rtsp://admin:***@10.0.0.5/live"
    assert redact("rtsp://10.0.0.5/live?x=1") == "rtsp://10.0.0.5/live?x=1"


async def test_a_password_in_a_camera_url_never_reaches_logs_or_telemetry(engine, decoder, caplog) -> None:
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/none"
    sources = await open_sources([("door", url)])
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=1, reconnect=FAST))
    roster = StreamRoster(pipeline, profile(), AdmissionSettings(enabled=False))
    roster.admit_initial()
    task = asyncio.create_task(pipeline.run())
    try:
        await eventually(lambda: pipeline.stream_states()["door"].reconnects >= 1, 20, "retried")
    finally:
        pipeline.stop()
        await asyncio.wait_for(task, 15)
    assert "hunter2" not in caplog.text and "door (rtsp://admin:***@" in caplog.text
    assert "hunter2" not in json.dumps([s.model_dump() for s in roster.states()])


def overlong_avi(path: Path, frames: int = 80) -> tuple[int, int]:
    """An MJPG AVI cut to a quarter: its header still declares ``frames``. Returns (declared, readable)."""
    full = path.with_suffix(".full.avi")
    cap = cv2.VideoCapture(str(VIDEO))
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 10, (192, 144))
    for _ in range(frames):
        ok, frame = cap.read()
        assert ok
        writer.write(cv2.resize(frame, (192, 144)))
    writer.release()
    cap.release()
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 4])
    cap = cv2.VideoCapture(str(path))
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    readable = failures = 0
    while failures < 40:
        ok, _ = cap.read()
        readable, failures = (readable + 1, 0) if ok else (readable, failures + 1)
    cap.release()
    return declared, readable


async def test_a_looped_file_that_declares_more_frames_than_it_holds_keeps_looping(
        engine, decoder, tmp_path: Path) -> None:
    video = tmp_path / "cut.avi"
    declared, readable = overlong_avi(video)
    assert declared - readable > 25 and readable >= 5, (declared, readable)  # past the old give-up point

    looped = await open_sources([str(video)], loop=True)
    pipeline = Pipeline(looped, engine, decoder, PipelineConfig(batch_size=4, realtime=False,
                                                               max_frames=3 * readable))
    summary = await asyncio.wait_for(pipeline.run(), 60)
    assert summary.frames_in == summary.frames_out == 3 * readable, "it loops past the end of what it holds"
    assert summary.corrupt == 0, "frames the file never held are not corrupt frames"

    once = await open_sources([str(video)])
    pipeline = Pipeline(once, engine, decoder, PipelineConfig(batch_size=4, realtime=False))
    summary = await asyncio.wait_for(pipeline.run(), 60)
    assert summary.frames_in == summary.frames_out == readable, "without --loop it ends, as before"
    assert pipeline.stream_states()["s0"].state == "ended"


async def test_a_file_that_fails_to_read_ends_that_stream_only(engine, decoder, short_video) -> None:
    class Exploding(VideoSource):
        def read(self):  # type: ignore[no-untyped-def]
            raise cv2.error("decoder crashed")

    broken = Exploding(str(short_video), "broken")
    await asyncio.to_thread(broken.open)
    good = (await open_sources([str(short_video)]))[0]
    pipeline = Pipeline([broken, good], engine, decoder, PipelineConfig(batch_size=4, realtime=False))
    summary = await asyncio.wait_for(pipeline.run(), 60)
    assert summary.frames_out == 40, "the other stream is served to its end"
    state = pipeline.stream_states()["broken"]
    assert state.state == "ended" and "decoder crashed" in state.last_error


def run_profile_file(tmp_path: Path) -> Path:
    row = dict(realtime_limit_ms=0, margin_ms=0, meets_realtime=True, throughput_fps=1, infer_fps=1,
               peak_memory_bytes=0, memory_kind="process_rss")
    rows = [dict(batch_size=b, pre_ms=b * 0.5, infer_ms=b * 14, post_ms=b * 0.5, total_ms=b * 15, **row)
            for b in (1, 2, 4)]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(dict(device="cpu", backend="onnxruntime", model="m", source="v", fps=10,
                                    batches_per_size=4, rows=rows)))
    return path


async def test_the_agent_starts_with_every_camera_dead_says_so_in_one_line_each_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent.cli", "run", "--source", f"front={dead_url()}", "--source",
        f"back={dead_url()}", "--profile", str(run_profile_file(tmp_path)), "--summary", str(summary_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []

    async def read_until_both_failed_twice() -> None:
        assert process.stderr is not None
        while sum("retrying in" in line for line in lines) < 4:
            line = await process.stderr.readline()
            if not line:
                return
            lines.append(line.decode())

    try:
        await asyncio.wait_for(read_until_both_failed_twice(), 50)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.communicate(), 20)
    err = "".join(lines) + rest[1].decode()
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    failures = [line for line in err.splitlines() if "retrying in" in line]
    assert any("stream front (rtsp://127.0.0.1:" in line and "cannot connect" in line for line in failures), err
    assert any("stream back (rtsp://127.0.0.1:" in line for line in failures), err
    summary = RunSummary.model_validate_json(summary_path.read_text())
    states: dict[str, StreamState] = {s.stream_id: s for s in summary.per_stream}
    assert set(states) == {"front", "back"} and summary.frames_in == 0
    assert all(s.connection in ("failed", "connecting") and s.reconnects >= 1 for s in states.values()), states


async def test_an_rtsp_server_that_accepts_and_never_answers_fails_the_open_within_its_timeout() -> None:
    """OpenCV's own open timeout is 30 s; the source's (here 1 s) must be the one honoured, or one silent
    camera holds an open thread for half a minute per attempt."""
    import socket

    from edge_agent.errors import SourceError

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        source = VideoSource(f"rtsp://127.0.0.1:{silent.getsockname()[1]}/cam", "mute")
        source.open_timeout_ms = 1000
        with pytest.raises(SourceError, match="cannot connect"):
            await asyncio.wait_for(asyncio.to_thread(source.open), 15)
    source.close()


async def test_a_stop_does_not_wait_out_an_open_that_hangs_on_a_silent_camera(engine, decoder) -> None:
    """A camera that accepts and never answers holds its open for the whole open timeout (60 s here).
    Stopping the pipeline meanwhile ends the run at once; the open finishes on its own thread later."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        sources = await open_sources([f"rtsp://127.0.0.1:{silent.getsockname()[1]}/cam"])
        sources[0].open_timeout_ms = 60_000
        pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=1, reconnect=FAST))
        task = asyncio.create_task(pipeline.run())
        silent.settimeout(20)
        connection, _ = await asyncio.to_thread(silent.accept)  # the camera's open has connected: under way
        with connection:
            pipeline.stop()
            summary = await asyncio.wait_for(task, 30)  # far less than the open's 60 s: it was not waited for
    assert summary.frames_in == 0


async def test_a_stop_before_the_readers_start_is_not_lost(engine, decoder, short_video) -> None:
    sources = await open_sources([str(short_video)], loop=True)
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=1))
    pipeline.stop()  # before run() has started any reader
    summary = await asyncio.wait_for(pipeline.run(), 30)  # a looped file would otherwise play for ever
    assert summary.frames_in == summary.frames_out
