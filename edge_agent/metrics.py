"""The agent's Prometheus metrics, read at scrape time from the parts that own each number.

Frame counts come from ``PipelineStats``, order outcomes from the reconciler's counters, queue depths
and the batch size from the pipeline, resources from the probe: a custom collector reads them when
Prometheus asks, so nothing is counted twice and a stream's series go away with the stream (only the
streams being read are listed; a parked or removed one drops out). The one thing the pipeline does
not keep is a histogram, so ``StageHistograms`` is fed once per batch by the pipeline's batch listener:
a few bisections per frame on the event loop, no lock (the loop is the only writer and the scrape
runs on it too).

Series carry no ``agent`` label: Prometheus adds it as a target label (``/api/prometheus-targets`` of
the controller), so an agent cannot speak for another.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent.frames import Batch
from edge_agent.pipeline import Pipeline
from edge_agent.probes import ResourceProbe
from edge_agent.stages import ServingConfig
from schemas import ResourceSample

if TYPE_CHECKING:
    from edge_agent.agent import Agent

__all__ = ["STAGE_BUCKETS_S", "AgentMetrics", "StageHistograms"]

# Upper bounds (s) of the stage histograms: 1 ms to 10 s, finer where deadlines usually are (0.1-2 s).
STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
                   3.0, 5.0, 10.0)
FRAME_STAGES = ("pre", "queue", "e2e")  # one observation per frame
BATCH_STAGES = ("infer", "post", "batch")  # one per batch: every frame of a batch shares these
RESOURCE_MAX_AGE_S = 1.0  # scrapes closer together than this reuse the probe's last sample


class StageHistograms:
    """Cumulative per-stage delay histograms (seconds), fed per batch by ``Pipeline.batch_listeners``."""

    def __init__(self, buckets: tuple[float, ...] = STAGE_BUCKETS_S) -> None:
        self.bounds = buckets
        self.counts = {stage: [0] * (len(buckets) + 1) for stage in (*FRAME_STAGES, *BATCH_STAGES)}
        self.sums = dict.fromkeys(self.counts, 0.0)

    def _add(self, stage: str, seconds: float) -> None:
        self.counts[stage][bisect.bisect_left(self.bounds, seconds)] += 1  # le: value <= bound
        self.sums[stage] += seconds

    def observe_batch(self, batch: Batch, serving: ServingConfig | None = None) -> None:
        infer, post = batch.infer_ms / 1000.0, batch.post_ms / 1000.0
        self._add("infer", infer)
        self._add("post", post)
        self._add("batch", batch.pre_ms / 1000.0 + infer + post)
        for f in batch.frames:
            self._add("pre", f.t_pre_end - f.t_pre_start)
            self._add("queue", f.queue_s)
            self._add("e2e", f.t_post_end - f.t_capture)

    def family(self) -> HistogramMetricFamily:
        h = HistogramMetricFamily("edgebatch_stage_seconds", "Delay of each pipeline stage: pre, queue and e2e per "
                                  "frame; infer, post and batch (pre+infer+post) per batch", labels=["stage"])
        for stage, counts in self.counts.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            h.add_metric([stage], buckets, self.sums[stage])
        return h


class AgentMetrics:
    """The agent's registry: ``await render()`` for /metrics, ``health()`` for /healthz. ``agent`` (the
    MQTT side, when there is one) may be attached later: orders, telemetry and the broker state then show."""

    def __init__(self, pipeline: Pipeline, probe: ResourceProbe, agent: Agent | None = None) -> None:
        self.pipeline = pipeline
        self.probe = probe
        self.agent = agent
        self.stages = StageHistograms()
        pipeline.batch_listeners.append(self.stages.observe_batch)
        self.resources: ResourceSample | None = None
        self._sampled_at = -1e18
        self._sampling: asyncio.Lock | None = None
        self.registry = CollectorRegistry()
        self.registry.register(_AgentCollector(self))

    async def sample_resources(self) -> None:
        """The probe's figures, at most every RESOURCE_MAX_AGE_S, read on a thread (NVML may block)."""
        if self._sampling is None:
            self._sampling = asyncio.Lock()
        async with self._sampling:  # concurrent scrapes share one sample
            if time.monotonic() - self._sampled_at < RESOURCE_MAX_AGE_S:
                return
            self.resources = await asyncio.to_thread(self.probe.sample)
            self._sampled_at = time.monotonic()

    async def render(self) -> bytes:
        await self.sample_resources()
        return generate_latest(self.registry)

    def health(self) -> tuple[bool, dict[str, object]]:
        """(healthy, body): healthy while the pipeline runs; the broker's state is reported, not required
        (inference goes on through an MQTT outage)."""
        state = self.pipeline.state
        agent = self.agent
        body: dict[str, object] = {
            "pipeline": state,
            "batch_size": self.pipeline.batch_size,
            "streams": len(self.pipeline.sources),
            "agent_id": agent.agent_id if agent is not None else None,
            "broker_connected": agent.bus.connected.is_set() if agent is not None else None,
        }
        return state == "running", body


class _AgentCollector(Collector):
    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        yield from self._frames()
        yield self.metrics.stages.family()
        yield from self._serving()
        yield from self._resources()
        yield from self._orders()

    def _frames(self) -> Iterator[Metric]:
        pipeline = self.metrics.pipeline
        stats = pipeline.stats
        families = {
            "frames_in": CounterMetricFamily("edgebatch_frames_in", "Frames accepted from the stream",
                                             labels=["stream"]),
            "frames_out": CounterMetricFamily("edgebatch_frames_out", "Frames of the stream fully processed",
                                              labels=["stream"]),
            "dropped": CounterMetricFamily("edgebatch_frames_dropped", "Frames of the stream dropped on overload "
                                           "(the oldest waiting frame makes room)", labels=["stream"]),
            "deadline_misses": CounterMetricFamily("edgebatch_deadline_misses", "Frames of the stream finished "
                                                   "after their deadline", labels=["stream"]),
        }
        for source in pipeline.sources:  # streams being read: a parked or removed one's series go away
            counts = stats.streams.get(source.stream_id)
            if counts is None:
                continue
            for key, family in families.items():
                family.add_metric([source.stream_id], getattr(counts, key))
        yield from families.values()
        yield CounterMetricFamily("edgebatch_frames_corrupt", "Unreadable frames skipped (all streams)",
                                  value=stats.corrupt)

    def _serving(self) -> Iterator[Metric]:
        pipeline = self.metrics.pipeline
        serving = pipeline.serving
        yield GaugeMetricFamily("edgebatch_batch_size", "Batch size being served", value=serving.batch_size)
        info = GaugeMetricFamily("edgebatch_serving_info", "What is served (always 1)",
                                 labels=["model", "version", "backend"])
        info.add_metric([serving.model, serving.version, serving.engine.backend], 1)
        yield info
        depth = GaugeMetricFamily("edgebatch_queue_depth", "Items waiting in front of a stage: frames in "
                                  "'ingress' (before the batcher), batches in front of each stage and the sinks",
                                  labels=["queue"])
        for queue, items in pipeline.queue_depths().items():
            depth.add_metric([queue], items)
        yield depth
        streams = GaugeMetricFamily("edgebatch_streams", "Streams by state: admitted (read) or parked (open, not "
                                    "read)", labels=["state"])
        streams.add_metric(["admitted"], len(pipeline.sources))
        streams.add_metric(["parked"], len(pipeline.parked))
        yield streams
        yield GaugeMetricFamily("edgebatch_source_fps", "Nominal input rate of the streams being read (frames/s)",
                                value=pipeline.source_fps_total)

    def _resources(self) -> Iterator[Metric]:
        r = self.metrics.resources
        figures: list[tuple[str, str, float | None]] = [
            ("edgebatch_gpu_util_percent", "GPU utilisation (%), where the probe reads one",
             r.gpu_util_pct if r else None),
            ("edgebatch_gpu_memory_used_bytes", "GPU memory in use (device-wide; unified memory on Jetson)",
             r.gpu_memory_used_bytes if r else None),
            ("edgebatch_gpu_memory_total_bytes", "GPU memory in all", r.gpu_memory_total_bytes if r else None),
            ("edgebatch_process_gpu_memory_bytes", "GPU memory of this process, where NVML lists it",
             r.process_gpu_memory_bytes if r else None),
            ("edgebatch_host_memory_used_bytes", "Host memory in use (total - available)",
             r.host_memory_used_bytes if r else None),
            ("edgebatch_host_memory_total_bytes", "Host memory in all", r.host_memory_total_bytes if r else None),
            ("edgebatch_process_rss_bytes", "Resident memory of the agent process", r.process_rss_bytes if r else None),
            ("edgebatch_cpu_util_percent", "Host CPU utilisation, all cores (%)", r.cpu_util_pct if r else None),
        ]
        for name, doc, value in figures:
            family = GaugeMetricFamily(name, doc)  # listed (HELP/TYPE) even when this device has no such figure
            if value is not None:
                family.add_metric([], value)
            yield family

    def _orders(self) -> Iterator[Metric]:
        agent = self.metrics.agent
        if agent is None:
            return  # no MQTT side: nobody gives orders
        c = agent.reconciler.counters
        swaps = CounterMetricFamily("edgebatch_swaps", "Orders (desired-state generations) by outcome: applied, "
                                    "refused, superseded (a newer one came first), stale (already passed)",
                                    labels=["outcome"])
        for outcome in ("applied", "refused", "superseded", "stale"):
            swaps.add_metric([outcome], getattr(c, outcome))
        yield swaps
        refusals = CounterMetricFamily("edgebatch_order_refusals", "Refused orders by reason", labels=["reason"])
        for reason, count in sorted(c.refusals_by_reason.items()):
            refusals.add_metric([reason], count)
        yield refusals
        yield CounterMetricFamily("edgebatch_engine_swaps", "Applied orders that loaded another engine",
                                  value=c.engine_swaps)
        yield GaugeMetricFamily("edgebatch_applied_generation", "Last desired-state generation that took effect",
                                value=agent.applied_generation)
        yield GaugeMetricFamily("edgebatch_broker_connected", "1 while connected to the MQTT broker",
                                value=1 if agent.bus.connected.is_set() else 0)
        telemetry = CounterMetricFamily("edgebatch_telemetry_messages", "Telemetry windows by result: sent, or "
                                        "unsent (no broker)", labels=["result"])
        telemetry.add_metric(["sent"], agent.counters.telemetry_sent)
        telemetry.add_metric(["unsent"], agent.counters.telemetry_unsent)
        yield telemetry
