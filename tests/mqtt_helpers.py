"""A real MQTT peer for tests: records what it hears, publishes what a test says."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from mqtt_bus import BrokerSettings, IncomingMessage, MqttBus, Subscription


class Observer:
    def __init__(self, url: str, topic_filter: str) -> None:
        self.messages: list[IncomingMessage] = []
        self.bus = MqttBus(BrokerSettings.from_url(url), client_id=f"observer-{uuid.uuid4().hex[:8]}",
                           subscriptions=[Subscription(topic_filter, qos=1)])

    async def _record(self, message: IncomingMessage) -> None:
        self.messages.append(message)

    def on(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.messages if m.topic == topic]

    async def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None:
        assert await self.bus.publish(topic, payload, qos=qos, retain=retain), f"publish to {topic} failed"


@contextlib.asynccontextmanager
async def observing(url: str, topic_filter: str) -> AsyncIterator[Observer]:
    observer = Observer(url, topic_filter)
    task = asyncio.create_task(observer.bus.run(observer._record))
    try:
        await observer.bus.wait_connected(10)
        yield observer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.05)


class Peer:
    """A real client that records what it hears: ``async with Peer(settings, "cam1", [...]) as p``.
    ``bus.counters`` tell whether the broker ever dropped it (``disconnects``)."""

    def __init__(self, settings: BrokerSettings, client_id: str, subscribe: Sequence[str] = ()) -> None:
        self.heard: list[IncomingMessage] = []
        self.bus = MqttBus(settings, client_id, [Subscription(t, qos=1) for t in subscribe],
                           backoff_initial_s=0.1, backoff_max_s=0.5)
        self.task: asyncio.Task[None] | None = None

    async def _hear(self, message: IncomingMessage) -> None:
        self.heard.append(message)

    async def __aenter__(self) -> Peer:
        self.task = asyncio.create_task(self.bus.run(self._hear))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def topics(self) -> list[str]:
        return [m.topic for m in self.heard]

    def payloads(self) -> set[bytes]:
        return {m.payload for m in self.heard}
