"""N real-time streams under the controller: all frames served? deadline misses in steady state? which batch
size did the controller settle on?

One process: a private mosquitto, the controller (``--policy``, default ``deadline``) and an agent serving
``--streams`` copies of the sample video paced at its frame rate (vtest.avi: 10 fps), on a dynamic-batch
engine (so every batch size the controller orders is served without a registry). After ``--seconds`` it
prints, per telemetry window, the batch size, fps in/out, drops and misses, and a summary: totals, the same
over the steady state (the windows after the controller's last change, at least the last third of the run),
and the decision path. ``--json`` writes it all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

import psutil

from cloud_controller.controller import Controller
from cloud_controller.policies import make_policy
from edge_agent.adapters import adapter_for
from edge_agent.agent import Agent
from edge_agent.engines import BACKENDS, load_engine
from edge_agent.nanodet import load_labels
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes import auto_probe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from edge_agent.stages import StageSettings
from mqtt_bus import BrokerSettings
from mqtt_bus.local_broker import LocalBroker

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "samples/models/nanodet-m-416-coco.onnx"
LABELS = ROOT / "samples/models/coco.names"
VIDEO = ROOT / "samples/video/vtest.avi"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"precision": args.precision} if args.backend == "pytorch" else {}
    engine = load_engine(args.model, args.backend, options)
    adapter = adapter_for(args.model, engine.input_size, engine.output_names, args.model_type, None,
                          load_labels(LABELS))
    windows: list[dict[str, Any]] = []
    decisions: list[tuple[float, int | None, str]] = []
    t0 = time.monotonic()
    with LocalBroker(persistence=False) as broker:
        controller = Controller(BrokerSettings.from_url(broker.url), make_policy(args.policy), prefix="bench",
                                controller_id="bench-controller")
        controller.decision_listeners.append(lambda _view, desired, decision: decisions.append(
            (round(time.monotonic() - t0, 1), desired.batch_size, decision.reason)))
        sources = await open_sources([str(VIDEO)] * args.streams, loop=True)
        pipeline = Pipeline(sources, engine, adapter, PipelineConfig(
            batch_size=args.batch_size, realtime=True, deadline_ms=args.deadline_ms,
            stages=StageSettings(device_path=args.device_path)))
        misses, drops = [0], [0]

        def on_window(w: Any) -> None:
            stats = pipeline.stats
            windows.append({"t": round(time.monotonic() - t0, 1), "batch_size": pipeline.batch_size,
                            "fps_in": round(w.fps_in, 1), "fps_out": round(w.fps_out, 1),
                            "dropped": stats.dropped - drops[0], "missed": stats.deadline_misses - misses[0],
                            "e2e_p95_ms": round(w.latency["e2e"].p95_ms, 1)})
            misses[0], drops[0] = stats.deadline_misses, stats.dropped
            print(windows[-1], flush=True)

        settings = AgentSettings(broker_url=broker.url, agent_id="bench-agent", prefix="bench",
                                 telemetry_interval_s=args.window_s)
        agent = Agent(pipeline, auto_probe(), settings, on_window=on_window)
        asyncio.get_running_loop().call_later(args.seconds, pipeline.stop)
        async with asyncio.TaskGroup() as tg:
            ctl = tg.create_task(controller.run())
            summary = await agent.run()
            ctl.cancel()
    last_change = max((t for t, _, _ in decisions), default=0.0)
    steady_from = max(last_change, args.seconds * 2 / 3)
    steady = [w for w in windows if w["t"] > steady_from]
    return {
        "machine": f"{platform.machine()} {psutil.cpu_count()} cores", "device": auto_probe().device_name(),
        "gpu": getattr(engine, "device", None) and str(engine.device),
        "model": args.model.name, "backend": engine.backend, "device_path": args.device_path,
        "policy": args.policy, "streams": args.streams, "seconds": args.seconds,
        "frames_in": summary.frames_in, "frames_out": summary.frames_out, "dropped": summary.dropped,
        "deadline_misses": summary.deadline_misses,
        "lost": summary.frames_in - summary.frames_out - summary.dropped,
        "steady_state": {"from_s": round(steady_from, 1), "windows": len(steady),
                         "dropped": sum(w["dropped"] for w in steady), "missed": sum(w["missed"] for w in steady),
                         "batch_sizes": sorted({w["batch_size"] for w in steady}),
                         "fps_in": round(sum(w["fps_in"] for w in steady) / max(1, len(steady)), 1),
                         "fps_out": round(sum(w["fps_out"] for w in steady) / max(1, len(steady)), 1)},
        "settled_batch_size": pipeline.batch_size,
        "decisions": decisions,
        "windows": windows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--model-type", default=None)
    parser.add_argument("--backend", default="pytorch", choices=sorted(BACKENDS))
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16"])
    parser.add_argument("--device-path", default="auto", choices=["auto", "always", "never"])
    parser.add_argument("--policy", default="deadline")
    parser.add_argument("--batch-size", type=int, default=1, help="where the controller starts from")
    parser.add_argument("--deadline-ms", type=float, default=1000.0)
    parser.add_argument("--window-s", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps({k: v for k, v in result.items() if k != "windows"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
