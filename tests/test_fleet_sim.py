"""bench/fleet_sim.py: the queue model alone, and the whole simulation through a real mosquitto."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cloud_controller.policies import POLICIES
from mqtt_bus import BrokerSettings
from mqtt_bus.local_broker import LocalBroker
from schemas import AgentEvent, AgentStatus, DesiredState, Telemetry, Topics, decode

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_sim", ROOT / "bench" / "fleet_sim.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet_sim"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


fs = _load()


def profile(delays_ms: dict[int, float]) -> Any:  # fs.DeviceProfile (fs is loaded from its file)
    costs = {b: fs.BatchCost(0.1 * d, 0.8 * d, 0.1 * d, d, 1000 * b) for b, d in delays_ms.items()}
    return fs.DeviceProfile(name="synthetic", device="test", model="m", backend="onnxruntime", platform="x86_64-cpu",
                            source="test", memory_kind="host", memory_total_bytes=2**30, memory_base_bytes=0,
                            costs=costs)


DELAYS = {1: 10.0, 2: 15.0, 4: 20.0, 8: 30.0, 16: 50.0}


def run(queue: Any, windows: int) -> list[Any]:
    return [queue.run_window(w * 1.0, (w + 1) * 1.0) for w in range(windows)]


def test_batch_that_keeps_up_drops_and_misses_nothing() -> None:
    queue = fs.AgentQueue(profile(DELAYS), speed=1.0, batch_size=4, noise=0.03, seed=3)
    queue.set_streams([10] * 10)  # 100 fps; batch 4 takes 20 ms < 4 x 10 ms
    figures = run(queue, 20)
    t = queue.totals
    assert t.offered == 2000
    assert t.dropped == 0 and t.late == 0
    assert t.served >= t.offered - 4 and t.served + queue.waiting == t.offered
    assert all(f.sizes == {4} for f in figures[1:])
    assert max(e for f in figures for e in f.e2e_s) < 0.1  # fill 3 frames at 10 ms + 20 ms service


def test_overload_drops_oldest_and_serves_at_most_capacity() -> None:
    queue = fs.AgentQueue(profile(DELAYS), speed=1.0, batch_size=1, noise=0.0, capacity=32, seed=3)
    queue.set_streams([40] * 10)  # 400 fps against 100 fps at batch 1
    run(queue, 10)
    t = queue.totals
    assert t.served <= 100 * 10 + 1
    assert t.served >= 100 * 10 - 2  # the server never idles
    assert t.dropped > 0
    assert t.offered == t.served + t.dropped + queue.waiting
    assert queue.waiting <= 32 + 1  # the queue and one assembled batch
    assert t.late == 0  # 33 queued frames wait 330 ms: within the 1 s deadline


def test_deadline_dispatches_a_partial_batch() -> None:
    # 10 fps cannot fill a batch of 16 in time for a 300 ms deadline: the batcher must send partial batches.
    queue = fs.AgentQueue(profile(DELAYS), speed=1.0, batch_size=16, deadline_s=0.3, noise=0.0, seed=3)
    queue.set_streams([10])
    figures = run(queue, 5)
    assert queue.totals.late == 0
    assert queue.totals.served >= 40
    assert all(0 < f.served < 16 for f in figures[1:])


def test_order_takes_effect_after_its_delay_at_a_batch_boundary() -> None:
    queue = fs.AgentQueue(profile(DELAYS), speed=1.0, batch_size=1, noise=0.0, seed=3)
    queue.set_streams([10] * 5)
    queue.run_window(0.0, 1.0)
    queue.order(8, at_s=1.5)
    fig = queue.run_window(1.0, 2.0)
    assert fig.applied and fig.applied[0][1] == 8 and fig.sizes == {1, 8}
    assert queue.size == 8
    assert queue.run_window(2.0, 3.0).sizes == {8}


def test_load_is_relative_to_the_best_ladder_size() -> None:
    p = profile(DELAYS)
    assert p.capacity_fps(fs.DEFAULT_LADDER) == pytest.approx(16 * 1000 / 50)
    rates = fs.stream_rates(0.9 * p.capacity_fps(fs.DEFAULT_LADDER))
    assert sum(rates) == 288 and all(9 <= r <= 11 for r in rates)


def test_wire_obeys_the_newest_generation_and_says_what_it_did() -> None:
    queue = fs.AgentQueue(profile(DELAYS), speed=1.0, batch_size=1, seed=3)
    queue.set_streams([10] * 5)
    wire = fs.AgentWire("a1", Topics("tp"), queue, swap_delay_s=0.5, epoch=1000.0)

    def events(out: list[tuple[str, bytes, int, bool]]) -> list[tuple[str, int | None]]:
        found = [decode(AgentEvent, payload) for topic, payload, _, _ in out if topic == "tp/agents/a1/events"]
        return [(e.kind, e.generation) for e in found]

    assert events(wire.on_desired(DesiredState(agent_id="a1", generation=2, batch_size=4), 1.0)) == []
    assert queue.switch == (1.5, 4) and wire.applied_generation == 0  # applied means took effect
    assert events(wire.on_desired(DesiredState(agent_id="a1", generation=1, batch_size=8), 1.1)) == [
        ("desired_ignored", 1)]
    assert queue.switch == (1.5, 4)
    assert events(wire.on_desired(DesiredState(agent_id="a1", generation=3, batch_size=8), 1.2)) == [
        ("desired_superseded", 2)]
    assert queue.switch == (1.7, 8)
    assert events(wire.on_desired(DesiredState(agent_id="a1", generation=4, batch_size=64), 1.3)) == [
        ("desired_refused", 4)]
    fig = queue.run_window(1.0, 2.0)
    assert events(wire.applied(fig)) == [("desired_applied", 3)]
    topic, payload, qos, retain = wire.telemetry(fig, 2.0)
    telemetry = decode(Telemetry, payload)
    assert (topic, qos, retain) == ("tp/agents/a1/telemetry", 0, False)
    assert telemetry.batch_size == 8 and not telemetry.batch_size_uniform
    assert telemetry.applied_generation == 3  # as the real agent: the refused generation 4 is not applied
    status = decode(AgentStatus, wire.status(2.0)[1])
    assert status.last_order is not None and (status.last_order.generation, status.last_order.outcome) == (3, "applied")
    assert status.serving is not None and status.serving.servable_batch_sizes == sorted(DELAYS)
    assert set(telemetry.latency) == {"pre", "queue", "infer", "post", "e2e", "batch"}
    assert telemetry.source_fps_total == 50 and telemetry.ts == 1002.0


def test_every_registered_policy_can_be_built() -> None:
    clock = fs.SimClock()
    for key in POLICIES:
        policy = fs.build_policy(key, clock)
        assert policy.name == key
        if hasattr(policy, "clock"):
            assert policy.clock is clock


async def test_real_controller_orders_and_simulated_agents_apply(broker: LocalBroker) -> None:
    profiles, _ = fs.load_profiles(["h100-pytorch-nanodet"], fs.DEFAULT_LADDER)
    steps = (fs.LoadStep(0.0, 0.5), fs.LoadStep(4.0, 1.2))
    cfg = fs.FleetConfig(agents=5, profiles=tuple(profiles), steps=steps, duration_s=8.0, initial_batch=4,
                         swap_delay_s=0.2)
    key = "kum2022" if "kum2022" in POLICIES else next(iter(POLICIES))
    result = await fs.run_policy(cfg, key, BrokerSettings.from_url(broker.url), connections=2)
    assert result.barrier_timeouts == 0
    assert result.telemetry_handled == 5 * 8 and result.telemetry_lost == 0
    assert result.decisions > 0
    assert result.orders_received >= result.decisions
    assert result.counters["applied"] > 0 and result.counters["publish_failed"] == 0
    assert result.counters["controller_events"] >= result.counters["applied"]  # desired_applied reached it
    sizes = result.recorder.size
    assert any(len(set(row)) > 1 for row in sizes)  # batch sizes changed on the controller's orders
    assert sum(result.recorder.swaps) == result.counters["applied"]
