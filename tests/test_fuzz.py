"""Property-based fuzzing of every topic the agent and the controller read.

Each payload goes through the same entry point the MQTT bus calls (``handle(IncomingMessage)``):
schema-valid messages, mutations of valid ones (a key dropped, a value replaced by something hostile:
10**400, -1, NaN, huge strings, wrong types), random JSON and random bytes. Nothing may raise, nothing
may log a traceback, and an invalid payload may not change any state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_controller.controller import Controller
from cloud_controller.metrics import FleetMetrics
from cloud_controller.policies import make_policy
from edge_agent.agent import Agent
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes.host import HostProbe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from mqtt_bus import BrokerSettings, IncomingMessage
from schemas import (
    AgentEvent,
    AgentStatus,
    ArtifactInfo,
    Capabilities,
    DesiredState,
    LatencyStats,
    ModelAnnouncement,
    PayloadError,
    ResourceSample,
    ServingState,
    Telemetry,
    Topics,
    WireModel,
    decode,
)

PREFIX = "fuzz"
TOPICS = Topics(PREFIX)
EXAMPLES = 1700  # per entry point; six entry points: 10,200 payloads in all


def valid_messages() -> dict[str, WireModel]:
    lat = LatencyStats(count=10, mean_ms=30.0, p50_ms=29.0, p95_ms=40.0, p99_ms=45.0, max_ms=50.0)
    return {
        "telemetry": Telemetry(
            agent_id="cam1", seq=3, window_s=1.0, batch_size=2, batch_size_uniform=True, applied_generation=0,
            source_fps_total=30.0, fps_in=30.0, fps_out=30.0, frames_in=90, frames_out=90, dropped=0, corrupt=0,
            deadline_misses=0, batches=15, latency={k: lat for k in ("pre", "queue", "infer", "post", "e2e", "batch")},
            queue_depths={"ingress": 0}, resources=ResourceSample(
                probe="host", host_memory_used_bytes=1 << 30, host_memory_total_bytes=8 << 30,
                process_rss_bytes=1 << 28, cpu_util_pct=40.0)),
        "status": AgentStatus(agent_id="cam1", state="online",
                              capabilities=Capabilities(backends=["onnxruntime"], platform="cpu",
                                                        memory_total_bytes=8 << 30),
                              serving=ServingState(model="m", version="1", batch_size=2, backend="onnxruntime")),
        "desired": DesiredState(agent_id="cam1", generation=5, batch_size=2, reason="fuzz"),
        "events": AgentEvent(agent_id="cam1", kind="swap_finished", generation=5, timings_ms={"load": 3.0}),
        "models": ModelAnnouncement(name="nanodet", latest_version="2", artifacts=[ArtifactInfo(
            id="x", name="nanodet", version="2", batch_sizes=[1], format="onnx", sha256="0" * 64,
            size_bytes=10)]),
    }


VALID = {kind: json.loads(m.model_dump_json()) for kind, m in valid_messages().items()}
MODEL_OF = {"telemetry": Telemetry, "status": AgentStatus, "desired": DesiredState, "events": AgentEvent,
            "models": ModelAnnouncement}

hostile_scalars = st.one_of(
    st.just(10**400), st.just(-(10**400)), st.just(-1), st.just(2**63), st.just(0), st.just(None), st.just(True),
    st.just(float("nan")), st.just(float("inf")), st.just(-1e308), st.text(max_size=50), st.just("x" * 5000),
    # builds(list) and builds(dict), not just([]): a fresh container per draw. A shared one, placed by one
    # mutation and filled by the next, would end up inside itself (and poison every later draw).
    st.integers(), st.floats(), st.builds(list), st.builds(dict), st.just("../../etc"), st.just("+/#"),
)
json_values = st.recursive(hostile_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield prefix + (k,)
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield prefix + (i,)
            yield from paths(v, prefix + (i,))


def mutated(kind: str) -> st.SearchStrategy[bytes]:
    base = VALID[kind]
    all_paths = list(paths(base))

    @st.composite
    def one(draw: st.DrawFn) -> bytes:
        doc = json.loads(json.dumps(base))
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(all_paths))
            parent = doc
            try:
                for key in path[:-1]:
                    parent = parent[key]
                action = draw(st.sampled_from(["replace", "delete", "extra"]))
                if action == "replace":
                    parent[path[-1]] = draw(json_values)
                elif action == "delete" and isinstance(parent, dict):
                    parent.pop(path[-1], None)
                elif isinstance(parent, dict):
                    parent[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation removed or retyped this path
        return json.dumps(doc, allow_nan=True).encode()

    return one()


def payloads(kind: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        mutated(kind),
        st.just(json.dumps(VALID[kind]).encode()),
        json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
        st.binary(max_size=300),
    )


def is_valid(model: type[WireModel], payload: bytes) -> bool:
    try:
        decode(model, payload)
    except PayloadError:
        return False
    return True


class TracebackCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def tracebacks() -> Iterator[TracebackCatcher]:
    catcher = TracebackCatcher()
    logging.getLogger().addHandler(catcher)
    yield catcher
    logging.getLogger().removeHandler(catcher)


@pytest.fixture(scope="module")
def agent(loop, engine, decoder, short_video) -> Agent:
    async def build() -> Agent:
        sources = await open_sources([str(short_video)])
        pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=1))
        # No broker at this address: publishing fails fast and is counted, as during an outage.
        return Agent(pipeline, HostProbe(), AgentSettings(broker_url="mqtt://127.0.0.1:9", agent_id="cam1",
                                                          prefix=PREFIX))

    return loop.run_until_complete(build())


def new_controller() -> Controller:
    return Controller(BrokerSettings("127.0.0.1", 9), make_policy("deadline"), prefix=PREFIX,
                      controller_id="fuzz-ctl")


def agent_state(agent: Agent) -> tuple[Any, ...]:
    s = agent.pipeline.serving
    return (s.batch_size, s.model, s.version, s.generation, s.engine, agent.applied_generation)


fuzz_settings = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@fuzz_settings
@given(payload=payloads("desired"))
def test_agent_desired_topic(loop, agent, tracebacks, payload: bytes) -> None:
    before = agent_state(agent)
    loop.run_until_complete(agent.handle(IncomingMessage(TOPICS.desired("cam1"), payload, False)))
    if not is_valid(DesiredState, payload):
        assert agent_state(agent) == before
    assert not tracebacks.records, tracebacks.records[0].getMessage()


@fuzz_settings
@given(payload=payloads("models"))
def test_agent_model_announcements(loop, agent, tracebacks, payload: bytes) -> None:
    before = agent_state(agent)
    loop.run_until_complete(agent.handle(IncomingMessage(TOPICS.model("nanodet"), payload, True)))
    assert agent_state(agent) == before  # an announcement never changes what is served
    assert not tracebacks.records, tracebacks.records[0].getMessage()


@pytest.mark.parametrize("kind", ["telemetry", "status", "desired", "events"])
def test_controller_topics(loop, tracebacks, kind: str) -> None:
    topic = TOPICS.agent("cam1", kind)

    @fuzz_settings
    @given(payload=payloads(kind))
    def run(payload: bytes) -> None:
        controller = new_controller()  # one payload at a time: a failure reproduces on its own
        metrics = FleetMetrics(controller)
        before = (len(controller.agents), controller.counters.decisions)
        loop.run_until_complete(controller.handle(IncomingMessage(topic, payload, False)))
        if not is_valid(MODEL_OF[kind], payload):
            assert (len(controller.agents), controller.counters.decisions) == before
        controller.fleet_lines()  # what an operator reads must survive whatever was accepted
        metrics.render()
        assert not tracebacks.records, tracebacks.records[0].getMessage()

    run()
