"""compose/mosquitto/acl on a real mosquitto: an agent touches only its own topics."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from mqtt_bus import BrokerSettings, MqttBus
from mqtt_bus.local_broker import LocalBroker
from tests.compose_broker import ComposeBroker
from tests.conftest import ROOT
from tests.mqtt_helpers import Peer as _Peer
from tests.mqtt_helpers import eventually

USERS = {"controller": "ctl-secret", "registry": "reg-secret", "cam1": "cam1-secret", "cam2": "cam2-secret"}


@pytest.fixture
def secured_broker(tmp_path: Path):
    passwd = tmp_path / "passwd"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run([tool, *(["-c"] if i == 0 else []), "-b", str(passwd), user, password], check=True)
    passwd.chmod(0o600)
    acl = ROOT / "compose" / "mosquitto" / "acl"
    broker = LocalBroker(tmp_path, persistence=False,
                         auth_lines=f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}").start()
    yield broker
    broker.close()


def Peer(broker: LocalBroker | SimpleNamespace, user: str | None, subscribe: Sequence[str] = ()) -> _Peer:
    """A client of ``broker`` logged in as ``user`` (password from USERS), on the plaintext listener."""
    settings = BrokerSettings(broker.host, broker.port, username=user, password=USERS.get(user or ""))
    return _Peer(settings, f"peer-{user}", subscribe)


async def test_agents_are_confined_to_their_own_topics(secured_broker) -> None:
    async with Peer(secured_broker, "controller", ["$share/ctl/edgebatch/agents/+/telemetry",
                                                   "edgebatch/agents/+/desired",
                                                   "edgebatch/models/+"]) as ctl, \
            Peer(secured_broker, "cam1", ["edgebatch/agents/cam1/desired", "edgebatch/agents/cam2/desired"]) as cam1, \
            Peer(secured_broker, "registry") as reg:
        for peer in (ctl, cam1, reg):
            await peer.bus.wait_connected(10)
        await cam1.bus.publish("edgebatch/agents/cam1/telemetry", b"own", qos=1)
        await cam1.bus.publish("edgebatch/agents/cam2/telemetry", b"forged", qos=1)
        await cam1.bus.publish("edgebatch/agents/cam1/desired", b"self-ordered", qos=1)
        await cam1.bus.publish("edgebatch/models/nanodet", b"fake model", qos=1)
        await ctl.bus.publish("edgebatch/agents/cam1/desired", b"order1", qos=1)
        await ctl.bus.publish("edgebatch/agents/cam2/desired", b"order2", qos=1)
        await reg.bus.publish("edgebatch/models/nanodet", b"real model", qos=1)
        await eventually(lambda: "edgebatch/models/nanodet" in ctl.topics() and len(cam1.heard) >= 1, 10, "delivery")
        await asyncio.sleep(0.5)
    payloads = {m.payload for m in ctl.heard}
    assert b"own" in payloads and b"real model" in payloads and b"order1" in payloads
    assert b"forged" not in payloads, "an agent published as another agent"
    assert b"self-ordered" not in payloads, "an agent wrote desired state"
    assert b"fake model" not in payloads, "an agent announced a model"
    assert [m.payload for m in cam1.heard] == [b"order1"], "an agent read another agent's desired state"


async def test_only_controllers_write_profiles_and_heartbeats(secured_broker) -> None:
    async with Peer(secured_broker, "controller", ["edgebatch/agents/+/profile", "edgebatch/controllers/+/alive"]) \
            as ctl, Peer(secured_broker, "cam1", ["edgebatch/agents/cam1/profile", "edgebatch/controllers/#"]) as cam1:
        for peer in (ctl, cam1):
            await peer.bus.wait_connected(10)
        await cam1.bus.publish("edgebatch/agents/cam1/profile", b"self-profiled", qos=1)
        await cam1.bus.publish("edgebatch/controllers/ctl-a/alive", b"fake replica", qos=1)
        await ctl.bus.publish("edgebatch/agents/cam1/profile", b"learned", qos=1)
        await ctl.bus.publish("edgebatch/controllers/ctl-a/alive", b"alive", qos=1)
        await eventually(lambda: {b"learned", b"alive"} <= {m.payload for m in ctl.heard}, 10, "controller writes")
        await asyncio.sleep(0.5)
    assert not {b"self-profiled", b"fake replica"} & {m.payload for m in ctl.heard}, "an agent posed as a controller"
    assert not cam1.heard, "an agent read controller state"


async def test_anonymous_and_wrong_password_are_refused(secured_broker) -> None:
    for user, password in ((None, None), ("cam1", "wrong")):
        settings = BrokerSettings(secured_broker.host, secured_broker.port, username=user, password=password)
        bus = MqttBus(settings, f"intruder-{user}", backoff_initial_s=0.1, backoff_max_s=0.2)
        task = asyncio.create_task(bus.run(lambda m: asyncio.sleep(0)))
        await asyncio.sleep(1.0)
        assert bus.counters.connects == 0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_retained_desired_state_survives_a_kill_9_of_the_compose_broker() -> None:
    broker = ComposeBroker()
    try:
        assert "autosave_interval 2\n" in broker.config.read_text()
        broker.start()
        async with _Peer(broker.internal("controller"), "ctl-a") as ctl:
            await ctl.bus.wait_connected(10)
            assert await ctl.bus.publish("edgebatch/agents/cam1/desired", b"generation 7", qos=1, retain=True)
        # The compose config saves every 2 s, checked on whole seconds: wait for the save that holds the
        # order (a deadline, not a sleep that could race it); without a short autosave it never comes.
        saved = broker.dir / "data" / "mosquitto.db"
        await eventually(lambda: saved.exists() and b"edgebatch/agents/cam1/desired" in saved.read_bytes(), 10,
                         "the compose broker's autosave of the retained order")
        broker.kill()
        broker.start()
        async with _Peer(broker.tls("cam1"), "cam1", ["edgebatch/agents/cam1/desired"]) as cam1:
            await eventually(lambda: cam1.heard, 10, "retained desired state after the restart")
        assert [m.payload for m in cam1.heard] == [b"generation 7"]
    finally:
        broker.close()
