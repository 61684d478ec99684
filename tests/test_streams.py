"""Admission control on a real pipeline: streams admitted or parked at start, joining, overrunning; and the
four-stream real-time proof on this machine."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge_agent.admission import MEASURED_AFTER, BatchCost, DeviceProfile, StreamDemand, admit_in_order, fit
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.profiler import measure_pipeline_profile
from edge_agent.sources import VideoSource, open_sources
from edge_agent.stats import StreamCounts
from edge_agent.streams import AdmissionSettings, StreamRoster, admission_sizes
from tests.conftest import VIDEO


def cpu_profile() -> DeviceProfile:
    return DeviceProfile({1: BatchCost(1, 1, 15, 1), 2: BatchCost(2, 1, 29, 1), 4: BatchCost(4, 2, 56, 2)})


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, object, str]] = []

    def __call__(self, kind, stream_id, figures, detail) -> None:  # type: ignore[no-untyped-def]
        self.seen.append((kind, stream_id, figures, detail))

    def kinds(self, stream_id: str | None = None) -> list[str]:
        return [k for k, s, _, _ in self.seen if stream_id is None or s == stream_id]


async def roster_on(engine, decoder, streams: int, profile: DeviceProfile, **settings) -> tuple[StreamRoster, Events]:
    sources = await open_sources([str(VIDEO)] * streams, fps=24, loop=True)
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=4, realtime=True))
    roster = StreamRoster(pipeline, profile, AdmissionSettings(**settings))
    events = Events()
    roster.listeners.append(events)
    return roster, events


async def test_streams_at_start_are_admitted_in_order_and_the_rest_parked_with_figures(engine, decoder) -> None:
    roster, events = await roster_on(engine, decoder, 4, cpu_profile())
    decisions = roster.admit_initial()
    assert [d.admitted for d in decisions] == [True, True, False, False]
    p = roster.pipeline
    assert [s.stream_id for s in p.sources] == ["s0", "s1"]
    assert [s.stream_id for s in p.parked] == ["s2", "s3"]
    assert events.kinds() == ["stream_admitted", "stream_admitted", "stream_refused", "stream_refused"]
    refused = events.seen[2][2]
    assert refused.utilisation > refused.headroom and refused.batch_size == 4  # type: ignore[attr-defined]
    states = {s.stream_id: s.state for s in roster.states()}
    assert states == {"s0": "admitted", "s1": "admitted", "s2": "parked", "s3": "parked"}
    assert "utilisation 1.08 > headroom 0.80" in roster.entries["s2"].reason


async def test_with_admission_off_every_stream_is_admitted_and_the_figures_still_say_why_not(engine, decoder) -> None:
    roster, _ = await roster_on(engine, decoder, 3, cpu_profile(), enabled=False)
    decisions = roster.admit_initial()
    assert all(d.admitted for d in decisions) and "admission control off" in decisions[2].reason
    assert len(roster.pipeline.sources) == 3


def inject(roster: StreamRoster, stream_id: str, frames: int, missed: int) -> None:
    c = roster.pipeline.stats.stream(stream_id)
    c.frames_in += frames
    c.frames_out += frames
    c.deadline_misses += missed


async def test_an_overrun_is_reported_and_the_most_recent_stream_parked_until_the_rest_fit(engine, decoder) -> None:
    roster, events = await roster_on(engine, decoder, 2, cpu_profile(), overrun_windows=3)
    roster.admit_initial()
    assert len(roster.admitted()) == 2
    # Serving measures b4 at 116 ms (the machine got busier): 2 x 24 fps no longer fit.
    for _ in range(MEASURED_AFTER):
        roster.profile.observe(BatchCost(4, 4, 100, 4, 8))
    for window in range(3):
        inject(roster, "s0", 24, 0)
        inject(roster, "s1", 24, 2 if window else 0)  # misses in 2 windows of 3: not yet an overrun
        assert roster.check_overruns() == []
    inject(roster, "s0", 24, 0)
    inject(roster, "s1", 24, 3)
    assert roster.check_overruns() == ["s1"]
    assert events.kinds("s1")[-2:] == ["stream_overrun", "stream_parked"]
    overrun = next(e for e in events.seen if e[0] == "stream_overrun")
    assert "7 of 72 frames" in overrun[3] and overrun[2].limit == "throughput"  # type: ignore[attr-defined]
    assert [s.stream_id for s in roster.pipeline.parked] == ["s1"]
    assert roster.entries["s1"].state == "parked" and "parked on overrun" in roster.entries["s1"].reason
    assert roster.entries["s0"].state == "admitted"


async def test_an_overrun_the_model_did_not_predict_derates_the_profile(engine, decoder) -> None:
    roster, events = await roster_on(engine, decoder, 2, cpu_profile(), overrun_windows=3)
    roster.admit_initial()
    for _ in range(3):
        inject(roster, "s0", 24, 1)
        inject(roster, "s1", 24, 1)
        roster.check_overruns()
    assert roster.profile.derate == pytest.approx(1.15)
    assert events.kinds().count("stream_overrun") == 2
    # 0.72 x 1.15 = 0.83 > 0.8: the set no longer fits, so the most recent stream was parked.
    assert [s.stream_id for s in roster.pipeline.parked] == ["s1"]
    assert "derated x1.15" in next(e for e in events.seen if e[0] == "stream_overrun")[3]
    for _ in range(5):  # clean windows: the derating fades, slowly
        inject(roster, "s0", 24, 0)
        roster.check_overruns()
    assert roster.profile.derate == pytest.approx(1.15 * 0.99**5)


async def test_frames_at_risk_make_an_overrun_before_any_misses(engine, decoder) -> None:
    import numpy as np

    from edge_agent.frames import Batch, Frame

    roster, events = await roster_on(engine, decoder, 2, cpu_profile())  # 2 windows
    roster.admit_initial()
    entry = roster.entries["s1"]
    # The model: 182.5 ms at b4 for 48 fps; at risk a quarter of the way on to the 1000 ms deadline.
    assert entry.risk_ms == pytest.approx(182.5 + (1000 - 182.5) / 4)
    image = np.zeros((4, 4, 3), np.uint8)
    for _ in range(2):
        late = [Frame("s1", i, image, 0.0, 1.0, 0.0, t_post_end=0.6) for i in range(4)]  # 600 ms: not missed
        roster._on_batch(Batch(late, target_size=4), roster.pipeline.serving)
        inject(roster, "s0", 24, 0)
        inject(roster, "s1", 24, 0)
        parked = roster.check_overruns()
    assert parked == ["s1"] and events.kinds("s1")[-2:] == ["stream_overrun", "stream_parked"]
    assert "0 of 48 frames missed or dropped, 8 past 387 ms (at risk)" in events.seen[-2][3]


async def test_a_stream_joining_that_does_not_fit_is_parked_and_the_admitted_untouched(engine, decoder) -> None:
    roster, events = await roster_on(engine, decoder, 2, cpu_profile())
    roster.admit_initial()
    before = [(s.stream_id, s.state) for s in roster.states()]
    joining = VideoSource(str(VIDEO), "cam9", fps=24, loop=True)
    await asyncio.to_thread(joining.open)
    decision = roster.request(joining)
    assert not decision.admitted and decision.limit == "throughput" and decision.limiting_stream == "cam9"
    assert [(s.stream_id, s.state) for s in roster.states()][:2] == before
    assert roster.pipeline.batch_size == 4 and [s.stream_id for s in roster.pipeline.sources] == ["s0", "s1"]
    # Capacity freed: the parked one is admitted, first come first served.
    await roster.remove("s1")
    assert roster.entries["cam9"].state == "admitted" and events.kinds("cam9") == ["stream_refused",
                                                                                   "stream_admitted"]
    for s in (*roster.pipeline.sources, *roster.pipeline.parked):
        s.close()


def load_rose_beyond_the_profile(roster: StreamRoster, drift: float) -> bool:
    """Other work on this machine pushed serving costs past what admission was promised on: the profile's
    headroom is used up (drift), or not even the one stream left (the last is never parked) fits any more."""
    admitted = roster.admitted()
    last_does_not_fit = len(admitted) == 1 and not fit(roster.profile, [admitted[0].demand],
                                                       roster.settings.headroom).fits
    return last_does_not_fit or drift > 1 / roster.settings.headroom


def assert_overruns_reported(events: Events, losing: list[str], info: str) -> None:
    """When the load rises beyond the profile, the promise becomes: never silently. Every admitted stream that
    lost frames was reported as overrunning (and the agent re-checked the set, parking the newest first)."""
    overrun = {sid for k, sid, _, _ in events.seen if k == "stream_overrun"}
    assert set(losing) <= overrun, f"streams lost frames without a stream_overrun report: {losing}; {info}"


def steady(counts: dict[str, StreamCounts], start: dict[str, StreamCounts], stream_id: str) -> StreamCounts:
    a, b = start.get(stream_id, StreamCounts()), counts[stream_id]
    return StreamCounts(b.frames_in - a.frames_in, b.frames_out - a.frames_out, b.dropped - a.dropped,
                        b.deadline_misses - a.deadline_misses)


async def test_four_realtime_streams_the_admitted_ones_are_served_the_rest_parked(engine, decoder) -> None:
    """The proof on this machine, in real time: 4 x 24 fps of the sample video. How many fit is not assumed:
    the profile is measured here, now (the machine is shared), and admission derives it."""
    sizes = admission_sizes(engine)
    profile = await measure_pipeline_profile(engine, decoder, str(VIDEO), sizes, 3)
    demands = [StreamDemand(f"s{i}", 24, 1000) for i in range(4)]
    expected = sum(d.admitted for d in admit_in_order(profile, demands))
    sources = await open_sources([str(VIDEO)] * 4, fps=24, loop=True)
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=4, realtime=True, deadline_ms=1000))
    roster = StreamRoster(pipeline, profile, AdmissionSettings(adapt_batch_size=True))
    events = Events()
    roster.listeners.append(events)
    decisions = roster.admit_initial()
    assert sum(d.admitted for d in decisions) == expected
    if expected == 0:  # a machine too slow for even one 24 fps stream: refusing all four is the right answer
        assert len(pipeline.parked) == 4 and not pipeline.sources, profile.describe()
        assert events.kinds() == ["stream_refused"] * 4, events.seen
        for source in pipeline.parked:
            source.close()
        return
    if expected < 4:
        assert pipeline.parked, "the profile says 4 do not fit: at least one is parked"
    checker = asyncio.create_task(roster.run())
    run = asyncio.create_task(pipeline.run())
    drift: list[float] = []

    async def watch_drift() -> None:  # how far serving costs moved from the profile admission was made on
        while True:
            await asyncio.sleep(0.5)
            drift.append(roster.profile.drift())

    watcher = asyncio.create_task(watch_drift())
    await pipeline.started.wait()
    await asyncio.sleep(5.0)  # start-up: warm-up, first batches, the profile learning
    start = {k: v.copy() for k, v in pipeline.stats.streams.items()}
    t0 = time.monotonic()
    await asyncio.sleep(12.0)
    end = {k: v.copy() for k, v in pipeline.stats.streams.items()}
    elapsed = time.monotonic() - t0
    pipeline.stop()
    checker.cancel()
    watcher.cancel()
    summary = await asyncio.wait_for(run, 30)
    states = {s.stream_id: s for s in roster.states()}
    report = {sid: (st.state, steady(end, start, sid)) for sid, st in states.items() if sid in end}
    info = (f"profile {profile.describe()}; max drift x{max(drift, default=1):.2f}; expected {expected} admitted; "
            f"steady {elapsed:.1f} s: {report}; "
            f"events {[(k, sid, d[:300]) for k, sid, _, d in events.seen]}")
    print(info)
    admitted = [sid for sid, st in states.items() if st.state == "admitted"]
    assert admitted, "not all four degraded: some are served"
    losing = [sid for sid in admitted if steady(end, start, sid).deadline_misses + steady(end, start, sid).dropped]
    if losing and load_rose_beyond_the_profile(roster, max(drift, default=1.0)):
        # Admission promises deadlines while serving costs stay within the headroom of the profile it was made
        # on; past it (other work on this machine) the promise is that overruns are reported and adapted to.
        assert_overruns_reported(events, losing, info)
        return
    for sid in admitted:
        c = steady(end, start, sid)
        assert c.frames_in >= 0.9 * 24 * elapsed, f"{sid} served at its rate: {info}"
        assert c.dropped + c.deadline_misses <= 0.001 * c.frames_in, f"{sid} missed or dropped: {info}"
    refused_at_start = {d.stream_id for d in decisions if not d.admitted}
    for sid, st in states.items():
        if st.state != "parked":
            continue
        assert st.reason, info
        if sid in refused_at_start:
            assert st.frames_in == 0, f"a parked stream is not read: {info}"
        else:  # admitted, then parked on overrun: reported with its figures
            assert any(k == "stream_parked" and s == sid and f is not None for k, s, f, _ in events.seen), info
    assert summary.frames_out + summary.dropped == summary.frames_in


async def test_a_desired_state_adding_a_stream_that_does_not_fit_is_refused_with_figures_over_mqtt(
        broker, prefix, engine, decoder, short_video) -> None:
    from edge_agent.agent import Agent
    from edge_agent.probes.host import HostProbe
    from edge_agent.settings import AgentSettings
    from schemas import AgentEvent, DesiredState, StreamSpec, Telemetry, Topics, decode, encode
    from tests.mqtt_helpers import eventually, observing

    topics = Topics(prefix)
    sources = await open_sources([str(short_video)], loop=True)  # s0, 10 fps
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=2, realtime=True))
    # The profile as given (not learnt): this test is about the order's flow, not about how busy the machine is.
    roster = StreamRoster(pipeline, cpu_profile(), AdmissionSettings(learn=False))
    roster.admit_initial()
    agent = Agent(pipeline, HostProbe(), AgentSettings(broker_url=broker.url, agent_id="cam1", prefix=prefix,
                                                      telemetry_interval_s=0.5), roster=roster)
    s0 = StreamSpec(stream_id="s0", url=str(short_video), loop=True)
    async with observing(broker.url, f"{prefix}/#") as obs:
        task = asyncio.create_task(agent.run())
        try:
            await eventually(lambda: pipeline.stats.frames_out > 5, 30, "serving s0")

            def events() -> list[AgentEvent]:
                return [decode(AgentEvent, p) for p in obs.on(topics.events("cam1"))]

            await eventually(lambda: any(e.kind == "stream_admitted" for e in events()), 10, "s0 admitted event")
            # A 200 fps stream: no batch size of this device keeps up beside s0.
            big = StreamSpec(stream_id="cam-big", url=str(short_video), fps=200, deadline_ms=500, loop=True)
            await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=1,
                                                                          streams=[s0, big])))
            await eventually(lambda: any(e.kind == "stream_refused" for e in events()), 10, "refusal event")
            refused = next(e for e in events() if e.kind == "stream_refused")
            assert refused.generation == 1 and refused.admission is not None
            figures = refused.admission
            assert figures.stream_id == "cam-big" and not figures.admitted and figures.limit == "throughput"
            assert figures.total_fps == 210 and figures.utilisation > figures.headroom and figures.batch_size
            assert "cam-big" in refused.detail and "refused" in refused.detail
            # The admitted stream is untouched: still read, same batch size; the refused one is parked, not read.
            before = pipeline.stats.streams["s0"].frames_in
            await eventually(lambda: pipeline.stats.streams["s0"].frames_in > before + 5, 10, "s0 still read")
            assert [s.stream_id for s in pipeline.sources] == ["s0"] and pipeline.batch_size == 2
            assert pipeline.stats.stream("cam-big").frames_in == 0
            await eventually(lambda: any(
                [s.stream_id for s in decode(Telemetry, p).streams] == ["s0", "cam-big"]
                for p in obs.on(topics.telemetry("cam1"))), 10, "telemetry with both streams")
            last = decode(Telemetry, obs.on(topics.telemetry("cam1"))[-1])
            states = {s.stream_id: s for s in last.streams}
            assert states["s0"].state == "admitted" and states["cam-big"].state == "parked"
            assert "utilisation" in states["cam-big"].reason and states["cam-big"].frames_in == 0
            # The next desired state drops it and adds one that fits: admitted; s0 still untouched.
            small = StreamSpec(stream_id="cam2", url=str(short_video), fps=1, loop=True)  # fits however busy
            await obs.publish(topics.desired("cam1"), encode(DesiredState(agent_id="cam1", generation=2,
                                                                          streams=[s0, small])))
            try:
                await eventually(lambda: roster.entries.get("cam2") is not None
                                 and roster.entries["cam2"].state == "admitted", 10, "cam2 admitted")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {roster.states()}; {[(e.kind, e.detail) for e in events()]}") from None
            assert "cam-big" not in roster.entries and pipeline.stream_ids() == ["s0", "cam2"]
            await eventually(lambda: any(e.kind == "stream_removed" for e in events()), 10, "removal event")
        finally:
            pipeline.stop()
            summary = await asyncio.wait_for(task, 30)
    assert summary.frames_out + summary.dropped == summary.frames_in


async def test_streams_admitted_on_a_profile_that_was_wrong_overrun_and_are_parked_until_the_rest_are_served(
        engine, decoder) -> None:
    """Overruns adapted to, in real time: a profile claiming 5 ms a frame admits all four streams; the
    frames that then miss (or come close) are reported, and the most recently admitted streams are parked
    until the measured profile says the rest fit; those are then served cleanly."""
    from tests.mqtt_helpers import eventually

    optimistic = DeviceProfile({b: BatchCost(b, 0.2 * b, 4.6 * b, 0.2 * b) for b in (1, 2, 4, 8)})
    # The load is set from what this machine measures now, not assumed: each stream takes 45 % of the best
    # throughput, so one fits with room and four overload it about 1.8 times, on a fast CPU as on a slow one.
    measured = await measure_pipeline_profile(engine, decoder, str(VIDEO), [1, 2, 4, 8], 3)
    capacity_fps = max(b * 1000.0 / measured.period_ms(b) for b in measured.batch_sizes)
    fps = max(1.0, min(60.0, round(0.45 * capacity_fps, 1)))
    sources = await open_sources([str(VIDEO)] * 4, fps=fps, loop=True)
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=4, realtime=True, deadline_ms=1000))
    roster = StreamRoster(pipeline, optimistic, AdmissionSettings(adapt_batch_size=True))
    events = Events()
    roster.listeners.append(events)
    assert all(d.admitted for d in roster.admit_initial())
    checker = asyncio.create_task(roster.run())
    run = asyncio.create_task(pipeline.run())
    try:
        await eventually(lambda: "stream_parked" in events.kinds(), 15, "a stream parked on overrun")
        await asyncio.sleep(3.0)  # the backlog of the overload drains
        start = {k: v.copy() for k, v in pipeline.stats.streams.items()}
        await asyncio.sleep(6.0)
        end = {k: v.copy() for k, v in pipeline.stats.streams.items()}
    finally:
        pipeline.stop()
        checker.cancel()
        summary = await asyncio.wait_for(run, 30)
    states = {s.stream_id: s for s in roster.states()}
    info = f"{optimistic.describe()}; {[(k, sid, d[:200]) for k, sid, _, d in events.seen]}"
    parked = [sid for sid, st in states.items() if st.state == "parked"]
    admitted = [sid for sid, st in states.items() if st.state == "admitted"]
    assert parked and admitted, info
    assert parked == [f"s{i}" for i in range(4 - len(parked), 4)], "the most recently admitted go first"
    for sid in parked:
        figures = next(f for k, s, f, _ in events.seen if k == "stream_parked" and s == sid)
        assert figures is not None and not figures.admitted, info  # type: ignore[attr-defined]
    assert any(k == "stream_overrun" for k in events.kinds()), info
    losing = [sid for sid in admitted if steady(end, start, sid).deadline_misses + steady(end, start, sid).dropped]
    if losing and load_rose_beyond_the_profile(roster, roster.profile.drift()):
        assert_overruns_reported(events, losing, info)
        return
    for sid in admitted:
        c = steady(end, start, sid)
        assert c.frames_in >= 0.9 * fps * 6 and c.dropped + c.deadline_misses <= 0.001 * c.frames_in, (sid, c, info)
    assert summary.frames_out + summary.dropped == summary.frames_in, "never silently dropped"
