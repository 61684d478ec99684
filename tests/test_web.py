"""The controller's fleet page, JSON and Prometheus metrics over real HTTP."""

from __future__ import annotations

import asyncio
import json

from cloud_controller.controller import Controller
from cloud_controller.policies import Kum2022Policy
from cloud_controller.web import FleetServer
from mqtt_bus import BrokerSettings
from schemas import AgentStatus
from tests.test_kum2022 import telemetry


async def get(port: int, path: str, method: str = "GET") -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = (await reader.read()).decode()
    writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    return head.splitlines()[0], body


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
        assert 'edgebatch_controller_messages{kind="telemetry"} 1.0' in metrics
        status, body = await get(port, "/api/fleet")
        fleet = json.loads(body)
        assert fleet["policy"] == "kum2022"
        assert fleet["agents"][0]["agent_id"] == "a1" and fleet["agents"][0]["decisions"][0]["batch_size"] == 4
        status, page = await get(port, "/")
        assert "<td>a1</td>" in page and "grow 2 -&gt; 4" in page
        assert (await get(port, "/nope"))[0].endswith("404 Not Found")
        assert (await get(port, "/", "POST"))[0].endswith("405 Method Not Allowed")
    finally:
        await server.close()
