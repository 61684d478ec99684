"""Issue 12's user story, end to end with the real programs: one YAML file per component, an agent with
two cameras (one of them dead), a controller with its fleet page, and a real browser that sees the live
camera served and the dead one retried and shown as failed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mqtt_bus.local_broker import free_port
from tests.conftest import VIDEO
from tests.headless_browser import HeadlessChromium, chromium_path
from tests.mqtt_helpers import eventually
from tests.processes import stop_all
from tests.prometheus_helpers import fetch


def fleet(port: int, token: str) -> dict[str, Any]:
    status, body = fetch(f"http://127.0.0.1:{port}/api/fleet", token)
    if status != 200:
        raise OSError(f"/api/fleet answered {status}")
    return json.loads(body)  # type: ignore[no-any-return]


def streams_of(port: int, token: str, agent_id: str) -> dict[str, dict[str, Any]]:
    try:
        agents = fleet(port, token)["agents"]
    except OSError:
        return {}
    for agent in agents:
        if agent["agent_id"] == agent_id and agent["telemetry"]:
            return {s["stream_id"]: s for s in agent["telemetry"]["streams"]}
    return {}


async def test_two_cameras_one_dead_from_yaml_files_to_the_fleet_page(broker, prefix, tmp_path: Path) -> None:
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.skip("chromium is not installed here (scripts/setup.sh installs it where apt can)")
        pytest.fail("chromium is not installed: run scripts/setup.sh (apt-get install chromium)")
    token = "story-token-5d1e"
    (tmp_path / "token").write_text(token + "\n")
    http_port, dead_port = free_port(), free_port()
    (tmp_path / "controller.yml").write_text(f"""
broker: {{url: "{broker.url}"}}
controller: {{prefix: {prefix}, heartbeat_s: 0.5}}
policy: {{name: deadline}}
http: {{address: "127.0.0.1:{http_port}", token_file: "{tmp_path / 'token'}"}}
""")
    (tmp_path / "agent.yml").write_text(f"""
agent: {{id: story-cam, prefix: {prefix}, telemetry_interval_s: 0.5}}
broker: {{url: "{broker.url}"}}
pipeline: {{fps: 5, loop: true}}
cameras:
  lobby: {{url: "{VIDEO}"}}
  gate: {{url: "rtsp://127.0.0.1:{dead_port}/cam", fps: 5}}
  yard: {{url: "rtsp://10.255.255.1/cam", enabled: false}}
""")
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("controller", "agent")}
    processes = [
        subprocess.Popen([sys.executable, "-m", "cloud_controller.cli", "--config", str(tmp_path / "controller.yml")],
                         stdout=logs["controller"], stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(tmp_path / "agent.yml")],
                         stdout=logs["agent"], stderr=subprocess.STDOUT),
    ]
    page: dict[str, Any] = {}
    try:
        def seen() -> bool:
            if any(p.poll() is not None for p in processes):
                return True
            streams = streams_of(http_port, token, "story-cam")
            return (streams.get("lobby", {}).get("connection") == "live"
                    and streams.get("gate", {}).get("connection") == "failed"
                    and streams["gate"].get("reconnects", 0) >= 2)

        await eventually(seen, 90, "lobby live and gate failed, retried, in the controller's fleet")
        assert all(p.poll() is None for p in processes), \
            [(tmp_path / f"{n}.log").read_text()[-2000:] for n in logs]
        streams = streams_of(http_port, token, "story-cam")
        assert set(streams) == {"lobby", "gate"}, "a disabled camera is not opened"
        assert "cannot connect" in streams["gate"]["last_error"] or streams["gate"]["last_error"], streams["gate"]

        def browse() -> None:
            card = "document.querySelector('[data-agent=story-cam]')"
            with HeadlessChromium(tmp_path / "profile") as b:
                b.navigate(f"http://operator:{token}@127.0.0.1:{http_port}/")
                b.wait_for(f"{card} && Number({card}.dataset.points) >= 3", 60, what="the agent's plots")
                before = int(b.evaluate(f"{card}.dataset.points"))
                b.wait_for(f"Number({card}.dataset.points) >= {before + 2}", 30, what="the plots growing")
                b.wait_for(f"{card}.textContent.includes('gate: failed')", 30, what="the dead camera shown failed")
                page["card"] = b.evaluate(f"{card}.textContent")
                page["errors"] = b.page_errors()
                b.screenshot(tmp_path / "story.png")

        await asyncio.to_thread(browse)
        frames = streams_of(http_port, token, "story-cam")["lobby"]
    finally:
        stop_all(processes, logs.values())
    assert "lobby: admitted" in page["card"] and "gate: failed" in page["card"], page["card"]
    assert not page["errors"], page["errors"]
    assert frames["frames_out"] > 0, "the live camera is served"
    shot = tmp_path / "story.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.copy(shot, "/tmp/edgebatch-user-story.png")
