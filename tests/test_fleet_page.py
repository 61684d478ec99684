"""The live fleet page: history from the controller, server-sent events over real HTTP, operator pins
published through a real mosquitto, the refusals, and the page itself in a real headless chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud_controller.controller import Controller
from cloud_controller.history import FleetHistory
from cloud_controller.policies import Kum2022Policy
from cloud_controller.web import FleetServer
from mqtt_bus import BrokerSettings
from mqtt_bus.local_broker import LocalBroker
from schemas import AgentEvent, AgentStatus, DesiredState, ServingState, StreamState, Telemetry, decode
from tests.headless_browser import HeadlessChromium, chromium_path
from tests.mqtt_helpers import eventually, observing
from tests.test_kum2022 import telemetry
from tests.test_web import get

SERVABLE = [1, 2, 4, 8]


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def status(agent: str, batch: int = 1, state: str = "online") -> AgentStatus:
    """An agent's status; offline is its last will, which says nothing else."""
    if state == "offline":
        return AgentStatus(agent_id=agent, state="offline")
    serving = ServingState(model="nanodet-m", version="1", batch_size=batch, backend="onnxruntime",
                           model_type="nanodet", servable_batch_sizes=SERVABLE)
    return AgentStatus(agent_id=agent, state="online", serving=serving)


class SimulatedAgent:
    """Telemetry as an agent at batch n would send it (its delay grows with n), applying each order the
    controller gives on its next window and reporting it, as the reconciler does."""

    def __init__(self, controller: Controller, agent_id: str) -> None:
        self.c = controller
        self.agent_id = agent_id
        self.batch = 1
        self.generation = 0
        self.seq = 0
        self.orders: list[DesiredState] = []
        controller.desired_listeners.append(self._ordered)
        controller.on_status(agent_id, status(agent_id))

    def _ordered(self, view: object, desired: DesiredState) -> None:
        if desired.agent_id == self.agent_id:
            self.orders.append(desired)

    def window(self) -> Telemetry:
        self.seq += 1
        wobble = (self.seq * 7919 % 13) / 13  # deterministic noise
        t = telemetry(self.batch, 25 + 22 * self.batch + 6 * wobble, fps=10.0, memory_ratio=0.2 + 0.05 * self.batch)
        streams = [StreamState(stream_id=f"{self.agent_id}-{i}", state="admitted", fps=5.0, deadline_ms=1000,
                               frames_in=self.seq * 5, frames_out=self.seq * 5, dropped=0, deadline_misses=0)
                   for i in range(2)]
        resources = t.resources.model_copy(update={"gpu_util_pct": min(95.0, 20 + 9 * self.batch + 5 * wobble)})
        return t.model_copy(update={"agent_id": self.agent_id, "seq": self.seq, "applied_generation": self.generation,
                                    "fps_in": 10 + wobble, "fps_out": 9.6 + wobble, "streams": streams,
                                    "resources": resources})

    async def step(self) -> None:
        """Apply what was ordered since the last window, then send one."""
        while self.orders:
            d = self.orders.pop(0)
            self.generation = d.generation
            if d.batch_size is not None:
                self.batch = d.batch_size
            self.c.on_event(self.agent_id, AgentEvent(agent_id=self.agent_id, kind="desired_applied",
                                                      generation=d.generation, detail=f"batch {self.batch}"))
            self.c.on_status(self.agent_id, status(self.agent_id, self.batch).model_copy(
                update={"applied_generation": d.generation}))
        await self.c.on_telemetry(self.agent_id, self.window())


def controller(broker: BrokerSettings | None = None, prefix: str = "edgebatch") -> Controller:
    return Controller(broker or BrokerSettings(port=9), Kum2022Policy(), prefix=prefix, controller_id="ctl-page")


async def backfilled_fleet(seconds: int = 150) -> tuple[Controller, FleetHistory, SimulatedAgent]:
    """cam1 ran for ``seconds`` (a window a second, ending now) through the policy's growth; cam2 sent a
    few windows and went offline."""
    c = controller()
    clock = FakeClock(time.time() - seconds)
    history = FleetHistory(clock=clock).attach(c)
    cam1 = SimulatedAgent(c, "cam1")
    cam2 = SimulatedAgent(c, "cam2")
    for i in range(seconds):
        clock.t += 1
        if i % 12 == 0:  # the policy decides on settled windows; hold between so the plot shows plateaus
            await cam1.step()
        else:
            await c.on_telemetry("cam1", cam1.window().model_copy(update={"applied_generation": cam1.generation}))
        if i < 20:
            await cam2.step()
    c.on_status("cam2", status("cam2", state="offline"))
    history.clock = time.time
    return c, history, cam1


@contextlib.asynccontextmanager
async def serving(c: Controller, history: FleetHistory | None = None, token: str | None = None,
                  graceful_shutdown_s: int = 5) -> AsyncIterator[FleetServer]:
    server = FleetServer(c, port=0, token=token, history=history)
    server.graceful_shutdown_s = graceful_shutdown_s
    await server.start()
    try:
        yield server
    finally:
        await server.close()


# --- history ---------------------------------------------------------------------------------


async def test_history_fills_from_telemetry_orders_and_outcomes() -> None:
    c, history, cam1 = await backfilled_fleet(60)
    h = history.agents["cam1"]
    assert len(h.points) == 60 and h.points_added == 60
    ts, batch, fps_in, fps_out, e2e, gpu, memory = h.points[-1]
    assert batch == 8 and e2e is not None and gpu is not None and 0 < memory < 1
    kinds = [m.kind for m in h.markers]
    assert kinds.count("decision") == 3 and kinds.count("applied") == 3, kinds  # 1 -> 2 -> 4 -> 8, each applied
    assert [m.batch_size for m in h.markers if m.kind == "decision"] == [2, 4, 8]
    assert h.markers[0].text.startswith("gen 1: kum2022: ")
    assert len(history.agents["cam2"].points) == 20
    # an expired view takes its history along
    c.view_ttl_s = 0
    assert c.expire_views(now=time.monotonic() + 1) == 1  # cam2: offline and silent
    assert "cam2" not in history.agents and "cam1" in history.agents


async def test_history_is_bounded_per_agent_and_overall() -> None:
    c = controller()
    clock = FakeClock(1000.0)
    history = FleetHistory(window_s=30, max_agents=3, max_markers=5, clock=clock).attach(c)
    for i in range(5):
        c.on_status(f"a{i}", status(f"a{i}"))
    for _ in range(100):
        clock.t += 0.5  # twice a second: the ring holds 30 points, 15 s of them
        for i in range(5):
            await c.on_telemetry(f"a{i}", telemetry(1, 30).model_copy(update={"agent_id": f"a{i}"}))
    assert set(history.agents) == {"a0", "a1", "a2"} and history.not_recorded == 200
    h = history.agents["a0"]
    assert len(h.points) == 30 and h.points_added == 100 and h.points[0][0] == clock.t - 14.5
    assert [p[0] for p in h.points_after(97)] == [clock.t - 1, clock.t - 0.5, clock.t]
    assert len(h.points_after(0)) == 30  # the ring holds what it holds
    for g in range(1, 9):
        c.on_event("a0", AgentEvent(agent_id="a0", kind="desired_refused", generation=g, refusal="memory"))
    assert len(h.markers) == 5 and h.markers[-1].text == "gen 8 refused (memory)"
    clock.t += 31  # a window much later: older points and markers are trimmed by age
    await c.on_telemetry("a0", telemetry(1, 30).model_copy(update={"agent_id": "a0"}))
    assert len(h.points) == 1 and not h.markers


# --- the stream ------------------------------------------------------------------------------


class EventReader:
    """A raw HTTP client of a text/event-stream: (event, data) one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = ""

    @classmethod
    async def open(cls, port: int, headers: dict[str, str] | None = None) -> tuple[EventReader, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"GET /api/fleet/stream HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        await writer.drain()
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
        return cls(reader, writer), head

    async def _line(self) -> str:
        # the body is chunked: a size line, the chunk, CRLF; events are split across chunks as they come
        while "\n\n" not in self.buffer:
            size = int((await self.reader.readline()).strip() or b"0", 16)
            if size == 0:
                raise EOFError("the stream ended")
            self.buffer += (await self.reader.readexactly(size + 2))[:-2].decode()
        event, _, self.buffer = self.buffer.partition("\n\n")
        return event

    async def next(self, timeout_s: float = 10.0) -> tuple[str, dict[str, object]]:
        raw = await asyncio.wait_for(self._line(), timeout_s)
        fields = dict(line.split(": ", 1) for line in raw.splitlines())
        return fields["event"], json.loads(fields["data"])

    def close(self) -> None:
        self.writer.close()


async def test_the_stream_sends_a_snapshot_then_what_is_new_and_ends_with_the_client() -> None:
    c, history, cam1 = await backfilled_fleet(30)
    async with serving(c, history, graceful_shutdown_s=600) as server:
        live = server.live
        events, head = await EventReader.open(server.port)
        assert head.startswith("HTTP/1.1 200") and "text/event-stream" in head
        kind, snapshot = await events.next()
        assert kind == "snapshot" and snapshot["columns"][:2] == ["ts", "batch"]
        agents = snapshot["agents"]
        assert isinstance(agents, dict) and set(agents) == {"cam1", "cam2"}
        assert len(agents["cam1"]["points"]) == 30 and agents["cam2"]["state"]["online"] is False
        assert agents["cam1"]["state"]["servable"] == SERVABLE
        assert agents["cam1"]["state"]["streams"][0] == {"stream_id": "cam1-0", "state": "admitted", "reason": "",
                                                         "connection": None, "reconnects": 0, "last_error": ""}
        _, body = await get(server.port, "/api/fleet/history")
        assert json.loads(body)["agents"].keys() == agents.keys()

        await c.on_telemetry("cam1", cam1.window())  # one window (its order for batch 8 still pending)
        c.on_status("cam2", status("cam2"))  # back online
        updates = []
        while not any(u["agents"] for u in updates):
            kind, update = await events.next()
            assert kind == "update"
            updates.append(update)
        news = {k: v for u in updates for k, v in u["agents"].items()}  # type: ignore[union-attr]
        assert len(news["cam1"]["points"]) == 1 and "state" not in news["cam1"]
        assert news["cam2"]["state"]["online"] is True and "points" not in news["cam2"]
        kind, quiet = await events.next()  # nothing new: a heartbeat with the time and the fleet only
        assert kind == "update" and quiet["agents"] == {} and quiet["gone"] == []

        c.view_ttl_s = 0
        c.on_status("cam2", status("cam2", state="offline"))
        c.expire_views(now=time.monotonic() + 1)
        while True:
            _, update = await events.next()
            if update["gone"]:
                break
        assert update["gone"] == ["cam2"]

        assert len(live.streams) == 1
        events.close()  # the browser goes away: its stream ends, nothing is left running
        await eventually(lambda: not live.streams, 5, "the stream to end after the disconnect")
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "fleet-stream.listen"]

        kept, _ = await EventReader.open(server.port)
        await kept.next()
        closing = asyncio.create_task(server.close())  # (serving's own close then finds it closed)
        # With a grace of 10 minutes, the close can only end within the test's patience if the server
        # ends the open stream itself instead of waiting for it.
        await asyncio.wait_for(closing, 120)
    assert not live.streams
    kept.close()


async def test_streams_are_bounded() -> None:
    c = controller()
    async with serving(c) as server:
        server.live.max_streams = 2
        first, _ = await EventReader.open(server.port)
        second, _ = await EventReader.open(server.port)
        status_line, body = await get(server.port, "/api/fleet/stream")
        assert status_line.endswith("503 Service Unavailable") and "live streams are open" in json.loads(body)["error"]
        first.close()
        second.close()


# --- operator orders -------------------------------------------------------------------------


async def post(port: int, path: str, order: object, token: str | None = "s3cret",
               content_type: str = "application/json") -> tuple[int, dict[str, object]]:
    body = json.dumps(order).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    raw = (await reader.read()).decode()
    writer.close()
    head, _, payload = raw.partition("\r\n\r\n")
    code = int(head.split()[1])
    try:
        return code, json.loads(payload)
    except ValueError:
        return code, {"text": payload}


async def test_pin_and_release_are_published_and_hold_the_policy(broker: LocalBroker, prefix: str) -> None:
    c = controller(BrokerSettings.from_url(broker.url), prefix=prefix)
    runner = asyncio.create_task(c.run())
    try:
        await c.bus.wait_connected(10)
        cam1 = SimulatedAgent(c, "cam1")
        await cam1.step()  # batch 1 at 47 ms of a 100 ms budget: the policy grows it to 2 (gen 1)
        assert [d.batch_size for d in cam1.orders] == [2]
        topic = f"{prefix}/agents/cam1/desired"
        async with observing(broker.url, topic) as obs, serving(c, token="s3cret") as server:
            code, answer = await post(server.port, "/api/agents/cam1/pin", {"batch_size": 4, "reason": "night shift"})
            assert code == 200 and answer["pinned"] is True, answer
            await eventually(lambda: any(decode(DesiredState, p).generation == 2 for p in obs.on(topic)), 10,
                             "the pin on the wire")
            pinned = decode(DesiredState, obs.on(topic)[-1])
            assert (pinned.generation, pinned.batch_size, pinned.issued_by) == (2, 4, "ctl-page")
            assert pinned.reason == "operator: pinned at batch 4: night shift"
            assert c.pins["cam1"].batch_size == 4

            for _ in range(3):  # applies gens 1 and 2; at 4 the policy would grow to 8: pinned, it decides nothing
                await cam1.step()
            assert cam1.batch == 4 and c.counters.decisions == 1 and c.counters.held_pinned >= 2
            _, body = await get(server.port, "/api/fleet/history", headers={"Authorization": "Bearer s3cret"})
            snap = json.loads(body)
            assert snap["fleet"]["writable"] is True
            assert snap["agents"]["cam1"]["state"]["pinned"]["batch_size"] == 4
            kinds = [m["kind"] for m in snap["agents"]["cam1"]["markers"]]
            assert kinds == ["operator", "applied", "applied"], kinds  # the history began with the server

            code, answer = await post(server.port, "/api/agents/cam1/release", {"reason": "day again"})
            assert code == 200 and answer["pinned"] is False, answer
            await eventually(lambda: any(decode(DesiredState, p).generation == 3 for p in obs.on(topic)), 10,
                             "the release on the wire")
            released = decode(DesiredState, obs.on(topic)[-1])
            assert (released.generation, released.batch_size) == (3, None)  # keeps the size: the policy goes on
            assert released.reason == "operator: released to the policy (kum2022): day again"
            assert "cam1" not in c.pins
            await cam1.step()  # applies gen 3 (the size stays), settled at 4: the policy decides again
            assert [d.batch_size for d in cam1.orders] == [8] and c.counters.decisions == 2
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_orders_are_refused_clearly() -> None:
    c = controller()
    SimulatedAgent(c, "cam1")
    await c.on_telemetry("ghost", telemetry(1, 30).model_copy(update={"agent_id": "ghost"}))  # never announced
    async with serving(c) as server:  # no token: read-only
        code, answer = await post(server.port, "/api/agents/cam1/pin", {"batch_size": 2}, token=None)
        assert (code, answer) == (403, {"error": "read-only: start the controller with --http-token-file"})
        status_line, body = await get(server.port, "/api/fleet/history")
        assert json.loads(body)["fleet"]["writable"] is False
    async with serving(c, token="s3cret") as server:
        p = server.port
        assert (await post(p, "/api/agents/cam1/pin", {"batch_size": 2}, token="wrong"))[0] == 401
        assert (await post(p, "/api/agents/cam1/pin", {"batch_size": 2}, token=None))[0] == 401
        code, answer = await post(p, "/api/agents/nobody/pin", {"batch_size": 2})
        assert (code, answer) == (404, {"error": "no agent 'nobody' here"})
        code, answer = await post(p, "/api/agents/ghost/pin", {"batch_size": 2})
        assert code == 404 and "never announced itself" in str(answer["error"])
        code, answer = await post(p, "/api/agents/cam1/pin", {"batch_size": 16})
        assert (code, answer) == (400, {"error": "cam1 cannot serve batch 16: it serves 1, 2, 4, 8"})
        code, answer = await post(p, "/api/agents/cam1/pin", {"batch_size": 0})
        assert (code, answer) == (400, {"error": "batch size 0 is out of bounds (1 to 1024)"})
        for bad in ({"batch_size": "4"}, {"batch_size": True}, {}, [4]):
            code, answer = await post(p, "/api/agents/cam1/pin", bad)
            assert code == 400 and "error" in answer, bad
        code, answer = await post(p, "/api/agents/cam1/pin", {"batch_size": 2, "reason": "x" * 501})
        assert (code, answer) == (400, {"error": "the reason is 501 characters; at most 500"})
        code, answer = await post(p, "/api/agents/cam1/pin", {"batch_size": 2}, content_type="text/plain")
        assert code == 415, "a cross-site form cannot send JSON: cached browser credentials forge no order"
        code, answer = await post(p, "/api/agents/cam1/release", {})
        assert (code, answer) == (409, {"error": "cam1 is not pinned on ctl-page"})
        assert (await get(p, "/api/agents/cam1/pin", headers={"Authorization": "Bearer s3cret"}))[0].endswith(
            "405 Method Not Allowed")
    assert c.counters.operator_orders == 0 and not c.pins


async def test_an_agent_another_replica_decides_for_is_not_ordered_here() -> None:
    c = Controller(BrokerSettings(port=9), Kum2022Policy(), controller_id="ctl-page", ownership="hrw")
    c.on_status("cam1", status("cam1"))  # heard of, but not owned: the membership is not stable yet
    async with serving(c, token="s3cret") as server:
        code, answer = await post(server.port, "/api/agents/cam1/pin", {"batch_size": 2})
        assert code == 409 and "not ctl-page: give the order there" in str(answer["error"])


# --- the page in a real browser --------------------------------------------------------------


async def test_the_page_plots_live_and_pins_in_a_headless_chromium(tmp_path: Path) -> None:
    """Debian's chromium loads the page with HTTP Basic credentials (the token as the password), the
    stream follows with the browser's cached credentials, the plots fill and grow without a reload,
    an operator pins cam1 from the page, and a screenshot is taken (kept at /tmp/edgebatch-fleet.png)."""
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.skip("chromium is not installed here (scripts/setup.sh installs it where apt can)")
        pytest.fail("chromium is not installed: run scripts/setup.sh (apt-get install chromium)")
    c, history, cam1 = await backfilled_fleet(280)
    async with serving(c, history, token="s3cret") as server:
        url = f"http://operator:s3cret@127.0.0.1:{server.port}/"
        card = "document.querySelector('[data-agent=cam1]')"
        page: dict[str, Any] = {}

        def browse() -> None:
            with HeadlessChromium(tmp_path / "profile") as b:
                b.navigate(url)
                b.wait_for("document.body && Number(document.body.dataset.updates) >= 2", what="the stream")
                b.evaluate("window.notReloaded = true")
                page["points_before"] = int(b.evaluate(f"{card}.dataset.points"))
                b.wait_for(f"Number({card}.dataset.points) >= {page['points_before'] + 2}", what="new points")
                # an operator pins cam1 at 4 from the page (a JSON POST with the browser's credentials)
                b.evaluate(f"{card}.querySelector('.pin select').value = '4'")
                b.evaluate(f"{card}.querySelector('.pin input').value = 'from the browser'")
                b.evaluate(f"{card}.querySelector('.pin button').click()")
                b.wait_for(f"!{card}.querySelector('.badge.pinned').hidden", what="the pinned badge")
                b.wait_for(f"{card}.querySelector('.markers').textContent.includes('operator: pinned at batch 4')",
                           what="the operator's marker")
                page["still_same_page"] = b.evaluate("window.notReloaded === true")
                page["points_after"] = int(b.evaluate(f"{card}.dataset.points"))
                page["html"] = b.evaluate("document.documentElement.outerHTML")
                page["errors"] = b.page_errors()
                b.screenshot(tmp_path / "fleet.png")

        async def agent_windows() -> None:  # cam1 keeps sending while the browser looks
            while True:
                await asyncio.sleep(0.5)
                await cam1.step()

        feeder = asyncio.create_task(agent_windows())
        try:
            await asyncio.to_thread(browse)
        finally:
            feeder.cancel()
    assert page["points_before"] >= 250, "the last 5 minutes of the backfilled history are drawn"
    assert page["points_after"] > page["points_before"] and page["still_same_page"], "live, without reloads"
    html = page["html"]
    assert 'data-agent="cam2"' in html and 'class="card offline"' in html and "offline (its last will)" in html
    assert "operator orders on" in html and "pinned at 4" in html and "nanodet-m 1 (nanodet) on onnxruntime" in html
    assert c.pins["cam1"].reason == "from the browser"
    assert not page["errors"], page["errors"]
    shot = tmp_path / "fleet.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    with contextlib.suppress(OSError):
        shutil.copy(shot, "/tmp/edgebatch-fleet.png")
