"""The reconciler: the one owner of the agent's serving state (engine, model, version, batch size).

Desired states arrive from MQTT in any order and at any pace; the reconciler works on the newest one
only, one at a time, and reports each generation's outcome exactly once:

- ``applied``: the switch took effect (the first batch at the new setting was inferred); only then
  does ``applied_generation`` move.
- ``refused`` with a reason (``RefusalReason``): the serving state is untouched. An order is checked
  against what this agent can serve (its engine's or registry's batch sizes, a memory estimate)
  before anything is spent, and any exception while loading or warming up an engine is a refusal.
- ``superseded``: a newer generation came before this one took effect. A queued order is dropped at
  once; a running one is abandoned at its next safe point (after resolve, download, load or warm-up,
  or while it waits for its first batch), its half-loaded engine released.
- ``stale``: a generation at or below one already taken (e.g. the retained order on reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.engines import InferenceEngine
from edge_agent.errors import OrderRefused, OutOfMemoryAtBatchSize
from edge_agent.pipeline import Pipeline
from edge_agent.probes import ResourceProbe
from edge_agent.swap import EngineSwapper, MemoryGuard
from mqtt_bus.bus import raise_if_cancelling
from schemas import DesiredState, EventKind, OrderOutcome, OrderOutcomeKind, RefusalReason

log = logging.getLogger(__name__)

DEFAULT_GUARD = MemoryGuard()
TIMING_KEYS = ("resolve", "download", "load", "warmup", "switch", "decision_to_first_batch", "cache_hit")


class OutcomeReporter(Protocol):
    """Where the reconciler's events and status go (the agent's MQTT side)."""

    async def publish_event(self, kind: EventKind, detail: str = "", generation: int | None = None,
                            timings_ms: dict[str, float] | None = None,
                            refusal: RefusalReason | None = None) -> None: ...

    async def publish_status(self) -> None: ...


class _Superseded(Exception):  # noqa: N818 - control flow inside the reconciler, never raised out of it
    """A newer generation arrived: abandon this one at the current safe point."""


@dataclass
class ReconcilerCounters:
    applied: int = 0
    refused: int = 0
    superseded: int = 0
    stale: int = 0
    engine_swaps: int = 0  # applied orders that loaded a new engine
    refusals_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class _Order:
    desired: DesiredState
    received: float  # monotonic


class Reconciler:
    """Takes desired states (``submit``), applies the newest (``run``), reports every outcome."""

    def __init__(self, pipeline: Pipeline, probe: ResourceProbe, reporter: OutcomeReporter,
                 loader: EngineSwapper | None = None, guard: MemoryGuard | None = None,
                 on_streams: Callable[[DesiredState], None] | None = None) -> None:
        self.pipeline = pipeline
        self.on_streams = on_streams  # starts stream admission (edge_agent.streams) for an order that lists streams
        self.probe = probe
        self.reporter = reporter
        self.loader = loader
        self._guard = guard
        self.counters = ReconcilerCounters()
        self.applied_generation = 0
        self.decided_generation = 0  # highest generation with an outcome (applied, refused, superseded)
        self.last_order: OrderOutcome | None = None
        self.servable: list[int] | None = self._engine_sizes()
        self._queued: _Order | None = None
        self._running: _Order | None = None
        self._wake = asyncio.Event()
        self._newer = asyncio.Event()  # set when an order arrives while one runs
        self.first_batch_grace_s = 2.0  # how long a switch already issued may finish when a newer order comes

    # --- what this agent can serve --------------------------------------------------------

    @property
    def guard(self) -> MemoryGuard:
        """The memory estimate orders must fit: the one given, else the loader's, else the default."""
        if self._guard is not None:
            return self._guard
        return self.loader.guard if self.loader is not None else DEFAULT_GUARD

    def _engine_sizes(self) -> list[int] | None:
        sizes = self.pipeline.serving.engine.batch_sizes
        return sorted(sizes) if sizes is not None else None

    async def refresh_servable(self) -> list[int] | None:
        """Batch sizes an order may ask for: the registry's for the serving model (else the engine's)."""
        if self.loader is None:
            self.servable = self._engine_sizes()
            return self.servable
        serving = self.pipeline.serving
        try:
            sizes = await self.loader.servable_sizes(serving.model, serving.version)
        except OrderRefused as exc:
            log.warning("servable batch sizes not refreshed: %s", exc)  # keep what was known
            return self.servable
        engine_sizes = self._engine_sizes()
        self.servable = sorted(set(sizes) | set(engine_sizes or [])) if sizes or engine_sizes else None
        return self.servable

    # --- orders in ------------------------------------------------------------------------

    @property
    def highest_taken(self) -> int:
        """Generations at or below this one are stale: decided, running or queued already."""
        running = self._running.desired.generation if self._running else 0
        queued = self._queued.desired.generation if self._queued else 0
        return max(self.decided_generation, running, queued)

    async def submit(self, desired: DesiredState) -> None:
        """Take an order from the message loop; never waits for a load."""
        if desired.generation <= self.highest_taken:
            self.counters.stale += 1
            await self.reporter.publish_event("desired_ignored", f"generation {desired.generation} is stale: "
                                              f"{self.highest_taken} already taken (applied "
                                              f"{self.applied_generation})", desired.generation)
            return
        if desired.streams is not None:
            if self.on_streams is None:
                await self.reporter.publish_event("error", "desired state lists streams but this agent runs "
                                                  "without stream management", desired.generation)
            else:  # admission reports each stream's decision itself, under this generation (the agent runs it)
                self.on_streams(desired)
        previous, self._queued = self._queued, _Order(desired, time.monotonic())
        if previous is not None:
            await self._decide(previous, "superseded", f"superseded by generation {desired.generation} before "
                               "it started")
        self._newer.set()
        self._wake.set()

    async def run(self) -> None:
        """Work through orders, newest only, until cancelled."""
        before = self.servable
        if await self.refresh_servable() != before:
            await self.reporter.publish_status()  # the status sent on connect may predate the registry's answer
        while True:
            raise_if_cancelling()
            await self._wake.wait()
            self._wake.clear()
            order, self._queued = self._queued, None
            if order is None:
                continue
            self._newer.clear()
            self._running = order
            try:
                await self._execute(order)
            except _Superseded:
                newer = self._queued.desired.generation if self._queued else "?"
                await self._decide(order, "superseded", f"superseded by generation {newer} before it took effect")
            except OrderRefused as exc:
                await self._decide(order, "refused", exc.detail, refusal=exc.reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end order handling: refuse, keep serving
                log.exception("order %d failed unexpectedly", order.desired.generation)
                await self._decide(order, "refused", f"{type(exc).__name__}: {exc}", refusal="load_error")
            finally:
                self._running = None

    # --- one order ------------------------------------------------------------------------

    def _check_newer(self) -> None:
        if self._newer.is_set():
            raise _Superseded

    async def _execute(self, order: _Order) -> None:
        desired = order.desired
        serving = self.pipeline.serving
        name = desired.model or serving.model
        version = desired.version or serving.version
        batch_size = desired.batch_size or serving.batch_size
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        if (name, version, batch_size) == (serving.model, serving.version, serving.batch_size):
            # Nothing to change (e.g. an order that only lists streams): no registry round trip that could
            # fail and be reported as a refusal of the size already serving.
            for key in ("switch", "decision_to_first_batch"):
                timings.pop(key, None)
            await self._decide(order, "applied", f"{name} {version} batch {batch_size} kept (already serving it)",
                               timings=timings)
            return
        if self.loader is None:
            if (name, version) != (serving.model, serving.version):
                raise OrderRefused("no_registry", f"{name} {version} asked for, serving {serving.model} "
                                   f"{serving.version}: another model needs a registry (--registry)")
            await self._check_size_on_serving_engine(batch_size, "no_registry",
                                                     "other sizes need an engine from a registry (--registry)")
            detail = await self._switch(order, timings, batch_size, detail=f"batch size {batch_size}")
            await self._decide(order, "applied", detail, timings=timings)
            return
        t = time.monotonic()
        info = await self.loader.resolve(name, version, batch_size)
        timings["resolve"] = _ms(time.monotonic() - t)
        self._check_newer()
        served_type = self.pipeline.decoder.model_type
        if info.model_type is not None and info.model_type != served_type:
            # Known from the record: refuse before the download. A record without a type is loaded, and the
            # pipeline's own check (the adapter against the engine's outputs) refuses another family.
            raise OrderRefused("model_type", f"{name} {info.version} is a {info.model_type} model; this agent "
                               f"decodes {served_type} models (edge-agent --model-type)")
        sizes = serving.engine.batch_sizes
        if info.sha256 == serving.artifact_sha256 and (sizes is None or batch_size in sizes):
            # Same bytes (perhaps re-tagged as another version): no load, just the new setting.
            await self._check_size_on_serving_engine(batch_size, "no_artifact", "")
            detail = await self._switch(order, timings, batch_size, model=name, version=info.version,
                                        detail=f"{name} {info.version} batch {batch_size} on the serving engine")
            await self._decide(order, "applied", detail, timings=timings)
            return
        await self.reporter.publish_event("swap_started", f"{name} {info.version} batch {batch_size}",
                                          desired.generation)
        try:
            engine, loaded = await self.loader.load(info, batch_size, self.probe)
        except OrderRefused as exc:
            await self.reporter.publish_event("swap_failed", f"{exc.detail}; still serving {serving.model} "
                                              f"{serving.version} batch {self.pipeline.batch_size}",
                                              desired.generation, refusal=exc.reason)
            raise
        timings.update(loaded)
        if self._newer.is_set():
            engine.close()  # never served: release it now
            raise _Superseded
        detail = f"{name} {info.version} batch {batch_size} ({info.format}, artifact {info.id})"
        await self._switch(order, timings, batch_size, engine=engine, model=name, version=info.version,
                           artifact_sha256=info.sha256, detail=detail)
        self.counters.engine_swaps += 1
        await self.reporter.publish_event("swap_finished", detail, desired.generation, timings)
        await self._decide(order, "applied", detail, timings=timings)

    async def _check_size_on_serving_engine(self, batch_size: int, reason: RefusalReason, hint: str) -> None:
        """Bounds of the serving engine: its batch sizes, and memory for a larger batch."""
        serving = self.pipeline.serving
        sizes = serving.engine.batch_sizes
        if sizes is not None and batch_size not in sizes:
            raise OrderRefused(reason, f"batch {batch_size} asked for; the serving engine serves {sorted(sizes)}"
                               + (f": {hint}" if hint else ""))
        await asyncio.to_thread(self.guard.check_growth, self.probe, serving.batch_size, batch_size)

    async def _switch(self, order: _Order, timings: dict[str, float], batch_size: int, *,
                      engine: InferenceEngine | None = None, model: str | None = None, version: str | None = None,
                      artifact_sha256: str | None = None, detail: str) -> str:
        """Switch at the next batch boundary and wait until the first batch at the new setting is inferred
        (fills ``timings``); returns the detail of the applied outcome. Raises _Superseded or OrderRefused."""
        desired = order.desired
        serving = self.pipeline.serving
        unchanged = (engine is None and batch_size == serving.batch_size and (model or serving.model) == serving.model
                     and (version or serving.version) == serving.version)
        t = time.monotonic()
        if unchanged:
            for key in ("switch", "decision_to_first_batch"):  # nothing switched: no figure rather than 0
                timings.pop(key, None)
            return f"{detail} kept (already serving it)"
        known = self.pipeline.refusal_for(batch_size) if engine is None else None
        if known is not None:  # the device ran out of memory at this size (or a smaller one) already
            raise OrderRefused("memory", f"switch to {detail} refused: {known}")
        try:
            switched = self.pipeline.switch(batch_size=batch_size, engine=engine, model=model, version=version,
                                            generation=desired.generation, artifact_sha256=artifact_sha256)
        except Exception as exc:  # SwapError from the pipeline's own check: nothing changed
            if engine is not None:
                engine.close()
            raise OrderRefused("load_error", f"switch to {detail} refused by the pipeline: {exc}") from exc
        newer: asyncio.Future[Any] = asyncio.ensure_future(self._newer.wait())
        waiting: list[asyncio.Future[Any]] = [switched, newer]
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            newer.cancel()
        if not switched.done():
            # A newer order came, but this switch is already issued: a batch or so lets it take effect, so
            # what is reported matches what serves. A pipeline without frames must not hold the newer one up.
            await asyncio.wait([switched], timeout=self.first_batch_grace_s)
        if not switched.done() or switched.cancelled():
            # The next order switches from here (its switch cancels this one's future).
            raise _Superseded
        try:
            first_batch = switched.result()
        except OutOfMemoryAtBatchSize as exc:
            raise OrderRefused("memory", f"switch to {detail} refused: {exc}") from exc
        timings["switch"] = _ms(first_batch - t)
        first_batch_wall = time.time() - (time.monotonic() - first_batch)
        timings["decision_to_first_batch"] = _ms(first_batch_wall - desired.ts)
        timings["receive_to_first_batch"] = _ms(first_batch - order.received)
        return detail

    # --- outcomes out ---------------------------------------------------------------------

    async def _decide(self, order: _Order, outcome: OrderOutcomeKind, detail: str, *,
                      refusal: RefusalReason | None = None, timings: dict[str, float] | None = None) -> None:
        """Report one generation's outcome (exactly once) and the status that records it."""
        desired = order.desired
        generation = desired.generation
        self.decided_generation = max(self.decided_generation, generation)
        batch_size = desired.batch_size or self.pipeline.batch_size
        if outcome == "applied":
            self.applied_generation = max(self.applied_generation, generation)
            self.counters.applied += 1
            kind: EventKind = "desired_applied"
        elif outcome == "refused":
            self.counters.refused += 1
            self.counters.refusals_by_reason[refusal or "?"] = self.counters.refusals_by_reason.get(refusal or "?",
                                                                                                   0) + 1
            kind = "desired_refused"
        else:
            self.counters.superseded += 1
            kind = "desired_superseded"
        self.last_order = OrderOutcome(generation=generation, outcome=outcome,
                                       refusal=refusal, detail=detail[:4000], batch_size=batch_size)
        await self.reporter.publish_event(kind, detail, generation, timings, refusal)
        if outcome != "superseded":
            with contextlib.suppress(Exception):  # a registry that went away must not hold up the status
                await self.refresh_servable()
        await self.reporter.publish_status()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
