"""The controller's /metrics and /api/prometheus-targets over real HTTP (uvicorn on a free port, urllib):
running totals are counters, each agent's series come from its view and go with it."""

from __future__ import annotations

import dataclasses
import json

from cloud_controller.controller import Controller, ControllerCounters
from cloud_controller.metrics import COUNTER_HELP, reason_label
from cloud_controller.policies import Kum2022Policy
from cloud_controller.web import FleetServer
from mqtt_bus import BrokerSettings
from schemas import AgentStatus
from tests.prometheus_helpers import http_get, label_values, scrape, value
from tests.test_kum2022 import telemetry


def controller() -> Controller:
    return Controller(BrokerSettings(port=9), Kum2022Policy(), controller_id="ctl-m", view_ttl_s=60)


async def test_an_expired_agents_series_and_target_disappear_and_totals_only_grow() -> None:
    c = controller()
    server = FleetServer(c, port=0, token="tok")
    port = await server.start()
    try:
        for agent, address in (("cam1", "cam1.example:9108"), ("cam2", "[fd00::2]:9108"), ("cam3", None)):
            c.on_status(agent, AgentStatus(agent_id=agent, state="online", metrics_address=address))
            await c.on_telemetry(agent, telemetry(2, 50.0).model_copy(update={"agent_id": agent, "dropped": 3}))
        status, body = await http_get(f"http://127.0.0.1:{port}/api/prometheus-targets", "tok")
        assert status == 200
        assert json.loads(body) == [{"targets": ["cam1.example:9108"], "labels": {"agent": "cam1"}},
                                    {"targets": ["[fd00::2]:9108"], "labels": {"agent": "cam2"}}]
        names, before = await scrape(port, "tok")
        for name in ("edgebatch_agent_online", "edgebatch_agent_batch_size", "edgebatch_agent_fps_in",
                     "edgebatch_agent_fps_out", "edgebatch_agent_e2e_p95_seconds", "edgebatch_agent_gpu_util_percent",
                     "edgebatch_agent_gpu_memory_used_bytes", "edgebatch_agent_memory_used_ratio",
                     "edgebatch_agent_frames_dropped_total", "edgebatch_agent_deadline_misses_total"):
            assert label_values(before, name, "agent") == {"cam1", "cam2", "cam3"}, name
        assert value(before, "edgebatch_agent_frames_dropped_total", agent="cam2") == 3
        assert value(before, "edgebatch_agent_e2e_p95_seconds", agent="cam1") == telemetry(2, 50.0).latency[
            "e2e"].p95_ms / 1000
        assert value(before, "edgebatch_controller_telemetry_total") == 3
        assert value(before, "edgebatch_controller_decisions_by_total", direction="grow", reason="delay") == 3

        c.on_status("cam2", AgentStatus(agent_id="cam2", state="offline"))  # its last will
        _, targets = await http_get(f"http://127.0.0.1:{port}/api/prometheus-targets", "tok")
        assert [g["labels"]["agent"] for g in json.loads(targets)] == ["cam1"], "an offline agent is not scraped"
        assert c.expire_views(now=c.agents["cam1"].last_seen + 61) == 1  # cam2: offline and silent for the TTL

        _, after = await scrape(port, "tok")
        assert all(dict(labels).get("agent") != "cam2" for _, labels in after), "an expired agent's series stayed"
        assert label_values(after, "edgebatch_agent_online", "agent") == {"cam1", "cam3"}
        assert value(after, "edgebatch_controller_views_expired_total") == 1
        for (name, labels), was in before.items():
            if name.startswith("edgebatch_controller_") and name.endswith("_total"):
                assert after[(name, labels)] >= was, name
    finally:
        await server.close()


async def test_every_running_total_is_a_described_counter() -> None:
    c = controller()
    server = FleetServer(c, port=0)
    port = await server.start()
    try:
        _, text = await http_get(f"http://127.0.0.1:{port}/metrics")
    finally:
        await server.close()
    fields = [f.name for f in dataclasses.fields(ControllerCounters)]
    assert set(COUNTER_HELP) == set(fields), "a running total without its help text"
    for name in fields:
        assert f"# TYPE edgebatch_controller_{name}_total counter" in text, name
        assert f"edgebatch_controller_{name}_total 0.0" in text, name


def test_decision_reasons_are_bounded_labels() -> None:
    assert reason_label("grow: batch 2 uses 40% of its time budget") == "grow"
    assert reason_label("delay 12.0 ms < 2 x 100.0 ms") == "delay"
    assert reason_label("42 is not a word") == "other"
    assert len(reason_label("x" * 100)) <= 24
