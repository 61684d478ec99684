"""The controller's Prometheus side: /metrics, and /api/prometheus-targets, where Prometheus learns which
agents to scrape (``http_sd_configs``).

A custom collector reads the controller's own state at scrape time: its running totals
(``ControllerCounters``) become counters, and each agent's series are made from the views there are
now, so an agent's series go away when its view expires. The one thing the controller does not keep
is a tally of decisions by direction and reason, so a decision listener keeps that.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloud_controller.controller import Controller, ControllerCounters
from cloud_controller.policies import Decision
from cloud_controller.view import AgentView
from schemas import DesiredState

__all__ = ["COUNTER_HELP", "FleetMetrics", "metrics_routes", "prometheus_targets"]

# Help of each running total, exported as edgebatch_controller_<name>_total.
COUNTER_HELP: dict[str, str] = {
    "telemetry": "Telemetry windows handled (of agents this replica owns)",
    "statuses": "Agent status messages handled",
    "events": "Agent events handled",
    "rejected": "Messages rejected: bad topic, bad payload, or an agent id that does not match its topic",
    "decisions": "Orders given (desired states published)",
    "publish_failed": "Publishes the broker did not take",
    "not_owned": "Telemetry windows of agents another replica owns, skipped before decoding",
    "takeovers": "Agents taken over by this replica",
    "releases": "Agents given up by this replica",
    "profiles_imported": "Learned agent profiles imported on takeover",
    "profiles_published": "Learned agent profiles published",
    "views_expired": "Agent views forgotten (not heard of for the view TTL)",
    "refusals": "Orders an agent refused (each generation once)",
    "orders_timed_out": "Orders that got no outcome in time (decided again)",
    "held_outside_limits": "Decisions held back: a size the agent cannot serve or refused lately",
    "held_no_status": "Telemetry windows of agent ids that never announced themselves (not decided on)",
    "held_pinned": "Decisions not made: an operator pinned the agent's batch size",
    "operator_orders": "Orders an operator gave from the fleet page (pin or release)",
}
MAX_REASONS = 32  # distinct reason labels; any further reason is counted as "other"
_REASON_WORD = re.compile(r"[a-z]{1,24}")


def reason_label(reason: str) -> str:
    """The first word of a policy's reason ("grow", "shrink", "overloaded", "misses", "delay"...): a
    bounded label, where the whole reason carries figures."""
    m = _REASON_WORD.match(reason.lower())
    return m.group(0) if m else "other"


class FleetMetrics:
    """The controller's registry; ``render()`` is the /metrics body."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.decisions: Counter[tuple[str, str]] = Counter()  # (direction, reason) -> orders given
        controller.decision_listeners.append(self._on_decision)
        self.registry = CollectorRegistry()
        self.registry.register(_FleetCollector(self))

    def _on_decision(self, view: AgentView, desired: DesiredState, decision: Decision) -> None:
        before = view.telemetry.batch_size if view.telemetry is not None else None
        direction = "grow" if before is None or decision.batch_size > before else "shrink"
        reason = reason_label(decision.reason)
        if (direction, reason) not in self.decisions and len({r for _, r in self.decisions}) >= MAX_REASONS:
            reason = "other"
        self.decisions[(direction, reason)] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FleetCollector(Collector):
    def __init__(self, metrics: FleetMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        c = self.metrics.controller
        for field in dataclasses.fields(ControllerCounters):
            yield CounterMetricFamily(f"edgebatch_controller_{field.name}", COUNTER_HELP.get(field.name, field.name),
                                      value=getattr(c.counters, field.name))
        decisions = CounterMetricFamily("edgebatch_controller_decisions_by", "Orders given, by direction (grow, "
                                        "shrink) and reason (the first word of the policy's reason)",
                                        labels=["direction", "reason"])
        for (direction, reason), count in sorted(self.metrics.decisions.items()):
            decisions.add_metric([direction, reason], count)
        yield decisions
        yield GaugeMetricFamily("edgebatch_controller_replicas_live", "Controller replicas this one sees alive",
                                value=len(c.membership.live))
        yield GaugeMetricFamily("edgebatch_controller_agents_owned", "Agents this replica decides for",
                                value=len(c.owned))
        yield from _agent_families(c)


def _agent_families(c: Controller) -> Iterator[Metric]:
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["agent"])

    online = gauge("edgebatch_agent_online", "1 if the agent is online")
    owned = gauge("edgebatch_agent_owned", "1 if this replica decides for the agent (figures are where it is 1)")
    batch = gauge("edgebatch_agent_batch_size", "Batch size the agent runs")
    fps_in = gauge("edgebatch_agent_fps_in", "Frames accepted per second (last telemetry window)")
    fps_out = gauge("edgebatch_agent_fps_out", "Frames finished per second (last telemetry window)")
    e2e = gauge("edgebatch_agent_e2e_p95_seconds", "End-to-end delay, 95th percentile (last telemetry window)")
    memory = gauge("edgebatch_agent_memory_used_ratio", "Memory used share (the GPU's if known, else the host's)")
    gpu_memory = gauge("edgebatch_agent_gpu_memory_used_bytes", "GPU memory in use, where the agent's probe reads it")
    gpu = gauge("edgebatch_agent_gpu_util_percent", "GPU utilisation (%), where the agent's probe reads it")
    dropped = CounterMetricFamily("edgebatch_agent_frames_dropped", "Frames the agent dropped on overload since it "
                                  "started", labels=["agent"])
    missed = CounterMetricFamily("edgebatch_agent_deadline_misses", "Frames the agent finished after their deadline "
                                 "since it started", labels=["agent"])
    for view in sorted(c.agents.values(), key=lambda v: v.agent_id):  # expired views are gone, and their series
        a = [view.agent_id]
        online.add_metric(a, 1 if view.online else 0)
        owned.add_metric(a, 1 if c.owns(view.agent_id) else 0)
        t = view.telemetry
        if t is None:
            continue
        batch.add_metric(a, t.batch_size)
        fps_in.add_metric(a, t.fps_in)
        fps_out.add_metric(a, t.fps_out)
        latency = t.latency.get("e2e")
        if latency is not None:
            e2e.add_metric(a, latency.p95_ms / 1000.0)
        r = t.resources
        memory.add_metric(a, r.memory_used_ratio)
        if r.gpu_memory_used_bytes is not None:
            gpu_memory.add_metric(a, r.gpu_memory_used_bytes)
        if r.gpu_util_pct is not None:
            gpu.add_metric(a, r.gpu_util_pct)
        dropped.add_metric(a, t.dropped)
        missed.add_metric(a, t.deadline_misses)
    yield from (online, owned, batch, fps_in, fps_out, e2e, memory, gpu_memory, gpu, dropped, missed)


def prometheus_targets(controller: Controller) -> list[dict[str, object]]:
    """Prometheus ``http_sd_configs`` targets: every online agent that announced a metrics address, labelled
    with its id. Every replica reads every agent's status, so any replica gives the whole fleet."""
    groups: list[dict[str, object]] = []
    for view in sorted(controller.agents.values(), key=lambda v: v.agent_id):
        address = view.status.metrics_address if view.status is not None else None
        if view.online and address:
            groups.append({"targets": [address], "labels": {"agent": view.agent_id}})
    return groups


def metrics_routes(controller: Controller) -> list[Route]:
    metrics = FleetMetrics(controller)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def targets(request: Request) -> Response:
        return JSONResponse(prometheus_targets(controller))

    return [Route("/metrics", prometheus, methods=["GET"]),
            Route("/api/prometheus-targets", targets, methods=["GET"])]
