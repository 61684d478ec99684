"""Admission control (DeepRT): a stream is admitted only if this device's profile says every admitted
stream still meets its deadline at some batch size. Pure: no I/O, no clock, no pipeline.

The model, per batch size ``b`` of the serving engine, for a set of streams of total rate ``F``:

- ``period(b)``: how often the pipeline can finish a batch. Where the CPU stages (decode, pre, post)
  run on the same cores as inference (a CPU-only device: ``overlap=False``), they compete, so the
  period is their *sum*; where inference runs on an accelerator (``overlap=True``), the CPU stages
  overlap it and the period is ``max(infer, decode + pre + post)``.
- ``delay(b)``: what one batch takes from pre-processing to boxes: ``pre + infer + post``.
- keeps up: ``utilisation = period(b) x F / b <= headroom`` (e.g. 0.8: a margin for what the
  profile does not see: other processes, jitter, GC);
- every stream's deadline: ``fill + wait + delay <= deadline`` with ``fill = (b - 1) / F`` (the
  first frame of a batch waits for the rest) and ``wait = period(b)`` (the batch in service ahead of
  it: the pipeline holds one batch ahead of inference).

Among the batch sizes that fit, the best is the one furthest from every limit (the smallest
``max(utilisation / headroom, latency / deadline)``); when none fits, that same batch size is the
nearest to fitting and its figures explain the refusal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from schemas import AdmissionFigures, ProfileReport

DEFAULT_HEADROOM = 0.8
MEASURED_AFTER = 5  # full batches of a size measured before the measurement replaces the start-up guess


@dataclass(frozen=True)
class StreamDemand:
    """What admission needs to know of a stream."""

    stream_id: str
    fps: float
    deadline_ms: float

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.deadline_ms <= 0:
            raise ValueError(f"stream {self.stream_id}: fps and deadline must be > 0")


@dataclass(frozen=True)
class BatchCost:
    """Milliseconds one batch of ``batch_size`` frames spends in each stage (the whole batch)."""

    batch_size: int
    pre_ms: float
    infer_ms: float
    post_ms: float
    decode_ms: float = 0.0  # reading + decoding the batch's frames from their sources

    def scaled(self, factor: float) -> BatchCost:
        if factor == 1.0:
            return self
        return BatchCost(self.batch_size, self.pre_ms * factor, self.infer_ms * factor, self.post_ms * factor,
                         self.decode_ms * factor)


def _total(c: BatchCost) -> float:
    return c.decode_ms + c.pre_ms + c.infer_ms + c.post_ms


@dataclass
class _Measured:
    """EWMA of what the serving pipeline measured for one batch size."""

    cost: BatchCost
    count: int = 1


@dataclass
class DeviceProfile:
    """Per batch size, the batch delay of the serving engine on this device.

    Starts from a profile (a file or a start-up measurement); full batches measured while serving
    replace a size's guess once ``MEASURED_AFTER`` of them are in (then an EWMA follows them).
    ``derate`` (>= 1) scales every figure: raised when streams overrun although the model said they
    fit, i.e. load the profile does not see (other processes on a shared machine).
    """

    costs: dict[int, BatchCost]
    overlap: bool = False
    origin: str = "profile"
    derate: float = 1.0
    alpha: float = 0.2
    _measured: dict[int, _Measured] = field(default_factory=dict, repr=False)

    @classmethod
    def from_report(cls, report: ProfileReport, overlap: bool | None = None,
                    sizes: Iterable[int] | None = None) -> DeviceProfile:
        """From ``edge-agent profile --json`` (it does not time decoding: that comes from measurement)."""
        keep = set(sizes) if sizes is not None else None
        costs = {r.batch_size: BatchCost(r.batch_size, r.pre_ms, r.infer_ms, r.post_ms)
                 for r in report.rows if keep is None or r.batch_size in keep}
        gpu = overlap if overlap is not None else "cpu" not in report.device.lower()
        return cls(costs, overlap=gpu, origin=f"profile of {report.device}")

    @property
    def batch_sizes(self) -> list[int]:
        """The sizes profiled, and those the pipeline has served (e.g. after a swap to another engine)."""
        return sorted(set(self.costs) | {b for b, m in self._measured.items() if m.count >= MEASURED_AFTER})

    def cost(self, batch_size: int) -> BatchCost:
        measured = self._measured.get(batch_size)
        if measured is not None and measured.count >= MEASURED_AFTER:
            return measured.cost.scaled(self.derate)
        # Not measured while serving yet: the guess, moved as far as the measured sizes moved from theirs
        # (the same machine, the same neighbours), so a guess never looks better than a measurement.
        return self.costs[batch_size].scaled(self.derate * self.drift())

    def drift(self) -> float:
        """Mean ratio measured / guessed batch cost over the sizes measured while serving (1 if none)."""
        ratios = [_total(m.cost) / _total(self.costs[b]) for b, m in self._measured.items()
                  if m.count >= MEASURED_AFTER and b in self.costs and _total(self.costs[b]) > 0]
        return sum(ratios) / len(ratios) if ratios else 1.0

    def period_ms(self, batch_size: int) -> float:
        c = self.cost(batch_size)
        if self.overlap:
            return max(c.infer_ms, c.decode_ms + c.pre_ms + c.post_ms)
        return c.decode_ms + c.pre_ms + c.infer_ms + c.post_ms

    def delay_ms(self, batch_size: int) -> float:
        c = self.cost(batch_size)
        return c.pre_ms + c.infer_ms + c.post_ms

    def observe(self, cost: BatchCost) -> None:
        """One full batch as the pipeline measured it."""
        size = cost.batch_size
        m = self._measured.get(size)
        if m is None:
            self._measured[size] = _Measured(cost)
            return
        a = self.alpha
        old = m.cost
        m.cost = BatchCost(size, old.pre_ms + a * (cost.pre_ms - old.pre_ms),
                           old.infer_ms + a * (cost.infer_ms - old.infer_ms),
                           old.post_ms + a * (cost.post_ms - old.post_ms),
                           old.decode_ms + a * (cost.decode_ms - old.decode_ms))
        m.count += 1

    def is_measured(self, batch_size: int) -> bool:
        m = self._measured.get(batch_size)
        return m is not None and m.count >= MEASURED_AFTER

    def with_decode_ms_per_frame(self, decode_ms: float) -> DeviceProfile:
        """The same profile with decoding (``decode_ms`` a frame) added where it is not known."""
        costs = {b: c if c.decode_ms else BatchCost(b, c.pre_ms, c.infer_ms, c.post_ms, decode_ms * b)
                 for b, c in self.costs.items()}
        return DeviceProfile(costs, self.overlap, self.origin, self.derate, self.alpha, dict(self._measured))

    def describe(self) -> str:
        rows = ", ".join(f"b{b} {self.period_ms(b):.0f} ms{'*' if self.is_measured(b) else ''}"
                         for b in self.batch_sizes)
        derate = f", derated x{self.derate:.2f}" if self.derate != 1.0 else ""
        drift = self.drift()
        derate += f", guesses x{drift:.2f} as measured" if drift != 1.0 else ""
        model = "stages overlap" if self.overlap else "stages share the CPU: summed"
        return f"{self.origin} ({model}{derate}): {rows}"


@dataclass(frozen=True)
class SetFit:
    """How a set of streams fits at its best batch size."""

    batch_size: int | None
    period_ms: float
    delay_ms: float
    latency_ms: float
    utilisation: float
    total_fps: float
    limiting_stream: str | None
    limit: str  # none | throughput | deadline | profile
    score: float  # <= 1: fits

    @property
    def fits(self) -> bool:
        return self.limit == "none"


def fit(profile: DeviceProfile, streams: Sequence[StreamDemand], headroom: float = DEFAULT_HEADROOM) -> SetFit:
    """The best batch size for ``streams`` and whether every one of them meets its deadline there."""
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom}")
    total = sum(s.fps for s in streams)
    if not streams:
        return SetFit(None, 0.0, 0.0, 0.0, 0.0, 0.0, None, "none", 0.0)
    if not profile.batch_sizes:
        return SetFit(None, 0.0, 0.0, 0.0, 0.0, total, None, "profile", float("inf"))
    tightest = min(streams, key=lambda s: s.deadline_ms)
    best: SetFit | None = None
    for b in profile.batch_sizes:
        period = profile.period_ms(b)
        delay = profile.delay_ms(b)
        utilisation = period * total / (1000.0 * b)
        latency = (b - 1) * 1000.0 / total + period + delay
        load = utilisation / headroom
        lateness = latency / tightest.deadline_ms
        score = max(load, lateness)
        limit = "none" if score <= 1.0 else "throughput" if load >= lateness else "deadline"
        candidate = SetFit(b, period, delay, latency, utilisation, total, tightest.stream_id, limit, score)
        if best is None or score < best.score:
            best = candidate
    assert best is not None
    return best


def figures(candidate: StreamDemand, result: SetFit, streams: int, headroom: float) -> AdmissionFigures:
    admitted = result.fits
    if result.limit == "profile":
        reason = "refused: the device profile has no batch size this engine serves"
    elif admitted:
        reason = (f"admitted: {streams} stream(s), {result.total_fps:g} fps at batch {result.batch_size}: "
                  f"utilisation {result.utilisation:.2f} <= {headroom:.2f}, worst latency "
                  f"{result.latency_ms:.0f} ms within the deadline of {result.limiting_stream}")
    elif result.limit == "throughput":
        reason = (f"refused: {streams} stream(s), {result.total_fps:g} fps: the best batch size "
                  f"{result.batch_size} ({result.period_ms:.0f} ms per batch) needs utilisation "
                  f"{result.utilisation:.2f} > headroom {headroom:.2f}")
    else:
        reason = (f"refused: {streams} stream(s), {result.total_fps:g} fps: at the best batch size "
                  f"{result.batch_size} stream {result.limiting_stream}'s frames would take "
                  f"{result.latency_ms:.0f} ms, past its deadline")
    return AdmissionFigures(
        stream_id=candidate.stream_id,
        admitted=admitted,
        batch_size=result.batch_size,
        predicted_delay_ms=round(result.delay_ms, 2),
        predicted_latency_ms=round(result.latency_ms, 2),
        utilisation=round(result.utilisation, 4),
        headroom=headroom,
        total_fps=round(result.total_fps, 3),
        streams=streams,
        limit=result.limit,  # type: ignore[arg-type]
        limiting_stream=(candidate.stream_id if result.limit == "throughput" else result.limiting_stream),
        reason=reason,
    )


def admit(profile: DeviceProfile, admitted: Sequence[StreamDemand], candidate: StreamDemand,
          headroom: float = DEFAULT_HEADROOM) -> AdmissionFigures:
    """Whether ``candidate`` may join ``admitted`` (who stay untouched either way), with the figures."""
    together = [*admitted, candidate]
    return figures(candidate, fit(profile, together, headroom), len(together), headroom)


def admit_in_order(profile: DeviceProfile, streams: Sequence[StreamDemand],
                   headroom: float = DEFAULT_HEADROOM) -> list[AdmissionFigures]:
    """First come, first served: each stream in turn against those admitted before it."""
    admitted: list[StreamDemand] = []
    decisions = []
    for s in streams:
        decision = admit(profile, admitted, s, headroom)
        if decision.admitted:
            admitted.append(s)
        decisions.append(decision)
    return decisions


def shed_until_fit(profile: DeviceProfile, admitted: Sequence[StreamDemand],
                   headroom: float = DEFAULT_HEADROOM) -> tuple[list[StreamDemand], list[StreamDemand], SetFit]:
    """Park the most recently admitted streams until the rest fit: (kept, parked, fit of the kept)."""
    kept = list(admitted)
    parked: list[StreamDemand] = []
    result = fit(profile, kept, headroom)
    while kept and not result.fits:
        parked.insert(0, kept.pop())
        result = fit(profile, kept, headroom)
    return kept, parked, result
