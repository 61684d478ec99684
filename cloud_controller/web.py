"""The controller's HTTP side, on Starlette and uvicorn: Prometheus metrics (/metrics), the fleet as
JSON (/api/fleet), a small auto-refreshing page (/) and /healthz; all but /healthz behind a token
when one is given (``--http-token-file``)."""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import logging
import time

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud_controller.controller import Controller, order_summary
from mqtt_bus.http import HttpServer

log = logging.getLogger(__name__)


class FleetMetrics:
    """Gauges refreshed from the controller's view on each scrape."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.registry = CollectorRegistry()
        r = self.registry
        labels = ["agent"]
        self.online = Gauge("edgebatch_agent_online", "1 if the agent is online", labels, registry=r)
        self.batch = Gauge("edgebatch_agent_batch_size", "batch size the agent runs", labels, registry=r)
        self.fps_in = Gauge("edgebatch_agent_fps_in", "frames accepted per second", labels, registry=r)
        self.fps_out = Gauge("edgebatch_agent_fps_out", "frames finished per second", labels, registry=r)
        self.e2e = Gauge("edgebatch_agent_e2e_p95_ms", "end-to-end delay p95 (ms)", labels, registry=r)
        self.dropped = Gauge("edgebatch_agent_dropped_frames", "frames dropped since start", labels, registry=r)
        self.missed = Gauge("edgebatch_agent_deadline_misses", "deadline misses since start", labels, registry=r)
        self.memory = Gauge("edgebatch_agent_memory_ratio", "memory used ratio (GPU, else host)", labels, registry=r)
        self.gpu = Gauge("edgebatch_agent_gpu_util_pct", "GPU utilisation (%)", labels, registry=r)
        self.counters = Gauge("edgebatch_controller_messages", "messages handled by kind", ["kind"], registry=r)

    def refresh(self) -> None:
        for view in self.controller.agents.values():
            a = view.agent_id
            self.online.labels(a).set(1 if view.online else 0)
            t = view.telemetry
            if t is None:
                continue
            self.batch.labels(a).set(t.batch_size)
            self.fps_in.labels(a).set(t.fps_in)
            self.fps_out.labels(a).set(t.fps_out)
            e2e = t.latency.get("e2e")
            if e2e is not None:
                self.e2e.labels(a).set(e2e.p95_ms)
            self.dropped.labels(a).set(t.dropped)
            self.missed.labels(a).set(t.deadline_misses)
            self.memory.labels(a).set(t.resources.memory_used_ratio)
            if t.resources.gpu_util_pct is not None:
                self.gpu.labels(a).set(t.resources.gpu_util_pct)
        for kind, value in vars(self.controller.counters).items():
            self.counters.labels(kind).set(value)

    def render(self) -> bytes:
        self.refresh()
        return generate_latest(self.registry)


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
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self._allowed(headers.get(b"authorization", b"").decode("latin-1")):
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse("token required\n", status_code=401,
                                     headers={"WWW-Authenticate": 'Basic realm="edgebatch", charset="UTF-8"'})
        await response(scope, receive, send)


def build_app(controller: Controller, token: str | None = None) -> Starlette:
    metrics = FleetMetrics(controller)

    async def page(request: Request) -> Response:
        return HTMLResponse(fleet_page(controller))

    async def api_fleet(request: Request) -> Response:
        return JSONResponse(fleet_json(controller))

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        """200 while the controller is connected to the broker, else 503 (it reconnects by itself)."""
        connected = controller.bus.connected.is_set()
        return JSONResponse({"broker_connected": connected, "replica": controller.controller_id},
                            status_code=200 if connected else 503)

    routes = [Route("/", page, methods=["GET"]), Route("/api/fleet", api_fleet, methods=["GET"]),
              Route("/metrics", prometheus, methods=["GET"]), Route("/healthz", healthz, methods=["GET"])]
    middleware = [Middleware(TokenAuth, token=token)] if token else []
    return Starlette(routes=routes, middleware=middleware)


class FleetServer(HttpServer):
    """The fleet page, /api/fleet, /metrics and /healthz (``mqtt_bus.http.HttpServer``)."""

    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None) -> None:
        super().__init__(build_app(controller, token), host, port, name="fleet-http")
        self.controller = controller
