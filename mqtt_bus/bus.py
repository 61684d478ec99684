"""A long-lived MQTT v5 connection that reconnects with backoff and jitter.

``run()`` keeps a connection up until cancelled: it subscribes on every (re)connect, calls
``on_connect`` (to republish retained state), and hands each message to the handler. Publishing
while disconnected returns False and is counted; it never blocks the caller's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_bus.secrets import read_secret, redact

log = logging.getLogger(__name__)


class _InFlightPublishes(logging.Filter):
    """aiomqtt warns whenever more than ten publishes are in flight. The controller publishes orders and
    profiles beside its message loop on purpose, so many in flight is normal here, not a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.getMessage()


logging.getLogger("mqtt").addFilter(_InFlightPublishes())  # aiomqtt's logger


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    client_cert: str | None = None  # PEM certificate (and key) to present to an mqtts:// broker that asks
    client_key: str | None = None
    keepalive_s: int = 10
    timeout_s: float = 5.0

    @classmethod
    def build(cls, url: str, *, ca_file: str | None = None, password_file: str | None = None,
              client_cert: str | None = None, client_key: str | None = None) -> BrokerSettings:
        """Settings from a URL and the files that keep secrets off the command line: the password is
        the first line of ``password_file`` (the URL then names only the user). Every mistake is a
        ValueError of one line that never shows a password."""
        settings = cls.from_url(url, ca_file)
        if password_file is not None:
            if settings.password is not None:
                raise ValueError(f"broker URL {redact(url)} has a password and a password file is given too: "
                                 "keep only the file")
            if settings.username is None:
                raise ValueError(f"a broker password file needs the user in the URL (mqtt://USER@host), "
                                 f"got {redact(url)}")
            settings = replace(settings, password=read_secret(password_file, "broker password file"))
        if (client_cert is None) != (client_key is None):
            raise ValueError("a client certificate and its key go together (--client-cert and --client-key)")
        if not settings.tls and (ca_file or client_cert):
            raise ValueError(f"a CA file or client certificate needs an mqtts:// broker URL, got {redact(url)}")
        settings = replace(settings, client_cert=client_cert, client_key=client_key)
        try:
            settings.tls_context()  # a bad CA or certificate is an error now, not at every reconnect
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"broker TLS files: {exc}") from None
        return settings

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert is not None:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context

    @classmethod
    def from_url(cls, url: str, ca_file: str | None = None) -> BrokerSettings:
        """``mqtt://[user:pass@]host[:port]`` or ``mqtts://...`` (TLS, default port 8883)."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL {redact(url)}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {redact(url)} has no host")
        try:
            parts.hostname.encode("idna")  # what the socket layer will do; a bad name fails here, not mid-run
        except UnicodeError as exc:
            raise ValueError(f"broker URL {redact(url)}: host is not a valid name ({exc})") from None
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            given = parts.port
        except ValueError as exc:  # "Port out of range 0-65535", "Port could not be cast to integer ..."
            # With a user in the URL, a '/', '#' or '?' in the password moves part of it into what urlsplit
            # takes for the port, and its message would repeat it.
            reason = "the port is not a number in 1-65535 (or a password holds '/', '#' or '?': "\
                "use a password file)" if "@" in url else str(exc)
            raise ValueError(f"broker URL {redact(url)}: {reason}") from None
        if given == 0:
            raise ValueError(f"broker URL {redact(url)}: port 0 is not a port")
        port = given or (8883 if tls else 1883)
        return cls(
            host=parts.hostname,
            port=port,
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
    # Reconnect attempts start at 0.1 s and back off to at most 1 s (times a jitter of 0.5-1.5), so a
    # client is back within about 1.5 s of a broker that returns. A refused connection costs the broker
    # next to nothing, so a thousand agents retrying once a second while it is down is affordable.
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 1.0
    # A broker that is there but does not answer (hung, or a dead NAT path) is only noticed by the
    # MQTT keepalive after one to two keepalives (10-20 s). The bus asks it (PINGREQ) once it has been
    # silent for ``silence_probe_s`` and drops the connection when that goes unanswered for
    # ``probe_answer_s``: a hung broker is noticed in about 4-4.5 s. A busy connection is never
    # probed: any byte from the broker counts as an answer. (2 s for an answer leaves room for a
    # broker busy saving its retained state, or a slow cellular link.)
    silence_probe_s: float = 2.0
    probe_answer_s: float = 2.0
    # Messages received but not yet handled; beyond it aiomqtt drops (QoS 0 telemetry under a flood).
    # A busy controller raises it: each held message costs about its payload (~1.5 KB of telemetry).
    max_queued_incoming: int = 10_000
    # Read every packet the socket holds per wake-up, through a 256 KiB buffer (see _read_in_bulk).
    bulk_reads: bool = True
    counters: BusCounters = field(default_factory=BusCounters)

    def __post_init__(self) -> None:
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()

    def _make_client(self) -> tuple[aiomqtt.Client, asyncio.Queue[aiomqtt.Message]]:
        """A client, and its incoming queue: aiomqtt builds it from ``queue_type``, and holding it lets
        the receive loop take queued messages directly (aiomqtt's iterator makes a task and an
        ``asyncio.wait`` per message, three event-loop turns each, even when thousands are queued)."""
        queues: list[asyncio.Queue[aiomqtt.Message]] = []

        class IncomingQueue(asyncio.Queue):  # type: ignore[type-arg]
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                queues.append(self)

        s = self.settings
        tls_context = s.tls_context()
        will = None
        if self.will is not None:
            w = self.will
            will = aiomqtt.Will(w.topic, w.payload, qos=w.qos, retain=w.retain)
        client = aiomqtt.Client(
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
            queue_type=IncomingQueue,
        )
        return client, queues[0]

    async def run(self, handler: MessageHandler) -> None:
        """Stay connected until cancelled, reconnecting with exponential backoff and jitter."""
        delay = self.backoff_initial_s
        while True:
            try:
                client, queue = self._make_client()
                async with client:
                    self._client = client
                    if self.bulk_reads:
                        _read_in_bulk(client)
                    for sub in self.subscriptions:
                        await client.subscribe(sub.topic_filter, qos=sub.qos)
                    self.counters.connects += 1
                    delay = self.backoff_initial_s
                    self.connected.set()
                    log.info("%s connected to %s:%d", self.client_id, self.settings.host, self.settings.port)
                    if self.on_connect is not None:
                        try:
                            await self.on_connect()
                        except aiomqtt.MqttError:
                            raise
                        except Exception:  # a bug republishing state must not take the connection down
                            self.counters.handler_errors += 1
                            log.exception("%s: on_connect failed", self.client_id)
                    watchdog = asyncio.create_task(self._probe_silent_broker(client),
                                                   name=f"mqtt[{self.client_id}].liveness")
                    try:
                        await self._receive(client, queue, handler)
                    finally:
                        watchdog.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await watchdog
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

    async def _receive(self, client: aiomqtt.Client, queue: asyncio.Queue[aiomqtt.Message],
                       handler: MessageHandler) -> None:
        """Hand each message to the handler until the connection is lost (aiomqtt raises MqttError)."""
        messages = client.messages
        in_a_row = 0
        while True:
            if queue.qsize() and in_a_row < 256:
                message = queue.get_nowait()
                in_a_row += 1
            else:  # nothing queued, or time to let the rest of the loop run: wait (or see a disconnect)
                message = await anext(messages)
                in_a_row = 0
            self.counters.received += 1
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            try:
                await handler(IncomingMessage(message.topic.value, payload, bool(message.retain)))
            except Exception:  # a handler bug must not take the connection down
                self.counters.handler_errors += 1
                log.exception("handler failed on %s", message.topic.value)

    async def _probe_silent_broker(self, client: aiomqtt.Client) -> None:
        """Drop the connection when the broker stops answering (see ``silence_probe_s``).

        Uses paho's own keepalive machinery (the time of the last byte read, PINGREQ, and the
        keepalive's way of closing), ticking every 0.25 s instead of aiomqtt's once a second against
        the keepalive. If paho's internals are not as expected it leaves the MQTT keepalive alone in
        charge. A tick that comes late (this process's event loop was stalled, not the broker) gives
        no verdict: an answer may be sitting unread in the socket.
        """
        paho = getattr(client, "_client", None)
        needed = ("_last_bytes_received", "_ping_t", "_send_pingreq", "_sock_close", "_do_on_disconnect")
        if paho is None or not all(hasattr(paho, name) for name in needed):
            log.debug("paho internals not as expected: a hung broker is left to the MQTT keepalive")
            return
        tick = 0.25
        asked_at: float | None = None
        last_tick = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()  # paho's clock too
            stalled = now - last_tick > tick + 0.5
            last_tick = now
            if now - paho._last_bytes_received < self.silence_probe_s:
                asked_at = None
                continue
            if asked_at is None:
                if not paho._ping_t:  # paho's own keepalive ping may already be out
                    paho._send_pingreq()
                asked_at = now
            elif now - asked_at >= self.probe_answer_s and not stalled:
                log.warning("%s: broker silent for %.1f s and not answering a ping; reconnecting",
                            self.client_id, now - paho._last_bytes_received)
                paho._sock_close()
                paho._do_on_disconnect(packet_from_broker=False, v1_rc=MQTTErrorCode.MQTT_ERR_KEEPALIVE)
                return

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
            raise_if_cancelling()
            self.counters.publish_failed += 1
            log.debug("publish to %s failed: %s", topic, exc)
            return False
        raise_if_cancelling()
        self.counters.published += 1
        return True

    async def wait_connected(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self.connected.wait()


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that was swallowed: on Python 3.11, ``wait_for`` (inside aiomqtt's publish)
    can return normally when a cancellation races its completion. A loop that publishes would then run
    on after ``cancel()``, and whoever awaits it (a TaskGroup, a test's clean-up) waits for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _read_in_bulk(client: aiomqtt.Client) -> None:
    """Let paho read many packets per socket wake-up instead of one, from a buffer filled 256 KiB at a
    time instead of ~4 ``recv`` calls a packet.

    aiomqtt calls paho's ``loop_read()`` once each time the event loop says the socket is readable, and
    paho's ``loop_read`` reads one packet when nothing is in flight (QoS 0 telemetry): one event-loop
    turn and several system calls per message. Measured on the telemetry flood of
    bench/controller_throughput.py this raises what one process takes in by about a third. It uses
    paho internals (``_packet_read``, ``_sock_recv``), so it checks they are there and otherwise
    leaves the client as it is; a TLS socket keeps paho's own ``recv`` (its buffering is the SSL
    object's), but still reads many packets per wake-up.
    """
    paho = getattr(client, "_client", None)
    packet_read = getattr(paho, "_packet_read", None)
    rc_handle = getattr(paho, "_loop_rc_handle", None)
    if paho is None or packet_read is None or rc_handle is None or not hasattr(paho, "_sock_recv"):
        log.debug("paho internals not as expected: reading one packet per wake-up")
        return
    sock = getattr(paho, "_sock", None)
    buffered = isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket)
    data, pos = b"", 0  # what the last recv brought, and how much of it paho has taken

    def sock_recv(bufsize: int) -> bytes:
        nonlocal data, pos
        if pos >= len(data):
            current = paho._sock
            if current is None:
                raise ConnectionError("socket closed")
            data, pos = current.recv(262_144), 0  # BlockingIOError when empty: paho's "try again later"
            if not data:
                return b""  # closed by the broker: paho's connection-lost path
        chunk = data[pos : pos + bufsize]
        pos += len(chunk)
        return chunk

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        packets = 0
        while True:
            rc = packet_read()
            if rc > 0:
                return rc_handle(rc)  # type: ignore[no-any-return]
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            packets += 1
            if packets >= 256:  # back to the event loop now and then, so the messages get handled
                if pos < len(data):  # bytes left in our buffer: the socket will not wake us up for them
                    asyncio.get_running_loop().call_soon(loop_read)
                return MQTTErrorCode.MQTT_ERR_SUCCESS

    paho.loop_read = loop_read
    if buffered:
        paho._sock_recv = sock_recv


async def publish_once(settings: BrokerSettings, client_id: str, topic: str, payload: bytes, qos: int = 1,
                       retain: bool = False, timeout_s: float = 10.0) -> None:
    """Connect, publish one message, disconnect: for command-line tools."""
    try:
        async with aiomqtt.Client(settings.host, settings.port, username=settings.username,
                                  password=settings.password, identifier=client_id,
                                  protocol=aiomqtt.ProtocolVersion.V5, timeout=timeout_s,
                                  tls_context=settings.tls_context()) as client:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=timeout_s)
    except aiomqtt.MqttError as exc:
        raise ConnectionError(f"MQTT broker {settings.host}:{settings.port}: {exc}") from exc
