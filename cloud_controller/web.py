"""The controller's HTTP side: Prometheus metrics (/metrics), the fleet as JSON (/api/fleet) and a
small auto-refreshing page (/). Plain asyncio streams: a few GETs need no web framework."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import time

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cloud_controller.controller import Controller, order_summary

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


class FleetServer:
    def __init__(self, controller: Controller, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.controller = controller
        self.host = host
        self.port = port
        self.metrics = FleetMetrics(controller)
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: not needed
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.metrics.render()
            elif path == "/api/fleet":
                status, ctype = "200 OK", "application/json"
                body = json.dumps(fleet_json(self.controller)).encode()
            elif path == "/":
                status, ctype, body = "200 OK", "text/html; charset=utf-8", fleet_page(self.controller).encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError) as exc:
            log.debug("http client dropped: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
