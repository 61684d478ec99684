"""The streams a pipeline serves, under admission control: admits or parks each stream (at start, when
one joins, when a desired state lists it), keeps the device profile up to date from what the pipeline
measures, and adapts to overruns. The maths is ``edge_agent.admission``; this is its owner of state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edge_agent.adapters import ModelAdapter
from edge_agent.admission import (
    DEFAULT_HEADROOM,
    BatchCost,
    DeviceProfile,
    StreamDemand,
    admit,
    figures,
    fit,
)
from edge_agent.engines import InferenceEngine
from edge_agent.errors import EdgeAgentError, SourceError
from edge_agent.frames import Batch
from edge_agent.pipeline import Pipeline
from edge_agent.sources import VideoSource
from edge_agent.stages import ServingConfig
from edge_agent.stats import StreamCounts
from schemas import AdmissionFigures, EventKind, ProfileReport, StreamSpec, StreamState
from schemas.messages import MAX_ERROR_CHARS

log = logging.getLogger(__name__)

State = Literal["admitted", "parked", "ended"]


@dataclass
class AdmissionSettings:
    enabled: bool = True  # False: every stream is admitted (figures still computed and reported)
    headroom: float = DEFAULT_HEADROOM
    window_s: float = 1.0  # how often overruns are checked
    overrun_ratio: float = 0.01  # (misses + drops) / frames over the last windows
    overrun_windows: int = 2  # consecutive windows with misses, drops or frames at risk; the cool-down after adapting
    risk_fraction: float = 0.25  # a frame is at risk past the modelled latency + this share of the slack to its
    # deadline: a queue building up shows there long before frames miss
    derate_step: float = 1.15  # when the model says the set fits but it overruns: load the profile cannot see
    derate_decay: float = 0.99  # per clean window (no miss, drop or frame at risk), back towards 1
    adapt_batch_size: bool = False  # standalone: serve the best batch size admission found (no controller)
    learn: bool = True  # measured full batches replace the profile's figures (off: admit on the profile as given)


@dataclass
class StreamEntry:
    source: VideoSource
    deadline_ms: float
    state: State
    order: int  # admission order: first come, first served; the last admitted is parked first
    figures: AdmissionFigures | None = None
    reason: str = ""
    history: deque[tuple[int, int, int]] = field(default_factory=lambda: deque(maxlen=16))  # (frames, bad, risky)
    risk_ms: float = 0.0  # e2e past which a frame is at risk (see AdmissionSettings.risk_fraction)
    at_risk: int = 0  # frames past risk_ms in the current window
    last: StreamCounts = field(default_factory=StreamCounts)

    @property
    def stream_id(self) -> str:
        return self.source.stream_id

    @property
    def demand(self) -> StreamDemand:
        # A camera not connected yet is admitted on its --fps, else DEFAULT_FPS; once open, on its own rate.
        return StreamDemand(self.stream_id, self.source.nominal_fps, self.deadline_ms)


StreamListener = Callable[[EventKind, str, AdmissionFigures | None, str], None]


class StreamRoster:
    """Sole owner of which streams a pipeline reads; reports every decision to its listeners."""

    def __init__(self, pipeline: Pipeline, profile: DeviceProfile, settings: AdmissionSettings | None = None) -> None:
        self.pipeline = pipeline
        self.profile = profile
        self.settings = settings or AdmissionSettings()
        self.entries: dict[str, StreamEntry] = {}
        self.listeners: list[StreamListener] = []
        self._order = 0
        self._cooldown = 0
        self._apply_lock = asyncio.Lock()
        pipeline.batch_listeners.append(self._on_batch)
        pipeline.source_end_listeners.append(self._on_source_end)

    # --- reporting ----------------------------------------------------------------------

    def _report(self, kind: EventKind, stream_id: str, figures: AdmissionFigures | None, detail: str) -> None:
        log.info("%s %s: %s", kind, stream_id, detail)
        for listener in self.listeners:
            listener(kind, stream_id, figures, detail)

    def states(self) -> list[StreamState]:
        counts = self.pipeline.stats.streams
        out = []
        for e in sorted(self.entries.values(), key=lambda e: e.order):
            c = counts.get(e.stream_id, StreamCounts())
            link = e.source.health
            out.append(StreamState(
                stream_id=e.stream_id, state=e.state, fps=round(e.demand.fps, 3), deadline_ms=e.deadline_ms,
                frames_in=c.frames_in, frames_out=c.frames_out, dropped=c.dropped, deadline_misses=c.deadline_misses,
                reason=e.reason[:1000], connection=link.state, connection_since=round(link.since, 3),
                reconnects=link.reconnects, last_error=link.last_error[:MAX_ERROR_CHARS]))
        return out

    def admitted(self) -> list[StreamEntry]:
        return sorted((e for e in self.entries.values() if e.state == "admitted"), key=lambda e: e.order)

    # --- admission ----------------------------------------------------------------------

    def _decide(self, source: VideoSource) -> tuple[StreamEntry, AdmissionFigures]:
        self._order += 1
        entry = StreamEntry(source, source.deadline_ms or self.pipeline.config.deadline_ms, "parked", self._order)
        decision = admit(self.profile, [e.demand for e in self.admitted()], entry.demand, self.settings.headroom)
        if not decision.admitted and not self.settings.enabled:
            decision = decision.model_copy(update={
                "admitted": True, "reason": "admission control off: admitted although " + decision.reason})
        entry.figures = decision
        entry.reason = decision.reason
        entry.last = self.pipeline.stats.stream(source.stream_id).copy()
        return entry, decision

    def admit_initial(self) -> list[AdmissionFigures]:
        """Decide, in order, on the streams the pipeline was built with (before it runs)."""
        decisions = []
        for source in list(self.pipeline.sources):
            entry, decision = self._decide(source)
            self.entries[source.stream_id] = entry
            if decision.admitted:
                entry.state = "admitted"
            else:
                self.pipeline.park(source.stream_id)
            self._report("stream_admitted" if decision.admitted else "stream_refused", source.stream_id, decision,
                         decision.reason)
            decisions.append(decision)
        self._adapt_batch_size()
        return decisions

    def request(self, source: VideoSource) -> AdmissionFigures:
        """A stream joining (opened): admitted and read, or parked; the admitted ones are untouched."""
        if source.stream_id in self.entries:
            raise SourceError(source.uri, f"stream id {source.stream_id!r} is already in use")
        entry, decision = self._decide(source)
        self.pipeline.add_source(source, parked=not decision.admitted)
        entry.state = "admitted" if decision.admitted else "parked"
        self.entries[source.stream_id] = entry
        self._report("stream_admitted" if decision.admitted else "stream_refused", source.stream_id, decision,
                     decision.reason)
        if decision.admitted:
            self._adapt_batch_size()
        return decision

    async def remove(self, stream_id: str) -> bool:
        entry = self.entries.pop(stream_id, None)
        if entry is None:
            return False
        await self.pipeline.remove_source(stream_id)
        self._report("stream_removed", stream_id, None, f"stream {stream_id} removed ({entry.state})")
        if entry.state == "admitted":
            self._retry_parked()
        return True

    def _retry_parked(self) -> None:
        """Capacity was freed: admit parked streams, first come first served, while they fit."""
        for e in sorted((e for e in self.entries.values() if e.state == "parked"), key=lambda e: e.order):
            decision = admit(self.profile, [a.demand for a in self.admitted()], e.demand, self.settings.headroom)
            if not decision.admitted:
                continue
            try:
                self.pipeline.unpark(e.stream_id)
            except SourceError as exc:
                log.info("cannot resume %s: %s", e.stream_id, exc)
                return
            e.state, e.figures, e.reason = "admitted", decision, decision.reason
            e.history.clear()
            e.last = self.pipeline.stats.stream(e.stream_id).copy()
            self._report("stream_admitted", e.stream_id, decision, "resumed: " + decision.reason)
        self._adapt_batch_size()

    def _adapt_batch_size(self) -> None:
        """After any change to the admitted set: new risk lines; standalone (no controller), serve the batch
        size the admitted set fits best at."""
        self._refresh_risk()
        if not self.settings.adapt_batch_size:
            return
        best = fit(self.profile, [e.demand for e in self.admitted()], self.settings.headroom)
        if best.batch_size is None or best.batch_size == self.pipeline.batch_size:
            return
        try:
            self.pipeline.switch(batch_size=best.batch_size)
        except Exception as exc:  # SwapError: the engine cannot serve it; keep serving
            log.warning("admission: cannot switch to batch %s: %s", best.batch_size, exc)

    # --- measuring and overruns ---------------------------------------------------------

    def _refresh_risk(self) -> None:
        admitted = self.admitted()
        latency = fit(self.profile, [e.demand for e in admitted], self.settings.headroom).latency_ms
        for e in admitted:
            e.risk_ms = latency + (e.deadline_ms - latency) * self.settings.risk_fraction if latency < e.deadline_ms \
                else e.deadline_ms

    def _on_batch(self, batch: Batch, serving: ServingConfig) -> None:
        for f in batch.frames:
            e = self.entries.get(f.stream_id)
            if e is not None and e.risk_ms and (f.t_post_end - f.t_capture) * 1000.0 > e.risk_ms:
                e.at_risk += 1
        if len(batch.frames) != batch.target_size or not self.settings.learn:
            return  # a partial batch says little about a full one
        self.profile.observe(BatchCost(batch.target_size, batch.pre_ms, batch.infer_ms, batch.post_ms,
                                       sum(f.decode_ms for f in batch.frames)))

    def _on_source_end(self, source: VideoSource) -> None:
        entry = self.entries.get(source.stream_id)
        if entry is None or entry.state != "admitted":
            return
        entry.state, entry.reason = "ended", "its source ended"
        self._retry_parked()

    def check_overruns(self) -> list[str]:
        """One window: per admitted stream, frames, misses + drops, and frames past their risk line (halfway
        from the modelled latency to the deadline: the early sign of an overload, before frames miss).
        A stream overruns when every one of the last ``overrun_windows`` windows had some, and together
        more than ``overrun_ratio`` of its frames. Returns the streams parked."""
        s = self.settings
        overrunning: list[tuple[StreamEntry, int, int, int]] = []
        troubled = False
        for e in self.admitted():
            now = self.pipeline.stats.stream(e.stream_id).copy()
            frames = max(now.frames_in - e.last.frames_in, now.frames_out - e.last.frames_out)
            bad = now.deadline_misses - e.last.deadline_misses + now.dropped - e.last.dropped
            risky, e.at_risk = e.at_risk, 0
            e.last = now
            e.history.append((frames, bad, risky))
            troubled = troubled or bool(bad or risky)
            recent = list(e.history)[-s.overrun_windows:]
            if len(recent) < s.overrun_windows or not all(b or r for _, b, r in recent):
                continue
            total = sum(f for f, _, _ in recent)
            total_bad = sum(b for _, b, _ in recent)
            total_risky = sum(r for _, _, r in recent)
            if max(total_bad, total_risky) > s.overrun_ratio * max(total, 1):
                overrunning.append((e, total, total_bad, total_risky))
        if not troubled and self.profile.derate > 1.0:
            # A clean window: the unseen load that derated the profile may be gone; forget it slowly.
            self.profile.derate = max(1.0, self.profile.derate * s.derate_decay)
        if self._cooldown > 0:
            self._cooldown -= 1
            return []
        if not overrunning:
            return []
        self._cooldown = s.overrun_windows
        return self._adapt(overrunning)

    def _adapt(self, overrunning: list[tuple[StreamEntry, int, int, int]]) -> list[str]:
        s = self.settings
        admitted = self.admitted()
        current = fit(self.profile, [e.demand for e in admitted], s.headroom)
        derated = ""
        if current.fits:
            # The model said this set fits, yet frames miss: load the profile cannot see. Be more careful.
            self.profile.derate *= s.derate_step
            derated = f"; the profile did not predict it: derated x{self.profile.derate:.2f}"
        for e, frames, bad, risky in overrunning:
            detail = (f"stream {e.stream_id}: {bad} of {frames} frames missed or dropped, {risky} past "
                      f"{e.risk_ms:.0f} ms (at risk) over the last {s.overrun_windows} windows "
                      f"(> {s.overrun_ratio:.1%}); measured profile: {self.profile.describe()}{derated}")
            self._report("stream_overrun", e.stream_id, figures(e.demand, current, len(admitted), s.headroom),
                         detail)
        parked: list[str] = []
        kept = list(admitted)
        result = fit(self.profile, [e.demand for e in kept], s.headroom)
        while len(kept) > 1 and not result.fits and s.enabled:
            last = kept.pop()
            result = fit(self.profile, [e.demand for e in kept], s.headroom)
            self.pipeline.park(last.stream_id)
            last.state = "parked"
            decision = figures(last.demand, fit(self.profile, [e.demand for e in [*kept, last]], s.headroom),
                               len(kept) + 1, s.headroom)
            last.figures = decision
            last.reason = f"parked on overrun: {decision.reason}"
            parked.append(last.stream_id)
            self._report("stream_parked", last.stream_id, decision,
                         f"parked (most recently admitted) so the {len(kept)} stream(s) before it fit: "
                         f"{decision.reason}")
        for e in kept:
            e.history.clear()
        self._adapt_batch_size()
        return parked

    async def run(self) -> None:
        """Check for overruns every window until cancelled."""
        await self.pipeline.started.wait()
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.settings.window_s
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += self.settings.window_s
            if next_at - loop.time() < self.settings.window_s / 2:
                # Fell behind (the event loop stalled): start afresh rather than catch up with windows
                # microseconds long back to back, which would count as overrun windows "in a row".
                next_at = loop.time() + self.settings.window_s
            self.check_overruns()

    # --- desired state ------------------------------------------------------------------

    async def apply(self, specs: list[StreamSpec], default_fps: float | None = None) -> list[AdmissionFigures]:
        """Converge on ``specs``: remove streams not listed (or changed), open and request the new ones in
        the order given. Returns the decisions on the new streams."""
        async with self._apply_lock:  # one order at a time: the next one sees what this one did
            return await self._apply(specs, default_fps)

    async def _apply(self, specs: list[StreamSpec], default_fps: float | None) -> list[AdmissionFigures]:
        wanted = {s.stream_id: s for s in specs}
        for stream_id, entry in list(self.entries.items()):
            spec = wanted.get(stream_id)
            if spec is None or not _same(spec, entry):
                await self.remove(stream_id)
        decisions = []
        for spec in specs:
            if spec.stream_id in self.entries:
                continue
            source = VideoSource(spec.url, spec.stream_id, fps=spec.fps or default_fps, loop=spec.loop,
                                 deadline_ms=spec.deadline_ms)
            try:
                if not source.live:  # a file must open now; a camera is connected, and retried, by the pipeline
                    await asyncio.to_thread(source.open)
                decisions.append(self.request(source))
            except SourceError as exc:
                await asyncio.to_thread(source.close)
                self._report("source_error", spec.stream_id, None, str(exc))
        self._retry_parked()  # a new order is the moment to look again at streams parked before
        return decisions


def _same(spec: StreamSpec, entry: StreamEntry) -> bool:
    src = entry.source
    return (spec.url == src.uri and spec.loop == src.loop and spec.deadline_ms == src.deadline_ms
            and (spec.fps is None or src.info is None or abs(spec.fps - src.info.fps) < 1e-6))


def print_decisions(decisions: list[AdmissionFigures], say: Callable[[str], None]) -> None:
    for d in decisions:
        state = "admitted" if d.admitted else "PARKED"
        say(f"stream {d.stream_id}: {state} - {d.reason} (predicted batch delay {d.predicted_delay_ms:.0f} ms, "
            f"latency {d.predicted_latency_ms:.0f} ms)")


DEFAULT_ADMISSION_SIZES = [1, 2, 4, 8]


def admission_sizes(engine: InferenceEngine, requested: list[int] | None = None) -> list[int]:
    """Batch sizes admission chooses among: those asked for that the engine serves (a static engine: its own)."""
    wanted = requested or DEFAULT_ADMISSION_SIZES
    served = engine.batch_sizes
    if served is None:
        return sorted(set(wanted))
    return sorted(s for s in served if requested is None or s in requested) or sorted(served)


async def load_device_profile(engine: InferenceEngine, decoder: ModelAdapter, first_source: str, sizes: list[int],
                              profile_path: Path | None = None, overlap: bool = False,
                              progress: Callable[[str], None] = lambda _m: None) -> DeviceProfile:
    """The profile admission starts from: ``edge-agent profile --json`` output, or a short measurement on the
    serving engine and real frames of the first source. Either way, what the pipeline measures while serving
    replaces it size by size."""
    if profile_path is not None:
        try:
            report = ProfileReport.model_validate_json(profile_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise EdgeAgentError(f"--profile {profile_path}: {exc}") from exc
        profile = DeviceProfile.from_report(report, overlap=overlap, sizes=sizes)
        if not profile.batch_sizes:
            raise EdgeAgentError(f"--profile {profile_path} has no row for batch sizes {sizes}")
        progress(f"admission profile from {profile_path}: {profile.describe()}")
        return profile
    from edge_agent.profiler import measure_pipeline_profile

    profile = await measure_pipeline_profile(engine, decoder, first_source, sizes, 3, overlap, progress)
    progress(f"admission profile: {profile.describe()}")
    return profile
