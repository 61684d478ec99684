"""The last minutes of each agent, for the fleet page: one point per telemetry window (batch size, fps
in/out, e2e p95, GPU utilisation, memory ratio) and markers where something happened (an order given,
its outcome on the agent, a failed swap), fed by the controller's listeners.

Times are the controller's clock when the message came (``time.time()``), not the agent's: points and
the orders decided on them then line up, whatever the agents' clocks say.

Memory is bounded per agent (``window_s`` points at one a second, ``max_markers`` markers; telemetry
faster than once a second covers less time) and overall (``max_agents``: agents beyond it are shown
without plots, never evicting one that is recorded). An agent's history goes when the controller
forgets its view.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cloud_controller.controller import Controller
from cloud_controller.operator import OPERATOR
from cloud_controller.view import AgentView
from schemas import AgentEvent, DesiredState, Telemetry

COLUMNS = ("ts", "batch", "fps_in", "fps_out", "e2e_p95_ms", "gpu_util_pct", "memory_ratio")
Point = tuple[float, int, float, float, float | None, float | None, float]
MarkerKind = Literal["decision", "operator", "applied", "refused", "superseded", "swap_failed"]
_EVENT_MARKERS: dict[str, MarkerKind] = {
    "desired_applied": "applied",
    "desired_refused": "refused",
    "desired_superseded": "superseded",
    "swap_failed": "swap_failed",
}


@dataclass(frozen=True)
class Marker:
    ts: float
    kind: MarkerKind
    text: str
    generation: int | None = None
    batch_size: int | None = None

    def as_json(self) -> dict[str, object]:
        return {"ts": round(self.ts, 2), "kind": self.kind, "text": self.text, "generation": self.generation,
                "batch_size": self.batch_size}


def point_json(p: Point) -> list[float | int | None]:
    ts, batch, fps_in, fps_out, e2e, gpu, memory = p
    return [round(ts, 2), batch, round(fps_in, 2), round(fps_out, 2), None if e2e is None else round(e2e, 1),
            None if gpu is None else round(gpu, 1), round(memory, 4)]


class AgentHistory:
    """One agent's ring of points and markers, with counts of all ever added so that a reader can ask
    for what came after what it has."""

    def __init__(self, max_points: int, max_markers: int) -> None:
        self.points: deque[Point] = deque(maxlen=max_points)
        self.markers: deque[Marker] = deque(maxlen=max_markers)
        self.points_added = 0
        self.markers_added = 0

    def add_point(self, p: Point) -> None:
        self.points.append(p)
        self.points_added += 1

    def add_marker(self, m: Marker) -> None:
        self.markers.append(m)
        self.markers_added += 1

    def points_after(self, seen: int) -> list[Point]:
        """Points added after the first ``seen`` (those still in the ring)."""
        new = min(self.points_added - seen, len(self.points))
        return list(self.points)[len(self.points) - new:] if new > 0 else []

    def markers_after(self, seen: int) -> list[Marker]:
        new = min(self.markers_added - seen, len(self.markers))
        return list(self.markers)[len(self.markers) - new:] if new > 0 else []

    def trim(self, oldest: float) -> None:
        while self.points and self.points[0][0] < oldest:
            self.points.popleft()
        while self.markers and self.markers[0].ts < oldest:
            self.markers.popleft()


class FleetHistory:
    def __init__(self, window_s: float = 600.0, max_agents: int = 256, max_markers: int = 100,
                 clock: Callable[[], float] = time.time) -> None:
        if window_s < 1 or max_agents < 1 or max_markers < 1:
            raise ValueError("window_s, max_agents and max_markers must be at least 1")
        self.window_s = window_s
        self.max_agents = max_agents
        self.max_points = int(window_s)  # one a second
        self.max_markers = max_markers
        self.agents: dict[str, AgentHistory] = {}
        self.not_recorded = 0  # windows of agents beyond max_agents
        self.clock = clock
        self._controller: Controller | None = None

    def attach(self, controller: Controller) -> FleetHistory:
        """Follow the controller: its windows, the orders it gives, the agents' events, expired views."""
        self._controller = controller
        controller.telemetry_listeners.append(self.on_telemetry)
        controller.desired_listeners.append(self.on_desired)
        controller.event_listeners.append(self.on_event)
        controller.expiry_listeners.append(self.forget)
        return self

    def _agent(self, agent_id: str) -> AgentHistory | None:
        h = self.agents.get(agent_id)
        if h is None:
            if len(self.agents) >= self.max_agents:
                return None
            h = self.agents[agent_id] = AgentHistory(self.max_points, self.max_markers)
        return h

    def on_telemetry(self, view: AgentView, t: Telemetry) -> None:
        h = self._agent(view.agent_id)
        if h is None:
            self.not_recorded += 1
            return
        now = self.clock()
        e2e = t.latency.get("e2e")
        h.add_point((now, t.batch_size, t.fps_in, t.fps_out, e2e.p95_ms if e2e is not None else None,
                     t.resources.gpu_util_pct, t.resources.memory_used_ratio))
        h.trim(now - self.window_s)

    def on_desired(self, view: AgentView, desired: DesiredState) -> None:
        h = self._agent(view.agent_id)
        if h is not None:
            kind: MarkerKind = "operator" if desired.reason.startswith(f"{OPERATOR}:") else "decision"
            h.add_marker(Marker(self.clock(), kind, f"gen {desired.generation}: {desired.reason}", desired.generation,
                                desired.batch_size))

    def on_event(self, event: AgentEvent) -> None:
        kind = _EVENT_MARKERS.get(event.kind)
        known = self._controller is None or event.agent_id in self._controller.agents
        if kind is None or not known:
            return
        h = self._agent(event.agent_id)
        if h is None:
            return
        words = [f"gen {event.generation}" if event.generation is not None else "", kind.replace("_", " ")]
        if event.refusal:
            words.append(f"({event.refusal})")
        text = " ".join(w for w in words if w) + (f": {event.detail}" if event.detail else "")
        h.add_marker(Marker(self.clock(), kind, text[:500], event.generation))

    def forget(self, agent_id: str) -> None:
        self.agents.pop(agent_id, None)
