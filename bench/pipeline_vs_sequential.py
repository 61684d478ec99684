"""Pipelined vs sequential processing (Kum et al. Fig. 3c vs 3a), and pipeline vs raw engine.

All three run in one process, on the same model, the same frames and the same batch size:
- sequential: per batch, decode -> preprocess -> infer -> postprocess, one after another (the pipeline's own
  stage objects, worker threads and all, so only the overlap between stages differs);
- pipeline: the edge-agent pipeline in offline mode (stages overlap on threads);
- raw engine: the engine alone on ready tensors (the ceiling).
Prints throughputs, the measured ratios and the ideal pipelining ratio from the stage times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import psutil

from edge_agent.adapters import NanoDetAdapter
from edge_agent.engines import BACKENDS, load_engine, run_padded
from edge_agent.nanodet import load_labels, preprocess
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.profiler import time_stages
from edge_agent.sources import VideoSource
from edge_agent.stages import default_stages

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "samples/models/nanodet-m-416-coco.onnx"
LABELS = ROOT / "samples/models/coco.names"
VIDEO = ROOT / "samples/video/vtest.avi"
CHAINS: dict[int, list] = {}  # type: ignore[type-arg]


def sequential(engine, decoder, frames: int, batch_size: int) -> dict[str, float]:
    source = VideoSource(str(VIDEO), "seq", loop=True)
    source.open()
    stage = {"decode": 0.0, "pre": 0.0, "infer": 0.0, "post": 0.0}
    chain = CHAINS.setdefault(id(engine), default_stages(engine, decoder, {}))  # kept: its worker counts settle
    t_start = time.perf_counter()
    done = 0
    while done < frames:
        t0 = time.perf_counter()
        images = [source.read() for _ in range(batch_size)]
        decode = time.perf_counter() - t0
        for k, dt in zip(stage, (decode, *time_stages(engine, decoder, images, chain)), strict=True):
            stage[k] += dt
        done += batch_size
    elapsed = time.perf_counter() - t_start
    source.close()
    return {"fps": done / elapsed, **{f"{k}_ms_per_frame": v * 1000 / done for k, v in stage.items()}}


async def pipelined(engine, decoder, frames: int, batch_size: int) -> dict[str, float]:
    source = VideoSource(str(VIDEO), "s0", loop=True)
    source.open()
    pipeline = Pipeline([source], engine, decoder, PipelineConfig(batch_size=batch_size, realtime=False,
                                                                  max_frames=frames))
    summary = await pipeline.run()
    return {"fps": summary.frames_out / summary.duration_s, "frames": summary.frames_out}


def raw_engine(engine, frames: int, batch_size: int) -> dict[str, float]:
    source = VideoSource(str(VIDEO), "raw", loop=True)
    source.open()
    tensor = np.stack([preprocess(source.read()) for _ in range(batch_size)])
    source.close()
    run_padded(engine, tensor)
    t0 = time.perf_counter()
    done = 0
    while done < frames:
        run_padded(engine, tensor)
        done += batch_size
    return {"fps": done / (time.perf_counter() - t0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; ratios are medians")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=MODEL, help="ONNX model, or a TensorRT .plan serving the size")
    parser.add_argument("--backend", default="onnxruntime", choices=sorted(BACKENDS),
                        help="pytorch or tensorrt to measure the GPU overlap the pipeline is for")
    parser.add_argument("--intra-op-threads", type=int, default=None,
                        help="onnxruntime: threads per inference (1 leaves the other cores to decode/pre/post, as a "
                             "GPU engine would)")
    args = parser.parse_args()
    options = {"intra_op_threads": args.intra_op_threads} if args.intra_op_threads else {}
    engine = load_engine(args.model, args.backend, options)
    decoder = NanoDetAdapter(load_labels(LABELS))
    sequential(engine, decoder, 2 * args.batch_size, args.batch_size)  # warm up
    # Interleaved rounds, so a noisy neighbour slows all three alike rather than one of them.
    rounds = []
    for _ in range(args.rounds):
        s = sequential(engine, decoder, args.frames, args.batch_size)
        p = asyncio.run(pipelined(engine, decoder, args.frames, args.batch_size))
        r = raw_engine(engine, args.frames, args.batch_size)
        rounds.append((s, p, r))
    seq = {k: statistics.median(r[0][k] for r in rounds) for k in rounds[0][0]}
    pipe = {"fps": statistics.median(r[1]["fps"] for r in rounds)}
    raw = {"fps": statistics.median(r[2]["fps"] for r in rounds)}
    stages = [seq[f"{k}_ms_per_frame"] for k in ("decode", "pre", "infer", "post")]
    result = {
        "machine": f"{platform.machine()} {psutil.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "backend": engine.backend,
        "device": str(getattr(engine, "device", "")) or None,
        "intra_op_threads": args.intra_op_threads,
        "batch_size": args.batch_size,
        "frames": args.frames,
        "rounds": args.rounds,
        "sequential_fps": round(seq["fps"], 2),
        "pipeline_fps": round(pipe["fps"], 2),
        "raw_engine_fps": round(raw["fps"], 2),
        "stage_ms_per_frame": {k: round(v, 2) for k, v in zip(("decode", "pre", "infer", "post"), stages,
                                                                strict=True)},
        "pipelined_over_sequential": round(statistics.median(p["fps"] / s["fps"] for s, p, _ in rounds), 3),
        "pipelined_over_sequential_by_round": [round(p["fps"] / s["fps"], 3) for s, p, _ in rounds],
        "ideal_pipelined_over_sequential": round(sum(stages) / max(stages), 3),
        "pipeline_over_raw_engine": round(statistics.median(p["fps"] / r["fps"] for _, p, r in rounds), 3),
        "pipeline_over_raw_engine_by_round": [round(p["fps"] / r["fps"], 3) for _, p, r in rounds],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
