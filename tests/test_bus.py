"""The MQTT bus's receive path on a real mosquitto: bulk reads through its buffer lose, split and
reorder nothing, whatever the message sizes and however they straddle the buffer's end."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from mqtt_bus import BrokerSettings, IncomingMessage, MqttBus, Subscription
from tests.mqtt_helpers import eventually


@pytest.mark.parametrize("bulk_reads", [True, False])
async def test_a_burst_of_mixed_sizes_arrives_whole_and_in_order(broker, prefix, bulk_reads: bool) -> None:
    rng = random.Random(7)
    sizes = [rng.choice([0, 1, 127, 128, 16_383, 16_384, 1500, 200_000, 700_000]) for _ in range(400)]
    payloads = [bytes([i % 251]) * n + i.to_bytes(4, "big") for i, n in enumerate(sizes)]
    heard: list[IncomingMessage] = []

    async def hear(message: IncomingMessage) -> None:
        heard.append(message)

    settings = BrokerSettings.from_url(broker.url)
    receiver = MqttBus(settings, f"rx-{prefix}", [Subscription(f"{prefix}/burst/#", qos=1)], bulk_reads=bulk_reads)
    sender = MqttBus(settings, f"tx-{prefix}")
    tasks = [asyncio.create_task(receiver.run(hear)), asyncio.create_task(sender.run(hear))]
    try:
        await receiver.wait_connected(10)
        await sender.wait_connected(10)
        await asyncio.gather(*(sender.publish(f"{prefix}/burst/{i % 7}", p, qos=1) for i, p in enumerate(payloads)))
        await eventually(lambda: len(heard) >= len(payloads), 60, "the whole burst")
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert [m.payload for m in heard] == payloads
    assert receiver.counters.handler_errors == 0 and receiver.counters.connects == 1


async def test_a_hung_broker_is_asked_and_dropped_before_the_keepalive_would(own_broker, prefix, caplog) -> None:
    """SIGSTOP: the socket stays open and nothing answers. The bus's own probe must notice (the MQTT
    keepalive of 10 s would too, but only after 10-20 s) and reconnect once the broker resumes."""
    import signal

    # Asked after 0.5 s of silence, 5 s to answer: a loaded machine's broker answers well within that, and
    # the hang is still noticed (~5.5 s) long before the keepalive's 10-20 s.
    bus = MqttBus(BrokerSettings.from_url(own_broker.url), f"hung-{prefix}", [Subscription(f"{prefix}/x", 1)],
                  silence_probe_s=0.5, probe_answer_s=5.0)
    task = asyncio.create_task(bus.run(lambda m: asyncio.sleep(0)))
    process = own_broker.process
    assert process is not None
    try:
        await bus.wait_connected(10)
        await asyncio.sleep(3 * bus.silence_probe_s + 1.0)  # idle, asked and answered: it must not drop it
        assert bus.counters.disconnects == 0, "an idle broker that answers the probe stays connected"
        with caplog.at_level("WARNING", logger="mqtt_bus.bus"):
            process.send_signal(signal.SIGSTOP)
            try:
                await eventually(lambda: not bus.connected.is_set(), 30, "the hung broker noticed")
            finally:
                process.send_signal(signal.SIGCONT)
        assert any("not answering a ping" in r.getMessage() for r in caplog.records), \
            "noticed by the probe, not by the MQTT keepalive"
        await eventually(bus.connected.is_set, 30, "connected again after the broker resumed")
        assert bus.counters.connects == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_publish_that_swallows_a_cancellation_still_ends_the_task() -> None:
    """On Python 3.11 aiomqtt's publish (``wait_for``) can return normally when a cancellation races its
    completion; a loop that publishes must still end when cancelled (a hung test clean-up, a TaskGroup that
    never finishes, were the symptoms). The race is reproduced by a publish that swallows it."""

    class SwallowingClient:
        async def publish(self, *args: object, **kwargs: object) -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(5)

    bus = MqttBus(BrokerSettings(port=9), "swallow")
    bus._client = SwallowingClient()  # type: ignore[assignment]
    bus.connected.set()

    async def publishing_loop() -> None:
        while True:
            await bus.publish("t", b"x")

    task = asyncio.create_task(publishing_loop())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
