"""The live fleet page's HTTP side: the page itself (``/``), the history of the last minutes
(``/api/fleet/history``), live updates as server-sent events (``/api/fleet/stream``), and the
operator's orders (``POST /api/agents/{id}/pin`` and ``.../release``).

The stream's first event (``snapshot``) is the whole history, the same JSON as /api/fleet/history;
then one ``update`` a second with what is new: points and markers since the last, an agent's state
when it changed (online, serving, pinned, streams), agents that are gone. A browser that reconnects
gets a fresh snapshot, so it never misses a gap.

Behind a token, the browser's HTTP Basic credentials cover the stream (same origin: EventSource and
fetch resend them); no token in a query string. Operator orders need a token to be configured at all
(without one the controller is read-only: 403) and a JSON body (a cross-site form cannot send one, so
a browser's cached credentials cannot be used for a forged order).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cloud_controller.controller import Controller, order_summary
from cloud_controller.history import COLUMNS, FleetHistory, point_json
from cloud_controller.operator import OperatorRefused
from cloud_controller.view import AgentView

log = logging.getLogger(__name__)

READ_ONLY = "read-only: start the controller with --http-token-file"
MAX_BODY = 4096
STREAM_KEYS = ("stream_id", "state", "reason", "connection", "reconnects", "last_error")  # what the page shows


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class LiveFleet:
    """State shared by the page's routes: the history and the open streams (bounded, closed on shutdown)."""

    def __init__(self, controller: Controller, history: FleetHistory, writable: bool, *,
                 interval_s: float = 1.0, max_streams: int = 32) -> None:
        self.controller = controller
        self.history = history
        self.writable = writable
        self.interval_s = interval_s
        self.max_streams = max_streams
        self.streams: set[asyncio.Event] = set()  # one stop event per open stream
        self.closing = False
        self._states: tuple[float, dict[str, dict[str, Any]]] = (-1.0, {})
        self.page = (resources.files("cloud_controller") / "static" / "fleet.html").read_text(encoding="utf-8")

    # --- what is sent ------------------------------------------------------------------------

    def agent_state(self, v: AgentView) -> dict[str, Any]:
        t = v.telemetry
        serving = v.status.serving if v.status else None
        pin = self.controller.pins.get(v.agent_id)
        limits = v.limits(time.monotonic())
        streams = []
        for s in t.streams if t is not None else []:
            fields = s.model_dump()
            streams.append({k: fields[k] for k in STREAM_KEYS if k in fields})
        return {
            "online": v.online,
            "owned": self.controller.owns(v.agent_id),
            "serving": serving.model_dump(exclude={"schema_version", "servable_batch_sizes"}) if serving else None,
            "batch_size": t.batch_size if t is not None else None,
            "servable": sorted(limits.servable_batch_sizes) if limits.servable_batch_sizes is not None else None,
            "refused": sorted(limits.refused_batch_sizes),
            "pinned": {"batch_size": pin.batch_size, "reason": pin.reason, "since": round(pin.since, 2),
                       "generation": pin.generation} if pin else None,
            "last_order": order_summary(v).removeprefix("; last order: "),
            "streams": streams,
        }

    def agent_states(self) -> dict[str, dict[str, Any]]:
        """Every agent's state, built once per half interval whatever the number of open streams."""
        at, states = self._states
        now = time.monotonic()
        if now - at >= self.interval_s / 2:
            states = {a: self.agent_state(v) for a, v in sorted(self.controller.agents.items())}
            self._states = (now, states)
        return states

    def fleet_state(self) -> dict[str, Any]:
        c = self.controller
        return {"policy": c.policy.name, "controller_id": c.controller_id, "replicas": list(c.membership.live),
                "owned": len(c.owned), "telemetry": c.counters.telemetry, "decisions": c.counters.decisions,
                "writable": self.writable}

    def snapshot(self) -> dict[str, Any]:
        agents = {}
        for agent_id, state in self.agent_states().items():
            h = self.history.agents.get(agent_id)
            agents[agent_id] = {
                "state": state,
                "points": [point_json(p) for p in h.points] if h else [],
                "markers": [m.as_json() for m in h.markers] if h else [],
            }
        return {"now": round(time.time(), 2), "window_s": self.history.window_s, "columns": list(COLUMNS),
                "fleet": self.fleet_state(), "agents": agents}

    def _update(self, sent: dict[str, tuple[int, int, dict[str, Any]]]) -> dict[str, Any]:
        """What changed since ``sent`` (per agent: points and markers sent, last state sent), which it updates."""
        agents: dict[str, dict[str, Any]] = {}
        states = self.agent_states()
        for agent_id, state in states.items():
            h = self.history.agents.get(agent_id)
            points_seen, markers_seen, state_seen = sent.get(agent_id, (0, 0, {}))
            entry: dict[str, Any] = {}
            if state != state_seen:
                entry["state"] = state
            if h is not None:
                if h.points_added > points_seen:
                    entry["points"] = [point_json(p) for p in h.points_after(points_seen)]
                if h.markers_added > markers_seen:
                    entry["markers"] = [m.as_json() for m in h.markers_after(markers_seen)]
                points_seen, markers_seen = h.points_added, h.markers_added
            sent[agent_id] = (points_seen, markers_seen, state)
            if entry:
                agents[agent_id] = entry
        gone = [a for a in sent if a not in states]
        for agent_id in gone:
            del sent[agent_id]
        return {"now": round(time.time(), 2), "fleet": self.fleet_state(), "agents": agents, "gone": gone}

    def _mark_sent(self, sent: dict[str, tuple[int, int, dict[str, Any]]], snapshot: dict[str, Any]) -> None:
        for agent_id, entry in snapshot["agents"].items():
            h = self.history.agents.get(agent_id)
            sent[agent_id] = (h.points_added if h else 0, h.markers_added if h else 0, entry["state"])

    # --- routes ------------------------------------------------------------------------------

    async def page_route(self, request: Request) -> Response:
        return HTMLResponse(self.page, headers={"Cache-Control": "no-store"})

    async def history_route(self, request: Request) -> Response:
        return JSONResponse(self.snapshot())

    async def stream_route(self, request: Request) -> Response:
        if self.closing:
            return _error(503, "the controller is shutting down")
        if len(self.streams) >= self.max_streams:
            return _error(503, f"{self.max_streams} live streams are open already; try again later")
        stop = asyncio.Event()
        self.streams.add(stop)  # from here on, EventStream's finally takes it out
        return EventStream(self, stop)

    async def _order_body(self, request: Request) -> dict[str, Any] | JSONResponse:
        if not self.writable:
            return _error(403, READ_ONLY)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "send the order as JSON (Content-Type: application/json)")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return _error(413, f"an order is at most {MAX_BODY} bytes")
        try:
            order = json.loads(body or b"{}")
        except ValueError as exc:
            return _error(400, f"not JSON: {exc}")
        if not isinstance(order, dict):
            return _error(400, "the order must be a JSON object")
        reason = order.get("reason", "")
        if not isinstance(reason, str):
            return _error(400, "reason must be a string")
        return order

    async def pin_route(self, request: Request) -> Response:
        order = await self._order_body(request)
        if isinstance(order, Response):
            return order
        size = order.get("batch_size")
        if not isinstance(size, int) or isinstance(size, bool):
            return _error(400, "batch_size must be an integer")
        try:
            desired = self.controller.pin(request.path_params["agent_id"], size, order.get("reason", "").strip())
        except OperatorRefused as exc:
            return _error(exc.status, str(exc))
        return JSONResponse({"pinned": True, "desired": json.loads(desired.model_dump_json())})

    async def release_route(self, request: Request) -> Response:
        order = await self._order_body(request)
        if isinstance(order, Response):
            return order
        try:
            desired = self.controller.unpin(request.path_params["agent_id"], order.get("reason", "").strip())
        except OperatorRefused as exc:
            return _error(exc.status, str(exc))
        return JSONResponse({"pinned": False, "desired": json.loads(desired.model_dump_json())})

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page_route, methods=["GET"]),
            Route("/api/fleet/history", self.history_route, methods=["GET"]),
            Route("/api/fleet/stream", self.stream_route, methods=["GET"]),
            Route("/api/agents/{agent_id}/pin", self.pin_route, methods=["POST"]),
            Route("/api/agents/{agent_id}/release", self.release_route, methods=["POST"]),
        ]

    def close(self) -> None:
        """End every open stream (a server waiting for its responses to finish would wait forever)."""
        self.closing = True
        for stop in self.streams:
            stop.set()


class EventStream(Response):
    """``text/event-stream``: the snapshot, then an update every ``interval_s`` until the client goes
    (``http.disconnect``) or the server closes. Nothing outlives the response: the listener task is
    cancelled and the stream unregistered in ``finally``."""

    media_type = "text/event-stream"

    def __init__(self, live: LiveFleet, stop: asyncio.Event) -> None:
        super().__init__(headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # open-ended body
        self.live = live
        self.stop = stop

    async def _listen(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.stop.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        live = self.live
        listener = asyncio.create_task(self._listen(receive), name="fleet-stream.listen")
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            snapshot = live.snapshot()
            sent: dict[str, tuple[int, int, dict[str, Any]]] = {}
            live._mark_sent(sent, snapshot)
            await send({"type": "http.response.body", "more_body": True,
                        "body": _event("snapshot", snapshot, retry_ms=2000)})
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), live.interval_s)
                if self.stop.is_set():
                    break
                await send({"type": "http.response.body", "more_body": True,
                            "body": _event("update", live._update(sent))})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            live.streams.discard(self.stop)


def _event(name: str, data: dict[str, Any], retry_ms: int | None = None) -> bytes:
    retry = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"{retry}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
