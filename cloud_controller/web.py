"""The controller's HTTP side, on Starlette and uvicorn: Prometheus metrics (/metrics, see
``cloud_controller.metrics``), the fleet as JSON (/api/fleet), the live fleet page with its history,
stream and operator orders (/, see ``cloud_controller.live``), a plain auto-refreshing table (/table)
and /healthz; all but /healthz behind a token when one is given (``--http-token-file``), and without
one, read-only."""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import logging
import time

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud_controller.controller import Controller, order_summary
from cloud_controller.history import FleetHistory
from cloud_controller.live import LiveFleet
from cloud_controller.metrics import metrics_routes
from mqtt_bus.http import HttpServer

log = logging.getLogger(__name__)


def fleet_json(controller: Controller) -> dict[str, object]:
    agents = []
    for v in sorted(controller.agents.values(), key=lambda a: a.agent_id):
        t = v.telemetry
        agents.append({
            "agent_id": v.agent_id,
            "online": v.online,
            "serving": v.status.serving.model_dump() if v.status and v.status.serving else None,
            "telemetry": t.model_dump() if t else None,
            "decisions": [{"ts": ts, "batch_size": size, "reason": d.reason}
                          for ts, size, d in list(v.decisions)[-20:]],
            "last_order": v.last_outcome.model_dump() if v.last_outcome else None,
            "refused_batch_sizes": sorted(v.limits(time.monotonic()).refused_batch_sizes),
        })
    return {"policy": controller.policy.name, "controller_id": controller.controller_id,
            "replicas": list(controller.membership.live), "owned": len(controller.owned),
            "counters": vars(controller.counters), "agents": agents}


def fleet_page(controller: Controller) -> str:
    rows = []
    for v in sorted(controller.agents.values(), key=lambda a: a.agent_id):
        t = v.telemetry
        last = v.decisions[-1][2].reason if v.decisions else ""
        cells = [v.agent_id, "online" if v.online else "offline"]
        if t is not None:
            e2e = t.latency.get("e2e")
            cells += [str(t.batch_size), f"{t.fps_in:.1f}", f"{t.fps_out:.1f}", f"{e2e.p95_ms:.0f}" if e2e else "",
                      str(t.dropped), str(t.deadline_misses), f"{t.resources.memory_used_ratio:.0%}"]
        else:
            cells += ["", "", "", "", "", "", ""]
        cells.append(order_summary(v).removeprefix("; last order: "))
        cells.append(last)
        css = "" if v.online else " class='offline'"
        rows.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("agent", "state", "batch", "fps in", "fps out", "e2e p95 ms",
                                              "dropped", "missed", "memory", "last order", "last decision"))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='2'>"
        "<title>edgebatch fleet</title><style>body{font-family:sans-serif}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}td:last-child{white-space:normal}"
        ".offline{color:#999}</style></head><body>"
        f"<h1>edgebatch fleet</h1><p>policy <b>{html.escape(controller.policy.name)}</b>, "
        f"{controller.counters.telemetry} telemetry messages, {controller.counters.decisions} decisions, "
        f"updated {time.strftime('%H:%M:%S')}</p>"
        f"<p>replica <b>{html.escape(controller.controller_id)}</b> ({controller.ownership}) of "
        f"{html.escape(', '.join(controller.membership.live) or 'none yet')}; deciding for "
        f"{len(controller.owned)} agents (figures are shown where they are decided)</p>"
        f"<table><tr>{head}</tr>{''.join(rows) or '<tr><td colspan=11>no agents yet</td></tr>'}</table>"
        "</body></html>"
    )


class TokenAuth:
    """Every request but /healthz needs the token: ``Authorization: Bearer TOKEN`` (Prometheus'
    ``credentials_file``), or HTTP Basic with the token as the password (a browser asks for it)."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = frozenset({"/healthz"})) -> None:
        self.app = app
        self.token = token.encode()
        self.open_paths = open_paths

    def _allowed(self, authorization: str) -> bool:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip().encode()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        else:
            return False
        return hmac.compare_digest(given, self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self._allowed(headers.get(b"authorization", b"").decode("latin-1")):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # none is served today; one added later is guarded all the same
            await send({"type": "websocket.close", "code": 1008})
            return
        response = PlainTextResponse("token required\n", status_code=401,
                                     headers={"WWW-Authenticate": 'Basic realm="edgebatch", charset="UTF-8"'})
        await response(scope, receive, send)


def build_app(controller: Controller, token: str | None = None, history: FleetHistory | None = None) -> Starlette:
    """The app; ``history`` is what the live page plots (attached to the controller, or nothing is plotted).
    Operator orders need a token: without one the app is read-only."""
    live = LiveFleet(controller, history or FleetHistory(), writable=token is not None)

    async def page(request: Request) -> Response:
        return HTMLResponse(fleet_page(controller))

    async def api_fleet(request: Request) -> Response:
        return JSONResponse(fleet_json(controller))

    async def healthz(request: Request) -> Response:
        """200 while the controller is connected to the broker, else 503 (it reconnects by itself)."""
        connected = controller.bus.connected.is_set()
        return JSONResponse({"broker_connected": connected, "replica": controller.controller_id},
                            status_code=200 if connected else 503)

    routes = [Route("/table", page, methods=["GET"]), Route("/api/fleet", api_fleet, methods=["GET"]),
              *metrics_routes(controller), Route("/healthz", healthz, methods=["GET"]), *live.routes()]
    middleware = [Middleware(TokenAuth, token=token)] if token else []
    app = Starlette(routes=routes, middleware=middleware)
    app.state.live = live
    return app


class FleetServer(HttpServer):
    """The live fleet page (/), the table (/table), /api/fleet, /metrics and /healthz
    (``mqtt_bus.http.HttpServer``)."""

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None, history: FleetHistory | None = None) -> None:
        self.history = history or FleetHistory().attach(controller)
        app = build_app(controller, token, self.history)
        super().__init__(app, host, port, name="fleet-http")
        self.controller = controller
        self.live: LiveFleet = app.state.live

    async def close(self) -> None:
        self.live.close()  # the live streams end, else the server waits for them
        await super().close()
