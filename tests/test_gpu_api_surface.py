"""Every TensorRT, CUDA runtime and NVML call the GPU path makes exists: TensorRT in each version that
agents meet (8.6, 10.3, 10.7, 11.4), checked against those versions' real Python bindings; cuda-python
and nvidia-ml-py against the installed packages.

No GPU here, so nothing is built or run: the bindings are loaded with their C entry points stubbed
(``tests/tensorrt_releases.py``). This is what catches a call removed in a new major version, such as
``ICudaEngine.device_memory_size`` and ``BuilderFlag.FP16``, both gone in 11.x.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.tensorrt_releases import RELEASES, ROOT, NoWheelHere, Release, probe

SOURCES = [ROOT / "edge_agent" / "engines" / "tensorrt.py", ROOT / "model_registry" / "trt_build.py"]

# Names our code gives TensorRT objects, and the TensorRT class each one is.
RECEIVERS = {
    "self._engine": "ICudaEngine",
    "self._runtime": "Runtime",
    "context": "IExecutionContext",
    "builder": "Builder",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
}

# Reached only where trt_versions says the version has it (checked per version below).
VERSION_GATED = {"BuilderFlag.FP16": "the 8.x FP16 route (fp16_route == 'builder-flag')"}


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of plain names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def tensorrt_names_used(sources: list[Path]) -> tuple[set[str], set[str]]:
    """Dotted TensorRT names the sources touch, and which receivers were seen."""
    names: set[str] = set()
    seen: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            base = _dotted(node.value)
            if base in RECEIVERS:
                names.add(f"{RECEIVERS[base]}.{node.attr}")
                seen.add(base)
            elif base is not None and (base == "trt" or base.startswith("trt.")):
                names.add(f"{base}.{node.attr}"[len("trt."):])
    return names, seen


def module_names_used(sources: list[Path], module: str) -> set[str]:
    """Dotted names read from ``module`` (as the sources name it), without the module prefix."""
    names: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Attribute):
                base = _dotted(node.value)
                if base is not None and (base == module or base.startswith(f"{module}.")):
                    names.add(f"{base}.{node.attr}"[len(module) + 1:])
    return names


def missing_from(module: object, dotted_names: set[str]) -> list[str]:
    missing = []
    for dotted in sorted(dotted_names):
        obj = module
        for part in dotted.split("."):
            if not hasattr(obj, part):
                missing.append(dotted)
                break
            obj = getattr(obj, part)
    return missing


USED, SEEN = tensorrt_names_used(SOURCES)


def test_the_scan_finds_the_calls_it_is_meant_to_check() -> None:
    """Guards the scan itself: a renamed variable must not make the version checks pass vacuously."""
    assert set(RECEIVERS) == SEEN, f"receivers never seen in the sources: {set(RECEIVERS) - SEEN}"
    for name in ("IExecutionContext.execute_async_v3", "IExecutionContext.set_input_shape",
                 "IExecutionContext.set_tensor_address", "ICudaEngine.get_tensor_profile_shape",
                 "Runtime.deserialize_cuda_engine", "Builder.build_serialized_network",
                 "IOptimizationProfile.set_shape", "TensorIOMode.INPUT", "nptype"):
        assert name in USED, name
    assert set(VERSION_GATED) <= USED, "a version-gated name is no longer used: drop it from VERSION_GATED"


@pytest.mark.parametrize("release", RELEASES, ids=[r.version for r in RELEASES])
def test_every_tensorrt_call_exists_in(release: Release) -> None:
    required = sorted(USED - set(VERSION_GATED))
    try:
        answer = probe(release, required)
    except NoWheelHere as exc:
        pytest.skip(str(exc))
    assert str(answer["version"]).startswith(release.version[:4]), answer["version"]
    assert answer["missing"] == [], f"TensorRT {release.version} ({release.where}) lacks {answer['missing']}"
    assert answer["device_memory_attrs"], f"{release.version}: no way to read an engine's device memory"
    expected = answer["strongly_typed_bit"] or answer["explicit_batch_bit"]
    assert answer["network_flags"] == expected
    if answer["fp16_route"] == "builder-flag":
        assert answer["has_builder_fp16"], f"{release.version}: FP16 builder flag route, but no BuilderFlag.FP16"
    else:
        assert answer["strongly_typed_bit"] is not None


def test_what_each_version_gets() -> None:
    """The decisions that differ, pinned to the versions that force them."""
    try:
        by_version = {r.version: probe(r, []) for r in (RELEASES[0], RELEASES[-1])}
    except NoWheelHere as exc:
        pytest.skip(str(exc))
    xavier, latest = by_version["8.6.1"], by_version["11.4.0.106"]
    assert xavier["fp16_route"] == "builder-flag" and xavier["network_flags"] == xavier["explicit_batch_bit"]
    assert latest["fp16_route"] == "fp16-onnx" and not latest["has_builder_fp16"]
    assert latest["device_memory_attrs"] == ["device_memory_size_v2"]
    assert xavier["device_memory_attrs"] == ["device_memory_size"]


def test_every_cuda_runtime_call_exists() -> None:
    from cuda.bindings import runtime

    used = module_names_used(SOURCES, "cudart")
    assert {"cudaMemcpyAsync", "cudaMalloc", "cudaStreamCreate"} <= used
    assert missing_from(runtime, used) == []


def test_every_nvml_call_exists() -> None:
    import pynvml

    used = module_names_used([ROOT / "edge_agent" / "probes" / "nvml.py"], "pynvml")
    assert {"nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "NVMLError"} <= used
    assert missing_from(pynvml, used) == []
