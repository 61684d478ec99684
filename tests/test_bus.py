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
