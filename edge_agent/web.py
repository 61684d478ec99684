"""The agent's HTTP side (``edge-agent run --metrics HOST:PORT``): /metrics for Prometheus and /healthz
(200 while the pipeline runs, 503 while it starts, drains or has stopped), on the same uvicorn server
class as the controller's (``mqtt_bus.http``)."""

from __future__ import annotations

import socket

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge_agent.metrics import AgentMetrics
from mqtt_bus.http import HttpServer

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def build_app(metrics: AgentMetrics) -> Starlette:
    async def prometheus(request: Request) -> Response:
        return Response(await metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        healthy, body = metrics.health()
        return JSONResponse(body, status_code=200 if healthy else 503)

    return Starlette(routes=[Route("/metrics", prometheus, methods=["GET"]),
                             Route("/healthz", healthz, methods=["GET"])])


class MetricsServer(HttpServer):
    """/metrics and /healthz of one agent."""

    def __init__(self, metrics: AgentMetrics, host: str = "127.0.0.1", port: int = 9108) -> None:
        super().__init__(build_app(metrics), host, port, name="agent-http")
        self.metrics = metrics

    def advertised(self, override: str | None = None) -> str:
        """HOST:PORT for Prometheus (``AgentStatus.metrics_address``): the override, else the address bound,
        with a wildcard one replaced by this host's name (0.0.0.0 reaches nothing)."""
        if override:
            return override
        host = socket.gethostname() if self.host in WILDCARD_HOSTS else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
