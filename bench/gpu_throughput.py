"""End-to-end frames/s of the pipeline (offline) next to the raw engine, batch size by batch size.

For each batch size, in one process, on the same model:
- raw engine: the engine alone on an input already in place (on the device for an engine that takes device
  tensors, so no upload or pre-processing is counted), synchronised, the ceiling;
- pipeline: ``Pipeline`` in offline mode on ``--streams`` looped copies of the sample video, the chain it
  builds for the engine (``--device-path``), with where the time goes per stage (mean ms per batch) and the
  GPU's busy fraction (NVML utilisation, sampled every 50 ms; none without an NVIDIA driver).
Prints a table and the ratio pipeline / raw engine; ``--json`` writes the figures.
Runs anywhere the backend runs: on a CPU it gives the CPU figures (PyTorch on the CPU, or ONNX Runtime).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edge_agent.adapters import adapter_for
from edge_agent.engines import BACKENDS, InferenceEngine, load_engine, padded_batch_size
from edge_agent.frames import Batch
from edge_agent.nanodet import load_labels
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.sources import VideoSource, open_sources
from edge_agent.stages import ServingConfig, StageSettings, uses_device_chain

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "samples/models/nanodet-m-416-coco.onnx"
LABELS = ROOT / "samples/models/coco.names"
VIDEO = ROOT / "samples/video/vtest.avi"


class GpuBusy:
    """NVML utilisation sampled on a thread while the pipeline runs; None where there is no NVIDIA driver."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:
            self._handle = None

    def __enter__(self) -> GpuBusy:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def percent(self) -> float | None:
        return round(statistics.mean(self.samples), 1) if self.samples else None


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        return None


def frames_of_video(count: int) -> list[np.ndarray]:
    source = VideoSource(str(VIDEO), "bench", loop=True)
    source.open()
    frames = [source.read() for _ in range(count)]
    source.close()
    return [f for f in frames if f is not None]


def device_input(engine: InferenceEngine, adapter: Any, images: list[np.ndarray], batch_size: int) -> Any:
    """The engine's input for ``batch_size`` frames, made the way the pipeline's chain makes it."""
    from edge_agent.stages import default_stages, work_of

    work = work_of([images[i % len(images)] for i in range(batch_size)], engine, "bench")
    chain = default_stages(engine, adapter, {}, SETTINGS)
    chain[0].process(work)
    chain[0].close()
    return work.batch.tensor


def synchronise(engine: InferenceEngine) -> None:
    if uses_device_chain(engine, SETTINGS.device_path) and getattr(engine, "on_gpu", False):
        import torch

        torch.cuda.synchronize()


def raw_engine(engine: InferenceEngine, adapter: Any, images: list[np.ndarray], batch_size: int,
               seconds: float) -> float:
    tensor = device_input(engine, adapter, images, batch_size)
    synchronise(engine)  # the upload stage wrote it on its own stream
    on_device = uses_device_chain(engine, SETTINGS.device_path)
    run = (lambda: engine.infer_device(tensor)) if on_device else (lambda: engine.infer(tensor))  # type: ignore[attr-defined]
    for _ in range(3):
        run()
    synchronise(engine)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or done < 5:
        run()
        done += 1
    synchronise(engine)
    return done * batch_size / (time.perf_counter() - t0)


async def pipeline_run(engine: InferenceEngine, adapter: Any, batch_size: int, frames: int,
                       streams: int) -> dict[str, Any]:
    sources = await open_sources([str(VIDEO)] * streams, loop=True)
    pipeline = Pipeline(sources, engine, adapter, PipelineConfig(batch_size=batch_size, realtime=False,
                                                                 max_frames=frames, stages=SETTINGS))
    per_batch: list[tuple[float, float, float, float]] = []
    started: list[float] = []

    def on_batch(batch: Batch, _serving: ServingConfig) -> None:
        if not started:
            started.append(time.monotonic())
        per_batch.append((batch.pre_ms, batch.infer_ms, batch.post_ms, time.monotonic()))

    pipeline.batch_listeners.append(on_batch)
    with GpuBusy() as busy:
        summary = await pipeline.run()
    # Steady state: from the end of the first quarter of the batches (thread counts measured, caches warm).
    steady = per_batch[len(per_batch) // 4:]
    span = steady[-1][3] - per_batch[len(per_batch) // 4 - 1][3] if len(per_batch) >= 8 else summary.duration_s
    fps = (len(steady) * batch_size / span) if len(per_batch) >= 8 else summary.frames_out / summary.duration_s
    chain = [type(s).__name__ for s in pipeline.stages]
    return {
        "fps": round(fps, 1),
        "frames_out": summary.frames_out,
        "stage_ms_per_batch": {k: round(statistics.mean(b[i] for b in steady), 2)
                               for i, k in enumerate(("pre", "infer", "post"))},
        "gpu_busy_percent": busy.percent,
        "chain": chain,
        "workers": {s.name: getattr(getattr(s, "workers", None), "chosen", None) for s in pipeline.stages
                    if hasattr(s, "workers")},
    }


SETTINGS = StageSettings()


def main() -> None:
    global SETTINGS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--model-type", default=None, help="default: inferred from the ONNX")
    parser.add_argument("--backend", default="pytorch", choices=sorted(BACKENDS))
    parser.add_argument("--device", default=None, help="pytorch: cpu, cuda (default: cuda when PyTorch sees one)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16"], help="pytorch only")
    parser.add_argument("--device-path", default="auto", choices=["auto", "always", "never"])
    parser.add_argument("--cuda-graphs", action="store_true", help="pytorch on CUDA: a CUDA graph per batch size")
    parser.add_argument("--intra-op-threads", type=int, default=None,
                        help="onnxruntime: threads per inference (1 leaves the other cores to decode/pre/post, as a "
                             "GPU engine would)")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--frames", type=int, default=2048, help="frames per pipeline run (at least 16 batches)")
    parser.add_argument("--streams", type=int, default=8, help="looped copies of the sample video")
    parser.add_argument("--raw-seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    SETTINGS = StageSettings(device_path=args.device_path)
    options: dict[str, Any] = {}
    if args.backend == "onnxruntime" and args.intra_op_threads:
        options = {"intra_op_threads": args.intra_op_threads}
    if args.backend == "pytorch":
        options = {"precision": args.precision, "cuda_graphs": args.cuda_graphs,
                   **({"device": args.device} if args.device else {})}
    engine = load_engine(args.model, args.backend, options)
    adapter = adapter_for(args.model, engine.input_size, engine.output_names, args.model_type, None,
                          load_labels(LABELS))
    images = frames_of_video(64)
    rows = []
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        if engine.batch_sizes is not None and padded_batch_size(engine, size) != size:
            continue
        raw = raw_engine(engine, adapter, images, size, args.raw_seconds)
        pipe = asyncio.run(pipeline_run(engine, adapter, size, max(args.frames, 16 * size), args.streams))
        row = {"batch_size": size, "raw_engine_fps": round(raw, 1), "pipeline_fps": pipe["fps"],
               "pipeline_over_raw_engine": round(pipe["fps"] / raw, 3), **{k: v for k, v in pipe.items() if k != "fps"}}
        rows.append(row)
        s = row["stage_ms_per_batch"]
        print(f"batch {size:3d}: raw {raw:8.1f} fps  pipeline {pipe['fps']:8.1f} fps  ratio "
              f"{row['pipeline_over_raw_engine']:.3f}  per batch pre {s['pre']:.2f} infer {s['infer']:.2f} "
              f"post {s['post']:.2f} ms  gpu busy {pipe['gpu_busy_percent']}%  workers {pipe['workers']}", flush=True)
    result = {
        "machine": f"{platform.machine()} {psutil.cpu_count()} cores", "gpu": gpu_name(),
        "model": args.model.name, "model_type": adapter.model_type, "backend": engine.backend,
        "device": str(getattr(engine, "device", "")) or None, "precision": getattr(engine, "precision", None),
        "cuda_graphs": args.cuda_graphs, "pads_folded": getattr(engine, "pads_folded", None),
        "device_path": args.device_path, "chain": rows[0]["chain"] if rows else None, "streams": args.streams,
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
