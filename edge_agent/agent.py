"""The agent on MQTT: publishes status, telemetry and events; hands the retained desired state to its
reconciler (``edge_agent.control``), the one owner of what it serves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from edge_agent.control import Reconciler
from edge_agent.engines import available_backends
from edge_agent.frames import Frame
from edge_agent.pipeline import Pipeline
from edge_agent.probes import ResourceProbe
from edge_agent.settings import AgentSettings
from edge_agent.sinks import to_message
from edge_agent.stats import WindowStats
from edge_agent.streams import StreamRoster
from edge_agent.swap import EngineSwapper
from mqtt_bus import IncomingMessage, MqttBus, Subscription, WillMessage
from mqtt_bus.bus import raise_if_cancelling
from schemas import (
    MODEL_TYPES,
    AdmissionFigures,
    AgentEvent,
    AgentStatus,
    Capabilities,
    DesiredState,
    EventKind,
    ModelAnnouncement,
    ModelTopic,
    ModelType,
    PayloadError,
    RefusalReason,
    RunSummary,
    ServingState,
    Telemetry,
    TopicError,
    Topics,
    decode,
    encode,
)

log = logging.getLogger(__name__)


# At most one model announcement is acted on per this many seconds (the latest one).
ANNOUNCEMENT_INTERVAL_S = 0.5


@dataclass
class AgentCounters:
    rejected_payloads: int = 0
    telemetry_sent: int = 0
    telemetry_unsent: int = 0
    announcements: int = 0  # model announcements of the served model received
    announcements_acted_on: int = 0  # of those, prefetched for (a burst collapses into its latest)


class Agent:
    def __init__(
        self,
        pipeline: Pipeline,
        probe: ResourceProbe,
        settings: AgentSettings,
        on_window: Callable[[WindowStats], None] | None = None,
        swap_handler: EngineSwapper | None = None,
        roster: StreamRoster | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.roster = roster
        self._stream_generation: int | None = None  # the desired state whose streams are being applied
        self._streams_lock = asyncio.Lock()
        if roster is not None:
            roster.listeners.append(self._on_stream_event)
        self.probe = probe
        self.settings = settings
        self.agent_id = settings.agent_id
        self.topics = Topics(settings.prefix)
        self.on_window = on_window
        self.swap_handler = swap_handler
        self.counters = AgentCounters()
        self.metrics_address: str | None = None  # announced in the status: where Prometheus scrapes /metrics
        # The sole owner of serving state: orders go through it, nothing else switches the pipeline.
        self.reconciler = Reconciler(pipeline, probe, self, loader=swap_handler,
                                     on_streams=self._start_streams if roster is not None else None)
        self._telemetry_seq = 0
        self._capabilities: Capabilities | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._latest_announcement: ModelAnnouncement | None = None  # waiting to be acted on
        self._announcements: asyncio.Task[None] | None = None
        offline = AgentStatus(agent_id=self.agent_id, state="offline")
        subscriptions = [Subscription(self.topics.desired(self.agent_id), qos=1)]
        if swap_handler is not None:
            subscriptions.append(Subscription(self.topics.all_models(), qos=1))
        if settings.publish_detections:
            pipeline.sinks.append(self)
        self.bus = MqttBus(
            settings.broker(),
            client_id=f"agent-{self.agent_id}",
            subscriptions=subscriptions,
            will=WillMessage(self.topics.status(self.agent_id), encode(offline), qos=1, retain=True),
            on_connect=self.publish_status,
        )

    @property
    def applied_generation(self) -> int:
        """Last desired-state generation that took effect (its first batch was inferred)."""
        return self.reconciler.applied_generation

    # --- outgoing -----------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            sample = self.probe.sample()
            sm = getattr(self.probe, "compute_capability", None)
            backends = available_backends()
            facts: dict[str, str] = {}
            if "tensorrt" in backends:
                from edge_agent.engines.tensorrt import device_facts

                facts = device_facts()
            self._capabilities = Capabilities(
                backends=backends,
                platform=facts.get("platform") or (self.probe.name if self.probe.name != "host" else "cpu"),
                gpu_name=self.probe.device_name() if self.probe.name != "host" else None,
                gpu_sm=facts.get("sm") or (sm() if callable(sm) else None),
                tensorrt_version=facts.get("tensorrt"),
                cuda_version=facts.get("cuda"),
                memory_total_bytes=sample.gpu_memory_total_bytes or sample.host_memory_total_bytes,
            )
        return self._capabilities

    @property
    def model_type(self) -> ModelType | None:
        """The detector family the pipeline's adapter decodes, as the status reports it (None: not one the
        wire knows)."""
        family = self.pipeline.decoder.model_type
        return cast(ModelType, family) if family in MODEL_TYPES else None

    def status(self, state: str = "online") -> AgentStatus:
        serving = self.pipeline.serving
        return AgentStatus(
            agent_id=self.agent_id,
            state=state,  # type: ignore[arg-type]
            capabilities=self.capabilities(),
            serving=ServingState(model=serving.model, version=serving.version, batch_size=serving.batch_size,
                                 backend=serving.engine.backend, servable_batch_sizes=self.reconciler.servable,
                                 model_type=self.model_type),
            applied_generation=self.applied_generation,
            last_order=self.reconciler.last_order,
            metrics_address=self.metrics_address,
        )

    async def write(self, frames: Sequence[Frame]) -> None:
        """FrameSink: per-frame detections on MQTT (QoS 0, best effort; never slows the pipeline)."""
        topic = self.topics.detections(self.agent_id)
        for frame in frames:
            await self.bus.publish(topic, encode(to_message(frame)))

    async def close(self) -> None:
        return None

    async def publish_status(self, state: str = "online") -> None:
        if self._capabilities is None:
            await asyncio.to_thread(self.capabilities)
        await self.bus.publish(self.topics.status(self.agent_id), encode(self.status(state)), qos=1, retain=True)

    async def publish_event(self, kind: EventKind, detail: str = "", generation: int | None = None,
                            timings_ms: dict[str, float] | None = None, refusal: RefusalReason | None = None,
                            admission: AdmissionFigures | None = None) -> None:
        event = AgentEvent(agent_id=self.agent_id, kind=kind, detail=detail[:4000], generation=generation,
                           timings_ms=timings_ms or {}, refusal=refusal, admission=admission)
        level = logging.WARNING if kind in ("desired_refused", "swap_failed", "payload_rejected") else logging.INFO
        log.log(level, "event %s gen=%s %s%s", kind, generation, f"[{refusal}] " if refusal else "", detail)
        await self.bus.publish(self.topics.events(self.agent_id), encode(event), qos=1)

    async def telemetry(self) -> Telemetry:
        window = self.pipeline.stats.take_window()
        if self.on_window is not None:
            self.on_window(window)
        resources = await asyncio.to_thread(self.probe.sample)
        stats = self.pipeline.stats
        size = self.pipeline.batch_size
        self._telemetry_seq += 1
        return Telemetry(
            agent_id=self.agent_id,
            seq=self._telemetry_seq,
            window_s=round(window.window_s, 3),
            batch_size=size,
            batch_size_uniform=bool(window.batch_sizes) and set(window.batch_sizes) == {size},
            applied_generation=self.applied_generation,
            source_fps_total=round(self.pipeline.source_fps_total, 3),
            fps_in=round(window.fps_in, 2),
            fps_out=round(window.fps_out, 2),
            frames_in=stats.frames_in,
            frames_out=stats.frames_out,
            dropped=stats.dropped,
            corrupt=stats.corrupt,
            deadline_misses=stats.deadline_misses,
            batches=window.batches,
            latency=dict(window.latency),
            queue_depths=self.pipeline.queue_depths(),
            resources=resources,
            streams=self.roster.states()[:64] if self.roster is not None else [],
        )

    async def _telemetry_loop(self) -> None:
        interval = self.settings.telemetry_interval_s
        await self.pipeline.started.wait()
        next_at = time.monotonic() + interval
        while True:
            raise_if_cancelling()  # a publish may have swallowed the cancellation (see there)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if next_at - time.monotonic() < interval / 2:
                # The loop fell behind (a publish waited out a hung broker, the event loop stalled): start the
                # schedule afresh. Catching up sent windows microseconds long back to back, with absurd rates,
                # and one that rounded to 0 s failed Telemetry's validation and crashed the agent's run.
                next_at = time.monotonic() + interval
            message = await self.telemetry()
            if await self.bus.publish(self.topics.telemetry(self.agent_id), encode(message)):
                self.counters.telemetry_sent += 1
            else:
                self.counters.telemetry_unsent += 1

    # --- incoming -----------------------------------------------------------------------

    async def handle(self, message: IncomingMessage) -> None:
        try:
            topic = self.topics.parse(message.topic)
        except TopicError:
            self.counters.rejected_payloads += 1
            return
        if not message.payload:
            return  # a cleared retained message
        if isinstance(topic, ModelTopic):
            await self._on_announcement(topic.name, message.payload)
            return
        if topic.channel != "desired" or topic.agent_id != self.agent_id:
            return
        try:
            desired = decode(DesiredState, message.payload)
        except PayloadError as exc:
            self.counters.rejected_payloads += 1
            log.warning("desired state rejected: %s", exc)
            await self.publish_event("payload_rejected", f"desired state: {exc}")
            return
        await self.apply_desired(desired)

    def _spawn(self, coro, name: str) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_announcement(self, name: str, payload: bytes) -> None:
        try:
            announcement = decode(ModelAnnouncement, payload)
        except PayloadError as exc:
            self.counters.rejected_payloads += 1
            log.warning("model announcement rejected: %s", exc)
            return
        if self.swap_handler is not None and name == self.pipeline.serving.model:
            self.counters.announcements += 1
            self._latest_announcement = announcement
            if self._announcements is None or self._announcements.done():
                self._announcements = asyncio.get_running_loop().create_task(
                    self._act_on_announcements(), name=f"agent[{self.agent_id}].prefetch")
                self._background.add(self._announcements)
                self._announcements.add_done_callback(self._background.discard)

    async def _act_on_announcements(self) -> None:
        """One announcement at a time, the latest first: a burst (a registry re-announcing, or a client
        allowed to announce flooding the topic) costs one prefetch and one registry query per
        ``ANNOUNCEMENT_INTERVAL_S``, not one per message."""
        while self._latest_announcement is not None:
            announcement, self._latest_announcement = self._latest_announcement, None
            self.counters.announcements_acted_on += 1
            try:
                await self._on_serving_model_announced(announcement)
            except Exception:  # a registry fault must not stop later announcements from being acted on
                log.exception("acting on the announcement of %s failed", announcement.name)
            await asyncio.sleep(ANNOUNCEMENT_INTERVAL_S)

    async def _on_serving_model_announced(self, announcement: ModelAnnouncement) -> None:
        assert self.swap_handler is not None
        await self.swap_handler.prefetch(announcement, self.pipeline.batch_size, self.pipeline.decoder.model_type)
        before = self.reconciler.servable
        if await self.reconciler.refresh_servable() != before:
            await self.publish_status()  # the controller bounds its orders by these sizes

    async def apply_desired(self, desired: DesiredState) -> None:
        """Hand an order to the reconciler; it reports the outcome (applied, refused, superseded, stale)."""
        if desired.agent_id != self.agent_id:
            self.counters.rejected_payloads += 1
            await self.publish_event("payload_rejected", f"desired state for {desired.agent_id!r}",
                                     refusal="bad_input")
            return
        await self.reconciler.submit(desired)

    # --- streams (admission control) -----------------------------------------------------

    def _start_streams(self, desired: DesiredState) -> None:
        """The reconciler's hook: admit a desired state's streams beside the message loop (cancelled at the end)."""
        self._spawn(self.apply_streams(desired), f"agent[{self.agent_id}].streams")

    async def apply_streams(self, desired: DesiredState) -> None:
        """Converge on the desired state's streams: each new one admitted or refused (parked) with the figures;
        the admitted ones are untouched."""
        assert desired.streams is not None
        if self.roster is None:
            await self.publish_event("error", "desired state lists streams but this agent runs without "
                                     "stream management", desired.generation)
            return
        async with self._streams_lock:  # one order at a time, so its events carry its generation
            self._stream_generation = desired.generation
            try:
                await self.roster.apply(desired.streams)
            finally:
                self._stream_generation = None

    def _on_stream_event(self, kind: EventKind, stream_id: str, figures: AdmissionFigures | None,
                         detail: str) -> None:
        self._spawn(self.publish_event(kind, f"{stream_id}: {detail}", self._stream_generation, admission=figures),
                    f"agent[{self.agent_id}].event")

    async def _publish_stream_decisions(self) -> None:
        """The decisions taken before the bus was up (the streams the agent started with)."""
        assert self.roster is not None
        for e in sorted(self.roster.entries.values(), key=lambda e: e.order):
            if e.figures is not None:
                await self.publish_event("stream_admitted" if e.state == "admitted" else "stream_refused",
                                         f"{e.stream_id}: {e.reason}", admission=e.figures)

    # --- run ----------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        """Run the pipeline under MQTT control until it ends; MQTT outages never stop inference."""
        async with asyncio.TaskGroup() as tg:
            bus = tg.create_task(self.bus.run(self.handle), name=f"agent[{self.agent_id}].bus")
            telemetry = tg.create_task(self._telemetry_loop(), name=f"agent[{self.agent_id}].telemetry")
            if self.roster is not None:
                self._spawn(self.roster.run(), f"agent[{self.agent_id}].admission")
            reconciler = tg.create_task(self.reconciler.run(), name=f"agent[{self.agent_id}].reconciler")
            # Give the broker a moment so the first figures and orders are not missed; never more.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.connect_wait_s):
                    await self.bus.connected.wait()
            if self.roster is not None:
                await self._publish_stream_decisions()
            summary = await self.pipeline.run()
            telemetry.cancel()
            reconciler.cancel()
            for task in list(self._background):
                task.cancel()
            if self.bus.connected.is_set():
                with contextlib.suppress(Exception):
                    await self.publish_status("offline")
            bus.cancel()
        return summary
