"""The controller's fleet page, JSON and Prometheus metrics over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from cloud_controller.controller import Controller
from cloud_controller.policies import Kum2022Policy
from cloud_controller.web import FleetServer
from mqtt_bus import BrokerSettings
from schemas import AgentStatus
from tests.test_kum2022 import telemetry


async def get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[str, str]:
    """One request over a real socket; (status line, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
    await writer.drain()
    raw = (await reader.read()).decode()
    writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    status = head.splitlines()[0]
    if "transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return status, body


def _unchunk(body: str) -> str:
    out, rest = [], body
    while rest:
        size_line, _, rest = rest.partition("\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return "".join(out)


async def test_metrics_fleet_json_and_page() -> None:
    controller = Controller(BrokerSettings(port=9), Kum2022Policy(), controller_id="ctl-web")
    controller.on_status("a1", AgentStatus(agent_id="a1", state="online"))
    await controller.on_telemetry("a1", telemetry(2, 50.0))  # grows to 4: the decision is recorded
    server = FleetServer(controller, port=0)
    port = await server.start()
    try:
        status, metrics = await get(port, "/metrics")
        assert status.endswith("200 OK")
        assert 'edgebatch_agent_batch_size{agent="a1"} 2.0' in metrics
        assert 'edgebatch_agent_online{agent="a1"} 1.0' in metrics
        assert "edgebatch_controller_telemetry_total 1.0" in metrics
        assert "edgebatch_controller_decisions_total 1.0" in metrics
        status, body = await get(port, "/api/fleet")
        fleet = json.loads(body)
        assert fleet["policy"] == "kum2022"
        assert fleet["agents"][0]["agent_id"] == "a1" and fleet["agents"][0]["decisions"][0]["batch_size"] == 4
        status, page = await get(port, "/table")  # the plain table; / is the live page (tests/test_fleet_page.py)
        assert "<td>a1</td>" in page and "grow 2 -&gt; 4" in page
        status, page = await get(port, "/")
        assert status.endswith("200 OK") and "new EventSource(" in page
        assert (await get(port, "/nope"))[0].endswith("404 Not Found")
        assert (await get(port, "/", "POST"))[0].endswith("405 Method Not Allowed")
        status, health = await get(port, "/healthz")
        assert status.endswith("503 Service Unavailable"), "no broker here: not healthy"
        assert json.loads(health)["broker_connected"] is False
    finally:
        await server.close()


async def test_a_token_guards_everything_but_healthz() -> None:
    controller = Controller(BrokerSettings(port=9), Kum2022Policy(), controller_id="ctl-web")
    controller.on_status("a1", AgentStatus(agent_id="a1", state="online"))
    server = FleetServer(controller, port=0, token="s3cret")
    port = await server.start()
    try:
        for path in ("/", "/table", "/api/fleet", "/api/fleet/history", "/metrics", "/api/prometheus-targets"):
            status, _ = await get(port, path)
            assert status.endswith("401 Unauthorized"), path
            for wrong in ("Bearer nope", "Bearer ", "Basic " + base64.b64encode(b"admin:nope").decode(),
                          "Basic !!notbase64", "Token s3cret"):
                assert (await get(port, path, headers={"Authorization": wrong}))[0].endswith("401 Unauthorized"), \
                    (path, wrong)
            assert (await get(port, path, headers={"Authorization": "Bearer s3cret"}))[0].endswith("200 OK"), path
            basic = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
            assert (await get(port, path, headers={"Authorization": basic}))[0].endswith("200 OK"), path
        assert (await get(port, "/healthz"))[0].split()[1] in ("200", "503"), "health needs no token"
        _, metrics = await get(port, "/metrics", headers={"Authorization": "Bearer s3cret"})
        assert 'edgebatch_agent_online{agent="a1"} 1.0' in metrics
    finally:
        await server.close()


async def test_a_busy_port_is_an_os_error_for_the_caller() -> None:
    controller = Controller(BrokerSettings(port=9), Kum2022Policy(), controller_id="ctl-web")
    first = FleetServer(controller, port=0)
    port = await first.start()
    try:
        with pytest.raises(OSError):
            await FleetServer(controller, port=port).start()
    finally:
        await first.close()
