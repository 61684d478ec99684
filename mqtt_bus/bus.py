"""A long-lived MQTT v5 connection that reconnects with backoff and jitter.

``run()`` keeps a connection up until cancelled: it subscribes on every (re)connect, calls
``on_connect`` (to republish retained state), and hands each message to the handler. Publishing
while disconnected returns False and is counted; it never blocks the caller's work.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    keepalive_s: int = 10
    timeout_s: float = 5.0

    @classmethod
    def from_url(cls, url: str, ca_file: str | None = None) -> BrokerSettings:
        """``mqtt://[user:pass@]host[:port]`` or ``mqtts://...`` (TLS, default port 8883)."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            ca_file=ca_file,
        )


@dataclass(frozen=True)
class Subscription:
    topic_filter: str
    qos: int = 0


@dataclass(frozen=True)
class WillMessage:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class IncomingMessage:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class BusCounters:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    publish_failed: int = 0
    received: int = 0
    handler_errors: int = 0


MessageHandler = Callable[[IncomingMessage], Awaitable[None]]


@dataclass
class MqttBus:
    settings: BrokerSettings
    client_id: str
    subscriptions: Sequence[Subscription] = ()
    will: WillMessage | None = None
    on_connect: Callable[[], Awaitable[None]] | None = None
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    # Messages received but not yet handled; beyond it aiomqtt drops (QoS 0 telemetry under a flood).
    # A busy controller raises it: each held message costs about its payload (~1.5 KB of telemetry).
    max_queued_incoming: int = 10_000
    counters: BusCounters = field(default_factory=BusCounters)

    def __post_init__(self) -> None:
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        tls_context = None
        if s.tls:
            tls_context = ssl.create_default_context(cafile=s.ca_file)
        will = None
        if self.will is not None:
            w = self.will
            will = aiomqtt.Will(w.topic, w.payload, qos=w.qos, retain=w.retain)
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=s.keepalive_s,
            timeout=s.timeout_s,
            tls_context=tls_context,
            max_queued_incoming_messages=self.max_queued_incoming,
        )

    async def run(self, handler: MessageHandler) -> None:
        """Stay connected until cancelled, reconnecting with exponential backoff and jitter."""
        delay = self.backoff_initial_s
        while True:
            try:
                async with self._make_client() as client:
                    self._client = client
                    for sub in self.subscriptions:
                        await client.subscribe(sub.topic_filter, qos=sub.qos)
                    self.counters.connects += 1
                    delay = self.backoff_initial_s
                    self.connected.set()
                    log.info("%s connected to %s:%d", self.client_id, self.settings.host, self.settings.port)
                    if self.on_connect is not None:
                        await self.on_connect()
                    async for message in client.messages:
                        self.counters.received += 1
                        payload = message.payload if isinstance(message.payload, bytes) else str(
                            message.payload).encode()
                        try:
                            await handler(IncomingMessage(message.topic.value, payload, bool(message.retain)))
                        except Exception:  # a handler bug must not take the connection down
                            self.counters.handler_errors += 1
                            log.exception("handler failed on %s", message.topic.value)
            except aiomqtt.MqttError as exc:
                log.warning("%s: broker connection lost or refused (%s); retrying in %.1f s",
                            self.client_id, exc, delay)
            finally:
                if self.connected.is_set():
                    self.counters.disconnects += 1
                self.connected.clear()
                self._client = None
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(self.backoff_max_s, delay * 2)

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                      expiry_s: int | None = None) -> bool:
        """Publish if connected; False (and counted) if not or if the broker does not answer in time."""
        client = self._client
        if client is None or not self.connected.is_set():
            self.counters.publish_failed += 1
            return False
        properties = None
        if expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = expiry_s
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, properties=properties,
                                 timeout=self.settings.timeout_s)
        except aiomqtt.MqttError as exc:
            self.counters.publish_failed += 1
            log.debug("publish to %s failed: %s", topic, exc)
            return False
        self.counters.published += 1
        return True

    async def wait_connected(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self.connected.wait()


async def publish_once(settings: BrokerSettings, client_id: str, topic: str, payload: bytes, qos: int = 1,
                       retain: bool = False, timeout_s: float = 10.0) -> None:
    """Connect, publish one message, disconnect: for command-line tools."""
    try:
        async with aiomqtt.Client(settings.host, settings.port, username=settings.username,
                                  password=settings.password, identifier=client_id,
                                  protocol=aiomqtt.ProtocolVersion.V5, timeout=timeout_s,
                                  tls_context=ssl.create_default_context(cafile=settings.ca_file)
                                  if settings.tls else None) as client:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=timeout_s)
    except aiomqtt.MqttError as exc:
        raise ConnectionError(f"MQTT broker {settings.host}:{settings.port}: {exc}") from exc
