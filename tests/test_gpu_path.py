"""The GPU path: what CPU CI can check (guards, builder metadata, target matching), and the real
TensorRT / NVML checks that run only where a GPU is present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.engines import available_backends, load_engine
from edge_agent.engines import pytorch as torch_backend
from edge_agent.engines import tensorrt as trt_backend
from edge_agent.errors import BackendUnavailable
from model_registry.artifacts import pick_artifact
from model_registry.trt_build import plan_builds, target_from_facts
from schemas import ArtifactInfo, ArtifactTarget
from tests.conftest import MODEL
from tests.test_nanodet import detect

HAS_GPU = trt_backend.available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with TensorRT + cuda-python (CI has none)")


def artifact(fmt: str, sizes: list[int], target: ArtifactTarget, created: float = 1.0, dynamic: bool = False):
    return ArtifactInfo(id=f"{fmt}{sizes}{target.sm}", name="m", version="1", batch_sizes=sizes, format=fmt,
                        dynamic_batch=dynamic, target=target, sha256="a" * 64, size_bytes=1, created=created)


ORIN = ArtifactTarget(platform="jetson-orin", sm="8.7", tensorrt="10.3.0", cuda="12.6")
XAVIER = ArtifactTarget(platform="jetson-xavier", sm="7.2", tensorrt="8.5.2", cuda="11.4")


def test_agent_picks_only_engines_built_for_its_target() -> None:
    candidates = [
        artifact("tensorrt", [4], XAVIER),
        artifact("tensorrt", [4], ORIN),
        artifact("onnx", [64], ArtifactTarget(), dynamic=True),
    ]
    assert pick_artifact(candidates, 4, ORIN).target == ORIN
    assert pick_artifact(candidates, 4, XAVIER).target == XAVIER
    other_trt = ORIN.model_copy(update={"tensorrt": "10.4.0"})
    assert pick_artifact(candidates, 4, other_trt).format == "onnx", "a TensorRT version mismatch falls back"
    assert pick_artifact(candidates, 8, ORIN).format == "onnx", "no engine for 8: the ONNX fallback"
    assert pick_artifact(candidates[:2], 8, ORIN) is None


def test_builder_plans_and_records_the_target() -> None:
    assert plan_builds([8, 1, 4], profiles=False) == [[1], [4], [8]]
    assert plan_builds([8, 1, 4], profiles=True) == [[1, 4, 8]]
    facts = {"platform": "jetson-orin", "sm": "8.7", "tensorrt": "10.3.0", "cuda": "12.6", "gpu_name": "Orin"}
    assert target_from_facts(facts) == ORIN


@pytest.mark.skipif(HAS_GPU, reason="TensorRT runs here: the TensorRT tests below cover the real path")
def test_without_tensorrt_the_backend_says_so_and_the_rest_works(tmp_path: Path) -> None:
    assert "onnxruntime" in available_backends() and "tensorrt" not in available_backends()
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(BackendUnavailable) as err:
        load_engine(plan, "tensorrt")
    assert "not installed" in str(err.value) or "no CUDA device" in str(err.value)
    result = subprocess.run([sys.executable, "-m", "model_registry.cli", "--store", str(tmp_path / "reg"), "build",
                             "--onnx", str(MODEL), "--name", "m", "--version", "1"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "cannot build TensorRT engines here" in result.stderr and "Traceback" not in result.stderr


def test_fp16_copy_keeps_float32_io_and_the_detections(tmp_path: Path, engine, decoder) -> None:
    """The FP16 route of TensorRT 10/11 builds: checked on CPU through ONNX Runtime."""
    import cv2
    import onnx

    from model_registry.precision import convert_to_fp16
    from tests.conftest import IMAGES

    half_path = convert_to_fp16(MODEL, tmp_path / "half.onnx")
    graph = onnx.load(str(half_path)).graph
    assert {v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]} == {onnx.TensorProto.FLOAT}
    weights = [w for w in graph.initializer if w.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert sum(w.data_type == onnx.TensorProto.FLOAT16 for w in weights) > 0.9 * len(weights)
    assert half_path.stat().st_size < 0.6 * MODEL.stat().st_size
    half = load_engine(half_path)
    for name in ("dog.jpg", "person.jpg", "coffee.png"):
        image = cv2.imread(str(IMAGES / name))
        full_found = detect(engine, decoder, [image])[0]
        half_found = detect(half, decoder, [image])[0]
        assert [d.label for d in half_found] == [d.label for d in full_found], name
        for a, b in zip(full_found, half_found, strict=True):
            assert np.allclose(a.box, b.box, atol=3.0) and abs(a.score - b.score) < 0.02, name


def test_fp16_conversion_rejects_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    from model_registry.errors import RegistryError
    from model_registry.precision import convert_to_fp16

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(RegistryError, match="not a readable ONNX model"):
        convert_to_fp16(bad, tmp_path / "out.onnx")


def test_version_shims_pick_what_the_engine_has() -> None:
    from types import SimpleNamespace

    from cuda.bindings import runtime

    from edge_agent.engines.trt_versions import engine_device_memory, stream_handle

    assert engine_device_memory(SimpleNamespace(device_memory_size=5)) == 5
    assert engine_device_memory(SimpleNamespace(device_memory_size_v2=7, device_memory_size=5)) == 7
    with pytest.raises(AttributeError):
        engine_device_memory(SimpleNamespace())
    assert stream_handle(runtime.cudaStream_t(0)) == 0


HAS_TORCH = torch_backend.available()


@pytest.mark.skipif(HAS_TORCH, reason="PyTorch is installed here: its real path runs in "
                    "test_pytorch_backend_matches_onnxruntime, and test_cli's "
                    "test_pytorch_missing_is_one_line_and_exit_2 runs the missing path with torch shadowed")
def test_without_pytorch_the_backend_says_so() -> None:
    with pytest.raises(BackendUnavailable, match="PyTorch is not installed|onnx2torch is not installed"):
        load_engine(MODEL, "pytorch")


@pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch + onnx2torch (the test command installs them)")
def test_pytorch_backend_matches_onnxruntime(engine) -> None:
    from onnx2torch.node_converters.pad import OnnxPadDynamic

    torch_engine = load_engine(MODEL, "pytorch")
    assert torch_engine.batch_sizes is None
    # NanoDet's 29 constant pads are folded (no .tolist() sync per call, so CUDA graphs can capture it) ...
    assert torch_engine.pads_folded == 29
    assert not any(isinstance(m, OnnxPadDynamic) for m in torch_engine._module.modules())
    batch = np.random.default_rng(1).standard_normal((2, 3, 416, 416)).astype(np.float32)
    expected = engine.infer(batch)
    got = torch_engine.infer(batch)
    assert set(got) == set(expected)
    # On CUDA, convolutions may run in TF32 (PyTorch's default): compare more loosely there.
    atol, rtol = (2e-3, 0.0) if str(getattr(torch_engine, "device", "cpu")) == "cpu" else (2e-2, 1e-2)
    for key, value in expected.items():  # ... and compute what ONNX Runtime computes
        assert got[key].shape == value.shape and np.allclose(got[key], value, atol=atol, rtol=rtol), key
    torch_engine.close()


@needs_gpu
def test_tensorrt_engine_matches_onnxruntime(tmp_path: Path) -> None:
    from model_registry.export import inspect_onnx
    from model_registry.trt_build import build_engine

    name = inspect_onnx(MODEL).input_name
    plan = build_engine(MODEL, name, [1, 4], fp16=False, out=tmp_path / "b14.plan")
    engine = load_engine(plan, "tensorrt")
    assert engine.batch_sizes == frozenset({1, 4})
    batch = np.random.default_rng(0).standard_normal((4, 3, 416, 416)).astype(np.float32)
    trt_out = engine.infer(batch)
    ort_out = load_engine(MODEL).infer(batch)
    for key, value in ort_out.items():
        assert np.allclose(trt_out[key], value, atol=2e-2), key
    assert engine.memory_bytes() > 0
    engine.close()


@needs_gpu
def test_tensorrt_fp16_engine_keeps_the_detections(tmp_path: Path, engine, decoder) -> None:
    import cv2

    from model_registry.export import inspect_onnx
    from model_registry.trt_build import build_engine
    from tests.conftest import IMAGES

    plan = build_engine(MODEL, inspect_onnx(MODEL).input_name, [1], fp16=True, out=tmp_path / "b1-fp16.plan")
    half = load_engine(plan, "tensorrt")
    image = cv2.imread(str(IMAGES / "dog.jpg"))
    full_found = detect(engine, decoder, [image])[0]
    half_found = detect(half, decoder, [image])[0]
    assert [d.label for d in half_found] == [d.label for d in full_found]
    half.close()


@needs_gpu
async def test_tensorrt_engines_are_built_pushed_and_swapped_per_batch_size(tmp_path: Path, decoder,
                                                                            short_video: Path) -> None:
    """The issue's acceptance on a GPU: build per-size engines, store them, load the device's pick,
    swap batch size (an engine swap) mid-stream with no frame lost, and see GPU memory in the probe."""
    import asyncio
    from argparse import Namespace

    from edge_agent.pipeline import Pipeline, PipelineConfig
    from edge_agent.probes import auto_probe
    from edge_agent.sources import open_sources
    from edge_agent.swap import ArtifactCache, EngineSwapper, local_device_target
    from model_registry.registry import Registry
    from model_registry.stores.local import LocalDirectoryStore
    from model_registry.trt_build import build_and_push
    from tests.test_pipeline import CollectingSink

    registry = Registry(LocalDirectoryStore(tmp_path / "registry"))
    pushed = await build_and_push(registry, Namespace(onnx=MODEL, name="nanodet", version="1", batch_sizes=[2, 4],
                                                      profiles=False, fp16=False, workdir=tmp_path / "engines",
                                                      model_type=None))
    assert sorted(a.batch_sizes for a in pushed) == [[2], [4]] and {a.format for a in pushed} == {"tensorrt"}
    assert {a.model_type for a in pushed} == {"nanodet"}, "a plan records the type of the ONNX it was built from"
    swapper = EngineSwapper(registry.store, ArtifactCache(tmp_path / "cache"), local_device_target())
    probe = auto_probe()
    assert probe.name == "nvml"
    engines = {}
    for size in (2, 4):
        info = await swapper.resolve("nanodet", "1", size)
        assert info.format == "tensorrt" and info.batch_sizes == [size]
        engines[size], _ = await swapper.load(info, size, probe)
    sources = await open_sources([str(short_video), str(short_video)])
    sink = CollectingSink()
    pipeline = Pipeline(sources, engines[2], decoder, PipelineConfig(batch_size=2, realtime=False), [sink])
    switched: list[asyncio.Future[float]] = []

    def on_batch(batch, serving) -> None:
        if len(sink.batches) == 5 and not switched:
            switched.append(pipeline.switch(batch_size=4, engine=engines[4]))

    pipeline.batch_listeners.append(on_batch)
    summary = await pipeline.run()
    assert summary.frames_in == summary.frames_out == 80 and summary.dropped == 0 and sink.closed
    assert switched and switched[0].done() and 4 in sink.batches
    assert engines[4].memory_bytes() > 0
    sample = probe.sample()
    assert sample.gpu_memory_used_bytes and sample.gpu_memory_used_bytes > engines[4].memory_bytes()
    engines[4].close()


def _nvml_available() -> bool:
    from edge_agent.probes import nvml

    return nvml.available()


@pytest.mark.skipif(_nvml_available(), reason="an NVIDIA driver is here: test_nvml_probe_reports_gpu_memory covers it")
def test_without_a_driver_nvml_is_not_chosen_and_says_why() -> None:
    """The real nvidia-ml-py (a test extra) against a machine with no libnvidia-ml."""
    import pynvml

    from edge_agent.probes import auto_probe
    from edge_agent.probes.nvml import NvmlProbe

    with pytest.raises(pynvml.NVMLError):
        NvmlProbe()
    assert auto_probe().name in ("host", "tegra")


@pytest.mark.skipif(not _nvml_available(), reason="needs an NVIDIA driver with NVML (CI has none)")
def test_nvml_probe_reports_gpu_memory() -> None:
    from edge_agent.probes.nvml import NvmlProbe

    sample = NvmlProbe().sample()
    assert sample.gpu_memory_total_bytes > sample.gpu_memory_used_bytes > 0
    assert 0 <= sample.gpu_util_pct <= 100
