"""What differs between the TensorRT versions edge agents meet, decided from the module itself.

- 8.6 (Jetson Xavier, JetPack 5.1): networks need ``EXPLICIT_BATCH``; FP16 is a builder flag.
- 10.x (Jetson Orin JetPack 6: 10.3; x86 NGC images: 10.x): ``STRONGLY_TYPED`` networks exist;
  ``device_memory_size_v2`` replaces ``device_memory_size``.
- 11.x (current pip wheels): weak typing is gone (no ``BuilderFlag.FP16``, no
  ``platform_has_fast_fp16``, no ``device_memory_size``); reduced precision comes from the
  model's own types, so FP16 means building from an FP16 ONNX.

Each function takes the ``tensorrt`` module (or one of its objects) so the choice is made by what
that module has, not by parsing version strings; ``tests/test_gpu_api_surface.py`` runs them against
the real bindings of each version.
"""

from __future__ import annotations

from typing import Any, Literal

DEVICE_MEMORY_ATTRS = ("device_memory_size_v2", "device_memory_size")
"""Per-context device memory of an ICudaEngine, newest name first."""

Fp16Route = Literal["fp16-onnx", "builder-flag"]


def strongly_typed(trt: Any) -> bool:
    return hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def network_flags(trt: Any) -> int:
    """Creation flags: strongly typed where the version has it, else explicit batch (8.x)."""
    flags = trt.NetworkDefinitionCreationFlag
    flag = flags.STRONGLY_TYPED if strongly_typed(trt) else flags.EXPLICIT_BATCH
    return 1 << int(flag)


def fp16_route(trt: Any) -> Fp16Route:
    """How to get an FP16 engine: convert the ONNX (strongly typed) or set the 8.x builder flag."""
    return "fp16-onnx" if strongly_typed(trt) else "builder-flag"


def engine_device_memory(engine: Any) -> int:
    """Device memory one execution context of ``engine`` needs."""
    for name in DEVICE_MEMORY_ATTRS:
        value = getattr(engine, name, None)
        if value is not None:
            return int(value)
    raise AttributeError(f"ICudaEngine has none of {DEVICE_MEMORY_ATTRS}")


def stream_handle(stream: Any) -> int:
    """A cuda-python stream as the integer handle TensorRT's Python API takes."""
    return int(stream)
