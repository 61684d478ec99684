"""Fleet-scale evaluation (issue 11, item 5): the real controller against N simulated agents.

What is real: a private mosquitto (``LocalBroker``), the ``Controller`` (its ``handle`` on every message,
its per-agent view and cool-down, its retained ``DesiredState`` publishing) and every policy in
``cloud_controller.policies.POLICIES`` at run time (a policy registered later is evaluated without a
change here). Every message the simulated agents send or read is a ``schemas`` model on a
``schemas.Topics`` topic, shaped like ``edge_agent/agent.py``'s.

What is simulated: the agents. Each is a single-server queue whose batch service time comes from a
measured device profile (``bench/profiles/*.json``; a profile without rows is skipped and said so):
- arrivals: integer-fps streams with random phases (one 1 s pattern repeated: the telemetry window is
  1 s), about 10 fps each, as many as the load step asks for; load = input rate / the agent's best
  throughput over the profile's batch sizes (``max b / d(b)``), so "90 %" means the same on a CPU
  and on an H100;
- one bounded queue, drop-oldest when full (real-time mode), every drop counted. It holds ``--queue``
  frames (40: ``PipelineConfig``'s ingress 32 + ready 8) plus one assembled batch of the current size
  waiting ahead of inference (its ``batch_queue_capacity`` 1), so a batch of 32 can form while one runs;
- the batcher dispatches when ``b`` frames wait, or when the oldest frame's deadline minus the
  expected batch delay is reached (a partial batch, padded: it costs ``d(b)`` as the static engine does);
- service time ``d(b) x agent speed x (1 + noise)``: ``d(b)`` is the profile's pre+infer+post of one
  batch, run sequentially. The real pipeline overlaps pre/post with inference, so a real agent has more
  capacity than this model: the figures here are conservative, and consistent with what the
  policies measure (``latency['batch']`` = pre+infer+post of one batch);
- figures per phase count what happened in it: frames served in a phase include a backlog carried in
  from the phase before (so served/offered can pass 100 % after a burst); "e2e ms" is the mean
  end-to-end time of the frames served;
- a frame is late (a deadline miss) if it finishes more than ``--deadline-ms`` after it arrived;
- an order takes effect ``--swap-delay`` s after it is received, at a batch boundary (the in-flight
  batch finishes at the old size), and costs ``--swap-pause`` s of no service (default 0: our swaps
  load the new engine beside the serving one).

Time: lock-step windows of 1 s simulated time. Each window every agent simulates its second and
publishes its telemetry; then the simulator waits until the controller has handled every telemetry
message of the window and every order it published has come back through the broker (a barrier),
and only then starts the next window. So the controller always keeps up by construction and the
figures do not depend on this machine's speed; an order published after window k takes effect in
window k+1 at ``--swap-delay``. ``--speed S`` additionally caps the pace at S simulated seconds per
wall second (0, the default: as fast as the controller keeps up). Wall time and the controller's
telemetry messages per second are reported for each run.

Clock: the controller runs in this process. Policies that keep time (``DeadlinePolicy(clock=...)``)
read an attribute ``clock``; the simulator replaces it with the simulated clock when a policy has
one, so cool-downs and bans are in simulated seconds. The controller's own fleet-view timestamps stay
wall clock (they decide nothing). Message ``ts`` fields are the run's start (unix) + simulated time.

Scale: 1,000 agents cannot each hold an MQTT connection on 2 cores. ``--connections`` (default 4)
connections carry the whole fleet's outgoing messages round-robin; the first one also subscribes to
``{prefix}/agents/+/desired`` and routes each order to its agent by the parsed topic. A multiplexed
connection has no per-agent last will (an agent here never dies).

Baseline: every batch size of a profile is also simulated fixed, without a controller, on the same
fleet and arrivals (``--ladder`` restricts the sizes; a policy ordering a size the profile lacks gets
a ``desired_refused`` event, reason ``no_artifact``, as an agent without that engine would send; the
status names the sizes it serves, so the controller stays inside them). Per profile, "best fixed" is
the one size that serves the most frames within the deadline; for the whole fleet, every profile at
its own best fixed size.

Convergence after a load step: per agent, the time from the step to the start of the first window
from which, until the next step, its batch size no longer changes and every window either keeps up
(no drop, no miss) or runs a size that is best for that agent in that phase (within 0.1 % of the most
on-time frames among the fixed sizes); capped at the step length when that never happens.

Target (issue 11), judged in the phase whose load is closest to 90 %: deadline misses <= 0.1 % of the
frames served, on-time frames >= those of the best fixed size for that phase (within ``--tolerance``,
default 0.5 %: the runs share arrivals, not the draws of batch-delay noise), and every agent converged
in < 10 s after the step into it.

    python bench/fleet_sim.py                               # 200 agents, 120 s, every policy
    python bench/fleet_sim.py --agents 1000 --json out/fleet.json   # works on a 2-core VM
    python -m bench.fleet_sim --policies deadline --profiles h100-pytorch-nanodet --duration 60

Which controller code runs: whatever ``import cloud_controller`` finds. ``python bench/fleet_sim.py``
puts ``bench/`` first on the path, so that is the installed package (an editable install: its
checkout); ``python -m bench.fleet_sim`` from a checkout's root runs that checkout's code. The report
prints the path and commit it used.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import logging
import math
import platform
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from cloud_controller.controller import Controller
from cloud_controller.policies import POLICIES, BatchPolicy
from mqtt_bus import BrokerSettings, IncomingMessage, MqttBus, Subscription
from mqtt_bus.local_broker import LocalBroker
from schemas import (
    AgentEvent,
    AgentStatus,
    AgentTopic,
    Capabilities,
    DesiredState,
    EventKind,
    LatencyStats,
    OrderOutcome,
    OrderOutcomeKind,
    PayloadError,
    RefusalReason,
    ResourceSample,
    ServingState,
    Telemetry,
    TopicError,
    Topics,
    decode,
    encode,
)

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_LADDER = (1, 2, 4, 8, 16)
WINDOW_S = 1.0  # telemetry window, simulated seconds (the real agent's default interval)
CONVERGE_TARGET_S = 10.0
MISS_TARGET_PCT = 0.1
TARGET_LOAD = 0.9


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- device profiles --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchCost:
    pre_ms: float
    infer_ms: float
    post_ms: float
    delay_ms: float  # pre + infer + post of one batch
    memory_bytes: int | None


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    device: str
    model: str
    backend: str
    platform: str
    source: str
    memory_kind: str  # "gpu" or "host"
    memory_total_bytes: int
    memory_base_bytes: int
    costs: dict[int, BatchCost]

    def throughput_fps(self, size: int) -> float:
        return size * 1000.0 / self.costs[size].delay_ms

    def sizes(self, ladder: Sequence[int] | None = None) -> tuple[int, ...]:
        return tuple(s for s in sorted(self.costs) if ladder is None or s in ladder)

    def capacity_fps(self, ladder: Sequence[int] | None = None) -> float:
        """Most frames per second any of its batch sizes serves (the denominator of 'load')."""
        return max(self.throughput_fps(s) for s in self.sizes(ladder))


class ProfileSkipped(ValueError):
    pass


def load_profile(path: Path, ladder: Sequence[int] | None = None) -> DeviceProfile:
    data = json.loads(path.read_text())
    rows = data.get("rows") or []
    if not rows:
        raise ProfileSkipped(f"{path.name}: no figures ({data.get('source', 'no source')[:120]}...)")
    costs = {int(r["batch_size"]): BatchCost(float(r["pre_ms"]), float(r["infer_ms"]), float(r["post_ms"]),
                                             float(r["batch_delay_ms"]), r.get("memory_bytes")) for r in rows}
    missing = [s for s in ladder or () if s not in costs]
    if missing:
        raise ProfileSkipped(f"{path.name}: no figures for batch sizes {missing} of the ladder")
    return DeviceProfile(
        name=data["name"], device=data["device"], model=data["model"], backend=data.get("backend", "unknown"),
        platform=data.get("platform", "unknown"), source=data["source"], memory_kind=data.get("memory_kind", "gpu"),
        memory_total_bytes=int(data.get("memory_total_bytes") or 16 * 2**30),
        memory_base_bytes=int(data.get("memory_base_bytes") or 0), costs=costs)


def load_profiles(wanted: Sequence[str] | None, ladder: Sequence[int] | None = None,
                  directory: Path = PROFILES_DIR) -> tuple[list[DeviceProfile], list[str]]:
    """Profiles by file stem or ``name`` (all of them when ``wanted`` is None), and why others were skipped."""
    profiles, skipped = [], []
    for path in sorted(directory.glob("*.json")):
        if wanted is not None:
            name = json.loads(path.read_text()).get("name")
            if path.stem not in wanted and name not in wanted:
                continue
        try:
            profiles.append(load_profile(path, ladder))
        except ProfileSkipped as exc:
            skipped.append(str(exc))
    return profiles, skipped


# --- scenario ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadStep:
    at_s: float
    load: float  # input rate / the agent's best throughput over its profile's batch sizes


def default_steps(duration_s: float) -> list[LoadStep]:
    """50 % at start, streams join to 90 %, a burst to 120 % (overload), streams leave to 30 %."""
    q = duration_s / 4
    return [LoadStep(0.0, 0.5), LoadStep(q, 0.9), LoadStep(2 * q, 1.2), LoadStep(3 * q, 0.3)]


def parse_steps(text: str) -> list[LoadStep]:
    steps = []
    for item in text.split(","):
        at, _, load = item.partition(":")
        steps.append(LoadStep(float(at), float(load)))
    if not steps or steps[0].at_s != 0 or [s.at_s for s in steps] != sorted({s.at_s for s in steps}):
        raise ValueError(f"--steps {text!r}: increasing times starting at 0, e.g. 0:0.5,30:0.9")
    return steps


def stream_rates(rate_fps: float, nominal_fps: int = 10) -> list[int]:
    """Integer-fps streams of about ``nominal_fps`` each adding up to round(rate_fps)."""
    total = max(1, round(rate_fps))
    k = max(1, round(total / nominal_fps))
    base, extra = divmod(total, k)
    return [base + 1] * extra + [base] * (k - extra)


# --- the queue model of one agent -------------------------------------------------------------------------


@dataclass
class WindowFigures:
    offered: int = 0
    served: int = 0
    late: int = 0
    dropped: int = 0
    batches: int = 0
    busy_s: float = 0.0
    e2e_sum_s: float = 0.0  # end-to-end time summed over the frames served
    sizes: set[int] = field(default_factory=set)
    applied: list[tuple[float, int]] = field(default_factory=list)  # (sim time, new size) of swaps that took effect
    batch_ms: list[float] = field(default_factory=list)
    pre_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    queue_s: list[float] = field(default_factory=list)


class AgentQueue:
    """One agent's serving loop: bounded drop-oldest ingress queue, deadline-aware batcher, one server."""

    def __init__(self, profile: DeviceProfile, speed: float, batch_size: int, deadline_s: float = 1.0,
                 capacity: int = 40, noise: float = 0.03, seed: int = 0, swap_pause_s: float = 0.0) -> None:
        self.profile = profile
        self.speed = speed  # > 1: a slower device than the profile's
        self.size = batch_size
        self.deadline_s = deadline_s
        self.capacity = capacity  # frames waiting, besides one assembled batch ahead of inference
        self.noise = noise
        self.swap_pause_s = swap_pause_s
        self._arrival_rng = random.Random(seed * 7919 + 1)  # same phases in every run of one fleet
        self._noise_rng = random.Random(seed * 7919 + 2)
        self.offsets: list[float] = []  # arrival times within one window
        self.streams: list[int] = []
        self.buf: list[float] = []  # waiting frames' arrival times, oldest first
        self.free_at = 0.0
        self.switch: tuple[float, int] | None = None  # (effective sim time, new size)
        self.totals = WindowFigures()

    @property
    def source_fps_total(self) -> float:
        return float(sum(self.streams))

    def set_streams(self, fps: list[int]) -> None:
        self.streams = fps
        offsets: list[float] = []
        for f in fps:
            phase = self._arrival_rng.random() / f
            offsets.extend(phase + n / f for n in range(f))
        self.offsets = sorted(o for o in offsets if o < WINDOW_S)

    def order(self, size: int, at_s: float) -> None:
        """Switch to ``size`` at the first batch boundary at or after ``at_s`` (a newer order replaces it)."""
        self.switch = (at_s, size)

    def _apply_switch(self, fig: WindowFigures, free: float) -> float:
        assert self.switch is not None
        at, size = self.switch
        self.switch = None
        self.size = size
        fig.applied.append((at, size))
        return max(free, at) + self.swap_pause_s

    def run_window(self, t0: float, t1: float, collect: bool = True) -> WindowFigures:
        fig = WindowFigures(offered=len(self.offsets))
        buf = self.buf + [t0 + o for o in self.offsets]
        total = len(buf)
        head = 0
        free = self.free_at
        deadline = self.deadline_s
        costs = self.profile.costs
        while head < total:
            b = self.size
            t_full = buf[head + b - 1] if head + b - 1 < total else math.inf
            t_due = buf[head] + deadline - costs[b].delay_ms * self.speed / 1000.0
            start = max(free, min(t_full, t_due))
            if self.switch is not None and start >= self.switch[0]:
                free = self._apply_switch(fig, free)
                continue
            if start >= t1:
                break
            arrived = bisect.bisect_right(buf, start, head)
            room = self.capacity + b
            if arrived - head > room:  # drop-oldest: the queue keeps the newest frames
                fig.dropped += arrived - head - room
                head = arrived - room
            n = min(b, arrived - head)
            factor = max(0.5, self._noise_rng.gauss(1.0, self.noise)) * self.speed
            cost = costs[b]
            d = cost.delay_ms * factor / 1000.0
            finish = start + d
            fig.late += bisect.bisect_left(buf, finish - deadline, head, head + n) - head
            fig.served += n
            fig.batches += 1
            fig.busy_s += d
            fig.e2e_sum_s += n * finish - sum(buf[head:head + n])
            fig.sizes.add(b)
            if collect:
                fig.batch_ms.append(d * 1000.0)
                fig.pre_ms.append(cost.pre_ms * factor)
                fig.infer_ms.append(cost.infer_ms * factor)
                fig.post_ms.append(cost.post_ms * factor)
                frames = buf[head:head + n]
                fig.e2e_s.extend([finish - a for a in frames])
                fig.queue_s.extend([start - a for a in frames])
            head += n
            free = finish
        if self.switch is not None and self.switch[0] < t1:  # took effect while the queue was empty
            free = self._apply_switch(fig, free)
        room = self.capacity + self.size
        if total - head > room:
            fig.dropped += total - head - room
            head = total - room
        self.buf = buf[head:]
        self.free_at = free
        t = self.totals
        t.offered += fig.offered
        t.served += fig.served
        t.late += fig.late
        t.dropped += fig.dropped
        t.batches += fig.batches
        return fig

    @property
    def waiting(self) -> int:
        return len(self.buf)


# --- the simulated agent on the wire ----------------------------------------------------------------------


Outgoing = tuple[str, bytes, int, bool]  # topic, payload, qos, retain

_EMPTY_STATS = LatencyStats(count=0, mean_ms=0.0, p50_ms=0.0, p95_ms=0.0, p99_ms=0.0, max_ms=0.0)


def latency_stats(values_ms: list[float]) -> LatencyStats:
    if not values_ms:
        return _EMPTY_STATS
    v = sorted(values_ms)
    n = len(v)

    def q(p: float) -> float:
        return round(v[min(n - 1, int(p * n))], 3)

    return LatencyStats(count=n, mean_ms=round(sum(v) / n, 3), p50_ms=q(0.5), p95_ms=q(0.95), p99_ms=q(0.99),
                        max_ms=round(v[-1], 3))


class AgentWire:
    """What one simulated agent says and hears on MQTT, shaped like ``edge_agent.agent.Agent``.

    The whole order lifecycle is here (``on_desired`` and ``applied``), so a change of it (new event
    kinds, a ``last_order`` in the status) is one edit in this class.
    """

    def __init__(self, agent_id: str, topics: Topics, queue: AgentQueue, swap_delay_s: float, epoch: float) -> None:
        self.agent_id = agent_id
        self.topics = topics
        self.queue = queue
        self.swap_delay_s = swap_delay_s
        self.epoch = epoch  # unix time of simulated t = 0
        self.applied_generation = 0  # moves when an order takes effect, as the real agent's reconciler
        self.taken_generation = 0  # highest generation taken (decided or waiting to take effect)
        self.pending_generation: int | None = None
        self.last_order: OrderOutcome | None = None
        self.seq = 0
        self.counters = {"orders": 0, "stale": 0, "superseded": 0, "rejected": 0, "applied": 0, "refused": 0}
        p = queue.profile
        self.capabilities = Capabilities(
            backends=[p.backend], platform=p.platform, gpu_name=p.device if p.memory_kind == "gpu" else None,
            memory_total_bytes=p.memory_total_bytes)

    def status(self, now_s: float) -> Outgoing:
        serving = ServingState(model=self.queue.profile.model[:100], version="1", batch_size=self.queue.size,
                               backend=self.queue.profile.backend,
                               servable_batch_sizes=sorted(self.queue.profile.costs))
        status = AgentStatus(agent_id=self.agent_id, state="online", ts=self.epoch + now_s,
                             capabilities=self.capabilities, serving=serving,
                             applied_generation=self.applied_generation, last_order=self.last_order)
        return self.topics.status(self.agent_id), encode(status), 1, True

    def event(self, kind: EventKind, now_s: float, generation: int | None, detail: str,
              timings_ms: dict[str, float] | None = None, refusal: RefusalReason | None = None) -> Outgoing:
        event = AgentEvent(agent_id=self.agent_id, kind=kind, ts=self.epoch + now_s, generation=generation,
                           detail=detail, timings_ms=timings_ms or {}, refusal=refusal)
        return self.topics.events(self.agent_id), encode(event), 1, False

    def decided(self, generation: int, outcome: OrderOutcomeKind, now_s: float, detail: str, size: int | None,
                refusal: RefusalReason | None = None) -> None:
        self.last_order = OrderOutcome(generation=generation, outcome=outcome, refusal=refusal, detail=detail,
                                       batch_size=size, ts=self.epoch + now_s)

    def on_desired(self, desired: DesiredState, now_s: float) -> list[Outgoing]:
        """Newest generation wins; a stale one is ignored and said so (as ``Agent.apply_desired``)."""
        if desired.agent_id != self.agent_id:
            self.counters["rejected"] += 1
            return [self.event("payload_rejected", now_s, None, f"desired state for {desired.agent_id!r}")]
        if desired.generation <= self.taken_generation:
            self.counters["stale"] += 1
            return [self.event("desired_ignored", now_s, desired.generation,
                               f"generation {desired.generation} is stale: {self.taken_generation} already taken")]
        self.counters["orders"] += 1
        out: list[Outgoing] = []
        size = desired.batch_size
        self.taken_generation = desired.generation
        if size is not None and size not in self.queue.profile.costs:
            self.counters["refused"] += 1
            detail = f"no engine for batch size {size}"
            self.decided(desired.generation, "refused", now_s, detail, size, "no_artifact")
            return [self.event("desired_refused", now_s, desired.generation, detail, refusal="no_artifact"),
                    self.status(now_s)]
        if self.pending_generation is not None:
            self.counters["superseded"] += 1
            detail = f"superseded by generation {desired.generation} before it took effect"
            self.decided(self.pending_generation, "superseded", now_s, detail, None)
            out.append(self.event("desired_superseded", now_s, self.pending_generation, detail))
            self.queue.switch = None
            self.pending_generation = None
        if size is not None and size != self.queue.size:
            self.queue.order(size, now_s + self.swap_delay_s)
            self.pending_generation = desired.generation
        else:
            self.applied_generation = desired.generation
            detail = f"batch size {self.queue.size} kept"
            self.decided(desired.generation, "applied", now_s, detail, self.queue.size)
            out.append(self.event("desired_applied", now_s, desired.generation, detail))
        out.append(self.status(now_s))
        return out

    def applied(self, fig: WindowFigures) -> list[Outgoing]:
        """Events for orders that took effect in this window (``desired_applied`` with the generation)."""
        out: list[Outgoing] = []
        for at, size in fig.applied:
            self.counters["applied"] += 1
            if self.pending_generation is not None:
                self.applied_generation = self.pending_generation
                self.decided(self.pending_generation, "applied", at, f"batch size {size}", size)
            out.append(self.event("desired_applied", at, self.pending_generation,
                                  f"batch size {size} from generation {self.pending_generation}",
                                  {"receive_to_first_batch": round(self.swap_delay_s * 1000, 2)}))
            self.pending_generation = None
            out.append(self.status(at))
        return out

    def telemetry(self, fig: WindowFigures, now_s: float) -> Outgoing:
        q, p = self.queue, self.queue.profile
        self.seq += 1
        t = q.totals
        util = min(100.0, 100.0 * fig.busy_s / WINDOW_S)
        memory = p.memory_base_bytes + (p.costs[q.size].memory_bytes or 0)
        if p.memory_kind == "gpu":
            resources = ResourceSample(probe="nvml", gpu_util_pct=round(util, 1), gpu_memory_used_bytes=memory,
                                       gpu_memory_total_bytes=p.memory_total_bytes, process_gpu_memory_bytes=memory,
                                       host_memory_used_bytes=4 * 2**30, host_memory_total_bytes=32 * 2**30,
                                       process_rss_bytes=1 * 2**30, cpu_util_pct=30.0)
        else:
            resources = ResourceSample(probe="host", host_memory_used_bytes=memory,
                                       host_memory_total_bytes=p.memory_total_bytes, process_rss_bytes=memory,
                                       cpu_util_pct=round(util, 1))
        message = Telemetry(
            agent_id=self.agent_id, seq=self.seq, ts=self.epoch + now_s, window_s=WINDOW_S, batch_size=q.size,
            batch_size_uniform=bool(fig.sizes) and fig.sizes == {q.size},
            applied_generation=self.applied_generation, source_fps_total=q.source_fps_total,
            fps_in=fig.offered / WINDOW_S, fps_out=fig.served / WINDOW_S, frames_in=t.offered, frames_out=t.served,
            dropped=t.dropped, corrupt=0, deadline_misses=t.late, batches=fig.batches,
            latency={"pre": latency_stats(fig.pre_ms), "queue": latency_stats([s * 1000 for s in fig.queue_s]),
                     "infer": latency_stats(fig.infer_ms), "post": latency_stats(fig.post_ms),
                     "e2e": latency_stats([s * 1000 for s in fig.e2e_s]), "batch": latency_stats(fig.batch_ms)},
            queue_depths={"ingress": q.waiting, "ready": 0, "batches": 0, "inferred": 0},
            resources=resources,
        )
        return self.topics.telemetry(self.agent_id), encode(message), 0, False


# --- the fleet --------------------------------------------------------------------------------------------


@dataclass
class SimAgent:
    index: int
    agent_id: str
    profile: DeviceProfile
    speed: float
    queue: AgentQueue
    wire: AgentWire | None = None


@dataclass(frozen=True)
class FleetConfig:
    agents: int
    profiles: tuple[DeviceProfile, ...]
    ladder: tuple[int, ...] | None = None  # None: every batch size of each profile
    steps: tuple[LoadStep, ...] = tuple(default_steps(120.0))
    duration_s: float = 120.0
    deadline_ms: float = 1000.0
    queue: int = 40
    noise: float = 0.03
    spread: float = 0.1
    initial_batch: int = 4
    swap_delay_s: float = 0.5
    swap_pause_s: float = 0.0
    seed: int = 1

    @property
    def windows(self) -> int:
        return int(round(self.duration_s / WINDOW_S))

    def phase_of(self, t: float) -> int:
        return max(i for i, s in enumerate(self.steps) if s.at_s <= t + 1e-9)

    def phase_bounds(self, phase: int) -> tuple[int, int]:
        """First and one-past-last window of a phase."""
        start = int(round(self.steps[phase].at_s / WINDOW_S))
        end = int(round(self.steps[phase + 1].at_s / WINDOW_S)) if phase + 1 < len(self.steps) else self.windows
        return start, min(end, self.windows)

    def profile_of(self, agent: int) -> DeviceProfile:
        return self.profiles[agent % len(self.profiles)]

    @property
    def all_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({s for p in self.profiles for s in p.sizes(self.ladder)}))

    @property
    def target_phase(self) -> int:
        return min(range(len(self.steps)), key=lambda i: abs(self.steps[i].load - TARGET_LOAD))


def make_fleet(cfg: FleetConfig, initial_batch: int | None = None) -> list[SimAgent]:
    """The same fleet (profiles round-robin, per-agent speed, stream phases) for every run of one seed."""
    fleet = []
    for i in range(cfg.agents):
        profile = cfg.profile_of(i)
        speed = random.Random(cfg.seed * 1_000_003 + i).uniform(1 - cfg.spread, 1 + cfg.spread)
        queue = AgentQueue(profile, speed, initial_batch or cfg.initial_batch, cfg.deadline_ms / 1000.0, cfg.queue,
                           cfg.noise, seed=cfg.seed * 1_000_003 + i, swap_pause_s=cfg.swap_pause_s)
        fleet.append(SimAgent(i, f"sim-{profile.name}-{i:04d}", profile, speed, queue))
    return fleet


def apply_load(cfg: FleetConfig, fleet: list[SimAgent], phase: int) -> None:
    load = cfg.steps[phase].load
    for a in fleet:
        capacity = a.profile.capacity_fps(cfg.ladder) / a.speed
        a.queue.set_streams(stream_rates(load * capacity))


class Recorder:
    """Per agent and window: the batch size at the end, whether it kept up; per agent and phase: totals."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        n, w, p = cfg.agents, cfg.windows, len(cfg.steps)
        self.size = [[0] * w for _ in range(n)]
        self.kept_up = [[False] * w for _ in range(n)]
        self.phase: dict[str, list[list[float]]] = {
            k: [[0] * p for _ in range(n)] for k in ("offered", "served", "late", "dropped", "e2e_sum_s")}
        self.swaps = [0] * n

    def record(self, agent: int, window: int, fig: WindowFigures, size: int) -> None:
        self.size[agent][window] = size
        self.kept_up[agent][window] = fig.dropped == 0 and fig.late == 0
        phase = self.cfg.phase_of(window * WINDOW_S)
        for k in ("offered", "served", "late", "dropped", "e2e_sum_s"):
            self.phase[k][agent][phase] += getattr(fig, k)
        self.swaps[agent] += len(fig.applied)

    def on_time(self, agent: int, phase: int) -> int:
        return int(self.phase["served"][agent][phase] - self.phase["late"][agent][phase])

    def convergence_s(self, agent: int, phase: int, best: set[int]) -> float:
        start, end = self.cfg.phase_bounds(phase)
        sizes, ok = self.size[agent], self.kept_up[agent]
        first = end
        for w in range(end - 1, start - 1, -1):
            if sizes[w] != sizes[end - 1] or not (ok[w] or sizes[w] in best):
                break
            first = w
        return (first - start) * WINDOW_S


def run_fixed(cfg: FleetConfig, size: int) -> Recorder:
    """One batch size for the whole run, no controller (agents whose profile lacks it are left out)."""
    fleet = [a for a in make_fleet(cfg, initial_batch=size) if size in a.profile.sizes(cfg.ladder)]
    rec = Recorder(cfg)
    phase = -1
    for w in range(cfg.windows):
        t0 = w * WINDOW_S
        if cfg.phase_of(t0) != phase:
            phase = cfg.phase_of(t0)
            apply_load(cfg, fleet, phase)
        for a in fleet:
            rec.record(a.index, w, a.queue.run_window(t0, t0 + WINDOW_S, collect=False), a.queue.size)
    return rec


# --- MQTT: a few connections for the whole fleet ----------------------------------------------------------


class FleetTransport:
    """``connections`` MQTT connections carrying every simulated agent's messages; the first one also
    subscribes to ``{prefix}/agents/+/desired`` and hands each order to ``on_desired``."""

    def __init__(self, settings: BrokerSettings, topics: Topics, connections: int,
                 on_message: Callable[[IncomingMessage], Any]) -> None:
        tag = uuid.uuid4().hex[:8]
        self.buses = [MqttBus(settings, client_id=f"fleetsim-{tag}-{i}",
                              subscriptions=[Subscription(topics.all_agents("desired"), qos=1)] if i == 0 else [])
                      for i in range(max(1, connections))]
        self._on_message = on_message
        self._tasks: list[asyncio.Task[None]] = []
        self._next = 0
        self.publish_failed = 0

    async def _ignore(self, message: IncomingMessage) -> None:
        return None

    async def start(self, timeout_s: float = 10.0) -> None:
        for i, bus in enumerate(self.buses):
            handler = self._on_message if i == 0 else self._ignore
            self._tasks.append(asyncio.create_task(bus.run(handler), name=f"fleetsim.bus[{i}]"))
        for bus in self.buses:
            await bus.wait_connected(timeout_s)

    async def publish(self, messages: Sequence[Outgoing], chunk: int = 256) -> None:
        for i in range(0, len(messages), chunk):
            part = messages[i:i + chunk]
            buses = [self.buses[(self._next + j) % len(self.buses)] for j in range(len(part))]
            self._next += len(part)
            results = await asyncio.gather(*(bus.publish(topic, payload, qos=qos, retain=retain)
                                             for bus, (topic, payload, qos, retain) in zip(buses, part, strict=True)))
            self.publish_failed += results.count(False)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def build_policy(name: str, clock: SimClock) -> BatchPolicy:
    """The registered policy with its defaults; a policy that keeps time gets the simulated clock.

    ``POLICIES`` maps a key to a class (policies registered by hand) or to a ``PolicySpec`` with
    ``factory`` and ``config_type`` (policies discovered one file each): both are accepted.
    """
    entry: Any = POLICIES[name]
    factory = getattr(entry, "factory", None)
    policy: BatchPolicy = factory(entry.config_type()) if factory is not None else entry()
    if hasattr(policy, "clock"):
        policy.clock = clock
    return policy


@dataclass
class PolicyRun:
    recorder: Recorder
    wall_s: float
    telemetry_handled: int
    telemetry_lost: int
    drain_s: float
    decisions: int
    orders_received: int
    counters: dict[str, int]
    barrier_timeouts: int


async def run_policy(cfg: FleetConfig, name: str, settings: BrokerSettings, connections: int = 4,
                     speed: float = 0.0, barrier_timeout_s: float = 20.0) -> PolicyRun:
    clock = SimClock()
    prefix = f"fleetsim{uuid.uuid4().hex[:8]}"
    topics = Topics(prefix)
    controller = Controller(settings, build_policy(name, clock), prefix=prefix,
                            controller_id=f"fleetsim-controller-{name}"[:60])
    fleet = make_fleet(cfg)
    epoch = time.time()
    by_id: dict[str, SimAgent] = {}
    for a in fleet:
        a.wire = AgentWire(a.agent_id, topics, a.queue, cfg.swap_delay_s, epoch)
        by_id[a.agent_id] = a
    received = [0]
    replies: list[Outgoing] = []
    counters = {"bad_desired": 0}

    async def on_message(message: IncomingMessage) -> None:
        try:
            topic = topics.parse(message.topic)
        except TopicError:
            return
        if not isinstance(topic, AgentTopic) or topic.channel != "desired" or not message.payload:
            return
        received[0] += 1
        agent = by_id.get(topic.agent_id)
        if agent is None or agent.wire is None:
            return
        try:
            desired = decode(DesiredState, message.payload)
        except PayloadError:
            counters["bad_desired"] += 1
            return
        replies.extend(agent.wire.on_desired(desired, clock.now))

    transport = FleetTransport(settings, topics, connections, on_message)
    ctl_task = asyncio.create_task(controller.run(), name=f"fleetsim.controller[{name}]")
    rec = Recorder(cfg)
    lost = timeouts = 0
    drain_s = 0.0
    wall0 = time.perf_counter()
    try:
        await controller.bus.wait_connected(10)
        await transport.start()
        await transport.publish([a.wire.status(0.0) for a in fleet if a.wire is not None])
        phase = -1
        expected = 0
        for w in range(cfg.windows):
            t0, t1 = w * WINDOW_S, (w + 1) * WINDOW_S
            clock.now = t0
            if cfg.phase_of(t0) != phase:
                phase = cfg.phase_of(t0)
                apply_load(cfg, fleet, phase)
            out: list[Outgoing] = []
            for a in fleet:
                assert a.wire is not None
                fig = a.queue.run_window(t0, t1)
                rec.record(a.index, w, fig, a.queue.size)
                out.extend(a.wire.applied(fig))
                out.append(a.wire.telemetry(fig, t1))
            clock.now = t1
            burst = time.perf_counter()
            await transport.publish(out)
            expected += len(fleet)
            # Barrier: every telemetry handled, every order back at its agent, every reply sent.
            deadline = time.perf_counter() + barrier_timeout_s
            while True:
                if replies:
                    batch = replies[:]
                    replies.clear()
                    await transport.publish(batch)
                handled = controller.counters.telemetry + controller.counters.rejected
                if handled + lost >= expected and received[0] >= controller.counters.decisions and not replies:
                    drain_s += time.perf_counter() - burst
                    break
                if time.perf_counter() > deadline:
                    timeouts += 1
                    log(f"[{name}] window {w}: barrier timed out ({expected - handled - lost} telemetry unhandled, "
                        f"{controller.counters.decisions - received[0]} orders not back)")
                    lost = expected - handled  # QoS 0 telemetry the broker or a client queue dropped
                    break
                await asyncio.sleep(0.002)
            if speed > 0:
                behind = (wall0 + t1 / speed) - time.perf_counter()
                if behind > 0:
                    await asyncio.sleep(behind)
            if (w + 1) % 10 == 0 or w + 1 == cfg.windows:
                log(f"[{name}] t={t1:.0f}/{cfg.duration_s:.0f} s simulated, wall {time.perf_counter() - wall0:.1f} s, "
                    f"telemetry handled {controller.counters.telemetry}, orders {controller.counters.decisions}")
        await asyncio.sleep(0.2)  # let the last events' acknowledgements arrive before closing
    finally:
        wall = time.perf_counter() - wall0
        await transport.close()
        ctl_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ctl_task
    agg: dict[str, int] = {k: 0 for k in ("orders", "stale", "superseded", "rejected", "applied", "refused")}
    for a in fleet:
        assert a.wire is not None
        for k, v in a.wire.counters.items():
            agg[k] += v
    agg.update(counters)
    agg["publish_failed"] = transport.publish_failed
    agg["controller_events"] = controller.counters.events
    agg["controller_rejected"] = controller.counters.rejected
    return PolicyRun(rec, wall, controller.counters.telemetry, lost, drain_s, controller.counters.decisions,
                     received[0], agg, timeouts)


# --- figures ----------------------------------------------------------------------------------------------


def _pct(a: float, b: float) -> float:
    return 100.0 * a / b if b else 0.0


def totals(rec: Recorder, agents: Sequence[int], phases: Sequence[int]) -> dict[str, float]:
    s = {k: int(sum(rec.phase[k][a][p] for a in agents for p in phases))
         for k in ("offered", "served", "late", "dropped")}
    e2e = sum(rec.phase["e2e_sum_s"][a][p] for a in agents for p in phases)
    return {**s, "on_time": s["served"] - s["late"], "served_pct": round(_pct(s["served"], s["offered"]), 3),
            "e2e_mean_ms": round(1000 * e2e / s["served"], 1) if s["served"] else 0.0,
            "miss_pct": round(_pct(s["late"], s["served"]), 4), "drop_pct": round(_pct(s["dropped"], s["offered"]), 3)}


def best_sizes(fixed: dict[int, Recorder], cfg: FleetConfig) -> list[list[set[int]]]:
    """Per agent and phase: the fixed sizes within 0.1 % of the most on-time frames."""
    out = []
    for a in range(cfg.agents):
        row = []
        for p in range(len(cfg.steps)):
            on_time = {s: rec.on_time(a, p) for s, rec in fixed.items() if s in cfg.profile_of(a).sizes(cfg.ladder)}
            top = max(on_time.values())
            row.append({s for s, v in on_time.items() if v >= top * 0.999})
        out.append(row)
    return out


def summarize_run(rec: Recorder, cfg: FleetConfig, agents: Sequence[int], best: list[list[set[int]]]) -> dict[str, Any]:
    phases = range(len(cfg.steps))
    per_phase = []
    for p in phases:
        conv = [rec.convergence_s(a, p, best[a][p]) for a in agents]
        start, end = cfg.phase_bounds(p)
        per_phase.append({"at_s": cfg.steps[p].at_s, "load": cfg.steps[p].load, **totals(rec, agents, [p]),
                          "converge_median_s": statistics.median(conv) if conv else 0.0,
                          "converge_max_s": max(conv) if conv else 0.0,
                          "converged_pct": round(_pct(sum(c < (end - start) * WINDOW_S for c in conv), len(conv)), 1)})
    swaps = [rec.swaps[a] for a in agents]
    return {"agents": len(agents), **totals(rec, agents, list(phases)), "phases": per_phase,
            "swaps_per_agent_mean": round(statistics.mean(swaps), 2) if swaps else 0.0,
            "swaps_per_agent_max": max(swaps) if swaps else 0}


def summarize_fixed(fixed: dict[int, Recorder], cfg: FleetConfig, agents: Sequence[int]) -> dict[str, Any]:
    fixed = {s: rec for s, rec in fixed.items() if all(s in cfg.profile_of(a).sizes(cfg.ladder) for a in agents)}
    every = {s: totals(rec, agents, list(range(len(cfg.steps)))) for s, rec in fixed.items()}
    best = max(every, key=lambda s: every[s]["on_time"])
    tp = cfg.target_phase
    in_target = {s: totals(rec, agents, [tp])["on_time"] for s, rec in fixed.items()}
    best_target = max(in_target, key=lambda s: in_target[s])
    return {"best_size": best, "best": every[best], "by_size": every,
            "target_phase_best_size": best_target, "target_phase_best_on_time": in_target[best_target]}


def combine_fixed(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The fleet's baseline: every profile at its own best fixed size (what an operator would configure)."""
    keys = ("offered", "served", "late", "dropped", "on_time")
    best = {k: sum(p["best"][k] for p in parts) for k in keys}
    best |= {"served_pct": round(_pct(best["served"], best["offered"]), 3),
             "miss_pct": round(_pct(best["late"], best["served"]), 4),
             "drop_pct": round(_pct(best["dropped"], best["offered"]), 3),
             "e2e_mean_ms": round(sum(p["best"]["e2e_mean_ms"] * p["best"]["served"] for p in parts)
                                  / max(1, best["served"]), 1)}
    return {"best_size": "each profile's own", "best": best, "by_size": {},
            "target_phase_best_size": "per profile",
            "target_phase_best_on_time": sum(p["target_phase_best_on_time"] for p in parts)}


def judge(run: dict[str, Any], fixed: dict[str, Any], cfg: FleetConfig, tolerance: float) -> dict[str, Any]:
    phase = run["phases"][cfg.target_phase]
    need = fixed["target_phase_best_on_time"] * (1 - tolerance)
    checks = {
        "miss_pct": (phase["miss_pct"], phase["miss_pct"] <= MISS_TARGET_PCT),
        "on_time_vs_best_fixed": (round(phase["on_time"] / max(1, fixed["target_phase_best_on_time"]), 4),
                                  phase["on_time"] >= need),
        "converge_max_s": (phase["converge_max_s"], phase["converge_max_s"] < CONVERGE_TARGET_S),
    }
    return {"load": cfg.steps[cfg.target_phase].load, "pass": all(ok for _, ok in checks.values()),
            "checks": {k: {"value": v, "ok": ok} for k, (v, ok) in checks.items()}}


def groups(cfg: FleetConfig) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {p.name: [] for p in cfg.profiles}
    for i in range(cfg.agents):
        out[cfg.profiles[i % len(cfg.profiles)].name].append(i)
    if len(out) > 1:
        out["all"] = list(range(cfg.agents))
    return out


def print_report(result: dict[str, Any], cfg: FleetConfig) -> None:
    steps = cfg.steps
    conv_head = " ".join(f"@{s.load:.0%}".rjust(11) for s in steps)
    print(f"\nfleet simulation: {cfg.agents} agents, {cfg.duration_s:.0f} s simulated, load steps "
          + ", ".join(f"t={s.at_s:.0f}s {s.load:.0%}" for s in steps)
          + f"; deadline {cfg.deadline_ms:.0f} ms; swap delay {cfg.swap_delay_s} s, pause {cfg.swap_pause_s} s")
    print(f"machine: {result['machine']}")
    print(f"controller and policies from: {result['code']}")
    for name, run in result["runs"].items():
        print(f"  {name}: wall {run['wall_s']:.1f} s, controller handled {run['telemetry_handled']} telemetry "
              f"({run['telemetry_per_s_wall']:.0f} msgs/s over the run, simulation included; "
              f"{run['telemetry_per_s_drain']:.0f} msgs/s from each window's first telemetry to its last order "
              f"applied), lost {run['telemetry_lost']}, orders {run['decisions']}")
    tp = cfg.target_phase
    for group, figures in result["groups"].items():
        fixed = figures["fixed"]
        print(f"\n== {group} ({figures['agents']} agents) ==")
        print(f"{'policy':<16}{'served/offered':>16}{'miss %':>9}{'drop %':>8}{'e2e ms':>8}{'on-time':>11}   "
              f"converge s median/max after each step{'':>4}{'swaps/agent':>13}")
        print(f"{'':<71}{conv_head}{'mean/max':>13}")
        rows = [(n, r) for n, r in figures["policies"].items()]
        for name, r in rows:
            conv = " ".join(f"{p['converge_median_s']:.0f}/{p['converge_max_s']:.0f}".rjust(11) for p in r["phases"])
            print(f"{name:<16}{r['served']:>8}/{r['offered']:<7}{r['miss_pct']:>9.3f}{r['drop_pct']:>8.2f}"
                  f"{r['e2e_mean_ms']:>8.0f}{r['on_time']:>11}   {conv}"
                  f"{r['swaps_per_agent_mean']:>8.1f}/{r['swaps_per_agent_max']}")
        b = fixed["best"]
        size = fixed["best_size"]
        label = f"fixed b={size} best" if isinstance(size, int) else "fixed, best each"
        print(f"{label:<16}{b['served']:>8}/{b['offered']:<7}{b['miss_pct']:>9.3f}{b['drop_pct']:>8.2f}"
              f"{b['e2e_mean_ms']:>8.0f}{b['on_time']:>11}   {'(no controller)':>{12 * len(steps) - 1}}{'0.0/0':>13}")
        if fixed["by_size"]:
            others = ", ".join(f"b={s}: {v['on_time']}" for s, v in sorted(fixed["by_size"].items()))
            print(f"  on-time frames of every fixed size: {others}")
        else:
            print("  fixed baseline: each profile at its own best fixed size")
        print(f"  target at {steps[tp].load:.0%} load (t={steps[tp].at_s:.0f}-"
              f"{cfg.phase_bounds(tp)[1] * WINDOW_S:.0f} s): misses <= {MISS_TARGET_PCT} %, on-time >= best fixed "
              f"for that phase (b={fixed['target_phase_best_size']}: {fixed['target_phase_best_on_time']}), "
              f"converged < {CONVERGE_TARGET_S:.0f} s")
        for name, r in rows:
            j = r["target"]
            c = j["checks"]
            print(f"    {name:<14}{'PASS' if j['pass'] else 'FAIL'}  misses {c['miss_pct']['value']:.3f} % "
                  f"{'ok' if c['miss_pct']['ok'] else 'NO'}, on-time x{c['on_time_vs_best_fixed']['value']:.3f} "
                  f"{'ok' if c['on_time_vs_best_fixed']['ok'] else 'NO'}, converge max "
                  f"{c['converge_max_s']['value']:.0f} s {'ok' if c['converge_max_s']['ok'] else 'NO'}")


def code_location() -> str:
    """Where the controller and policies under test were imported from, and that checkout's commit."""
    root = Path(sys.modules[Controller.__module__].__file__ or ".").resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{root} (commit {commit or 'unknown: not a git checkout'})"


async def evaluate(cfg: FleetConfig, policies: Sequence[str], connections: int, speed: float,
                   barrier_timeout_s: float, tolerance: float) -> dict[str, Any]:
    code = code_location()  # before the runs: a checkout may move on while they go
    t = time.perf_counter()
    fixed = {}
    for size in cfg.all_sizes:
        fixed[size] = run_fixed(cfg, size)
    log(f"fixed-size baselines ({', '.join(map(str, cfg.all_sizes))}) simulated in {time.perf_counter() - t:.1f} s")
    best = best_sizes(fixed, cfg)
    runs: dict[str, PolicyRun] = {}
    with LocalBroker(persistence=False) as broker:
        settings = BrokerSettings.from_url(broker.url)
        for name in policies:
            log(f"[{name}] running {cfg.agents} agents through mosquitto on {broker.url}")
            runs[name] = await run_policy(cfg, name, settings, connections, speed, barrier_timeout_s)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "code": code,
        "policies_evaluated": list(policies),
        "config": {k: v for k, v in cfg.__dict__.items() if k not in ("profiles", "steps")}
        | {"steps": [s.__dict__ for s in cfg.steps], "profiles": [p.name for p in cfg.profiles]},
        "profiles": {p.name: {"device": p.device, "model": p.model, "source": p.source,
                              "capacity_fps": round(p.capacity_fps(cfg.ladder), 1),
                              "batch_delay_ms": {s: p.costs[s].delay_ms for s in p.sizes(cfg.ladder)}}
                     for p in cfg.profiles},
        "runs": {n: {"wall_s": round(r.wall_s, 2), "telemetry_handled": r.telemetry_handled,
                     "telemetry_lost": r.telemetry_lost, "decisions": r.decisions, "orders_received": r.orders_received,
                     "telemetry_per_s_wall": round(r.telemetry_handled / max(1e-9, r.wall_s), 1),
                     "telemetry_per_s_drain": round(r.telemetry_handled / max(1e-9, r.drain_s), 1),
                     "drain_s": round(r.drain_s, 2),
                     "barrier_timeouts": r.barrier_timeouts, "agent_counters": r.counters} for n, r in runs.items()},
        "groups": {},
    }
    per_profile: dict[str, dict[str, Any]] = {}
    for group, agents in groups(cfg).items():
        if group == "all":
            fixed_summary = combine_fixed(list(per_profile.values()))
        else:
            fixed_summary = per_profile[group] = summarize_fixed(fixed, cfg, agents)
        pol = {}
        for name, run in runs.items():
            s = summarize_run(run.recorder, cfg, agents, best)
            s["target"] = judge(s, fixed_summary, cfg, tolerance)
            pol[name] = s
        result["groups"][group] = {"agents": len(agents), "fixed": fixed_summary, "policies": pol}
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=200, help="simulated agents (1000 runs on a 2-core VM)")
    p.add_argument("--policies", default=None, help="comma-separated keys of POLICIES (default: all registered)")
    p.add_argument("--profiles", default=None, help="comma-separated profile names or file stems (default: all)")
    p.add_argument("--duration", type=float, default=120.0, help="simulated seconds")
    p.add_argument("--steps", default=None, help="load steps AT_S:LOAD,... (default: 0:0.5, 1/4: 0.9, "
                                                  "1/2: 1.2, 3/4: 0.3 of the duration)")
    p.add_argument("--speed", type=float, default=0.0, help="at most this many simulated s per wall s (0: no cap)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ladder", default=None, help="batch sizes the simulated agents serve, e.g. 1,2,4,8,16 "
                                                  "(default: every size of each profile)")
    p.add_argument("--deadline-ms", type=float, default=1000.0, help="end-to-end deadline per frame")
    p.add_argument("--queue", type=int, default=40, help="frames an agent buffers besides one assembled batch "
                                                         "(drop-oldest)")
    p.add_argument("--noise", type=float, default=0.03, help="relative standard deviation of each batch delay")
    p.add_argument("--spread", type=float, default=0.1, help="agents' speed varies by +- this share of the profile")
    p.add_argument("--initial-batch", type=int, default=4, help="batch size every agent starts at "
                                                                 "(PipelineConfig's default)")
    p.add_argument("--swap-delay", type=float, default=0.5, help="s from receiving an order to its effect")
    p.add_argument("--swap-pause", type=float, default=0.0, help="s without service at a swap (0: zero-downtime)")
    p.add_argument("--connections", type=int, default=4, help="MQTT connections carrying the fleet")
    p.add_argument("--barrier-timeout", type=float, default=20.0, help="wall s to wait for the controller per window")
    p.add_argument("--tolerance", type=float, default=0.005,
                   help="on-time frames may be this share below the best fixed size's: the runs share arrivals "
                        "but not the draws of batch-delay noise")
    p.add_argument("--json", default=None, help="write every figure to this file")
    return p


class _NoPendingPublishWarning(logging.Filter):
    """aiomqtt warns past 10 QoS 1 publishes in flight on one connection: here that is the design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_NoPendingPublishWarning())
    ladder = tuple(int(x) for x in args.ladder.split(",")) if args.ladder else None
    wanted = args.profiles.split(",") if args.profiles else None
    profiles, skipped = load_profiles(wanted, ladder)
    for line in skipped:
        log(f"profile skipped: {line}")
    if not profiles:
        log("no usable profile")
        return 2
    policies = args.policies.split(",") if args.policies else list(POLICIES)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        log(f"unknown policies {unknown}; known: {sorted(POLICIES)}")
        return 2
    steps = parse_steps(args.steps) if args.steps else default_steps(args.duration)
    cfg = FleetConfig(agents=args.agents, profiles=tuple(profiles), ladder=ladder, steps=tuple(steps),
                      duration_s=args.duration, deadline_ms=args.deadline_ms, queue=args.queue, noise=args.noise,
                      spread=args.spread, initial_batch=args.initial_batch, swap_delay_s=args.swap_delay,
                      swap_pause_s=args.swap_pause, seed=args.seed)
    result = asyncio.run(evaluate(cfg, policies, args.connections, args.speed, args.barrier_timeout, args.tolerance))
    result["skipped_profiles"] = skipped
    print_report(result, cfg)
    if skipped:
        print("\nprofiles skipped: " + "; ".join(skipped))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
