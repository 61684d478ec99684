"""Engine swap under a real-time multi-stream load, with a cold and a warm artifact cache.

An agent serves 3 real-time streams of the sample video from a local registry holding static-batch
ONNX engines (batch 2 and 4). Orders go over a private mosquitto: 2 -> 4 (cold cache: download,
verify, load, warm up), 4 -> 2 and 2 -> 4 (warm cache). For each swap it prints frames dropped,
the longest gap between consecutive outputs of a stream around the swap against the frame interval
and the steady-state gap, and the command-to-first-batch time. The paper's figure: ~25 s downtime.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import psutil

from edge_agent.adapters import NanoDetAdapter
from edge_agent.agent import Agent
from edge_agent.frames import Frame
from edge_agent.nanodet import load_labels
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes import auto_probe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from edge_agent.swap import ArtifactCache, EngineSwapper
from model_registry.registry import Registry
from model_registry.stores import open_store
from model_registry.stores.local import LocalDirectoryStore
from mqtt_bus import BrokerSettings, IncomingMessage, MqttBus, Subscription
from mqtt_bus.local_broker import LocalBroker
from schemas import AgentEvent, DesiredState, Topics, decode, encode

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 3
OUTCOMES = ("desired_applied", "desired_refused", "desired_superseded")  # exactly one per order


class OutputTimes:
    def __init__(self) -> None:
        self.by_stream: dict[str, list[float]] = defaultdict(list)

    async def write(self, frames: Sequence[Frame]) -> None:
        now = time.monotonic()
        for f in frames:
            self.by_stream[f.stream_id].append(now)

    async def close(self) -> None:
        return None

    def longest_gap(self, start: float, end: float) -> float:
        gaps = []
        for times in self.by_stream.values():
            inside = [t for t in times if start <= t <= end]
            gaps += [b - a for a, b in zip(inside, inside[1:], strict=False)]
        return max(gaps) if gaps else 0.0


async def main(store_location: str | None) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="edgebatch-swapbench-"))
    store = open_store(store_location) if store_location else LocalDirectoryStore(tmp / "registry")
    name = f"nanodet-bench-{int(time.time())}"  # a fresh name: a shared store may hold earlier runs
    await Registry(store).push(ROOT / "samples/models/nanodet-m-416-coco.onnx", name, "1", export_static=[2, 4])
    swapper = EngineSwapper(store, ArtifactCache(tmp / "cache"))
    info = await swapper.resolve(name, "1", 2)
    probe = auto_probe()
    engine, _ = await swapper.load(info, 2, probe)
    outputs = OutputTimes()
    sources = await open_sources([str(ROOT / "samples/video/vtest.avi")] * STREAMS, loop=True)
    pipeline = Pipeline(sources, engine, NanoDetAdapter(load_labels(ROOT / "samples/models/coco.names")),
                        PipelineConfig(batch_size=2, realtime=True), [outputs], model=name, version="1",
                        artifact_sha256=info.sha256)
    interval_ms = 1000.0 / sources[0].info.fps  # type: ignore[union-attr]
    results = []
    with LocalBroker(persistence=False) as broker:
        topics = Topics("bench")
        agent = Agent(pipeline, probe, AgentSettings(broker_url=broker.url, agent_id="a1", prefix="bench"),
                      swap_handler=swapper)
        events: list[AgentEvent] = []

        async def record(message: IncomingMessage) -> None:
            events.append(decode(AgentEvent, message.payload))

        operator = MqttBus(BrokerSettings.from_url(broker.url), "bench-operator",
                           [Subscription(topics.events("a1"), qos=1)])
        op_task = asyncio.create_task(operator.run(record))
        agent_task = asyncio.create_task(agent.run())
        await operator.wait_connected(10)
        await agent.bus.wait_connected(10)
        await asyncio.sleep(4.0)
        steady_gap = outputs.longest_gap(time.monotonic() - 3.0, time.monotonic())
        previous = 2
        for generation, (size, cache) in enumerate([(4, "cold"), (2, "warm"), (4, "warm")], start=1):
            dropped_before = pipeline.stats.dropped
            sent = time.monotonic()
            await operator.publish(topics.desired("a1"), encode(DesiredState(agent_id="a1", generation=generation,
                                                                             batch_size=size)), qos=1, retain=True)
            while not any(e.generation == generation and e.kind in OUTCOMES for e in events):
                await asyncio.sleep(0.02)
            await asyncio.sleep(2.0)
            done = next(e for e in events if e.generation == generation and e.kind in OUTCOMES)
            results.append({
                "swap": f"batch {previous} -> {size}",
                "cache": cache,
                "outcome": done.kind + (f" ({done.refusal}: {done.detail})" if done.refusal else ""),
                "frames_dropped": pipeline.stats.dropped - dropped_before,
                "longest_output_gap_ms": round(outputs.longest_gap(sent, time.monotonic()) * 1000, 1),
                "command_to_first_batch_ms": done.timings_ms.get("decision_to_first_batch"),
                "download_ms": done.timings_ms.get("download"),
                "load_ms": done.timings_ms.get("load"),
                "warmup_ms": done.timings_ms.get("warmup"),
            })
            previous = size
        pipeline.stop()
        summary = await agent_task
        op_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await op_task
    await store.close()
    return {
        "machine": f"{platform.machine()} {psutil.cpu_count()} cores",
        "store": store.location,
        "streams": STREAMS,
        "frame_interval_ms": interval_ms,
        "steady_state_longest_gap_ms": round(steady_gap * 1000, 1),
        "swaps": results,
        "frames_in": summary.frames_in,
        "frames_out": summary.frames_out,
        "dropped_total": summary.dropped,
        "frames_lost": summary.frames_in - summary.frames_out - summary.dropped,
        "paper_downtime_per_swap_ms": 25_000,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default=None, help="registry to swap from: mongodb://... (GridFS) or a "
                        "directory (default: a fresh local directory)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    result = asyncio.run(main(args.store))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
