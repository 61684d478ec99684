"""Inference backends, one module each, behind the InferenceEngine Protocol."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.engines import onnxruntime as _ort
from edge_agent.engines.base import (
    InferenceEngine,
    is_out_of_memory,
    padded_batch_size,
    run_padded,
    stack_padded,
)
from edge_agent.errors import BackendUnavailable

EngineFactory = Callable[..., InferenceEngine]  # (path, **the backend's options: engines/settings.py)


def _onnxruntime(path: str | Path, **options: Any) -> InferenceEngine:
    return _ort.OnnxRuntimeEngine(path, **options)


def _tensorrt(path: str | Path, **options: Any) -> InferenceEngine:
    from edge_agent.engines import tensorrt as _trt  # import-guarded inside the module

    return _trt.TensorRtEngine(path, **options)


def _pytorch(path: str | Path, **options: Any) -> InferenceEngine:
    from edge_agent.engines import pytorch as _torch  # import-guarded inside the module

    return _torch.PyTorchEngine(path, **options)


BACKENDS: dict[str, EngineFactory] = {"onnxruntime": _onnxruntime, "tensorrt": _tensorrt, "pytorch": _pytorch}
FORMAT_BACKEND = {"onnx": "onnxruntime", "tensorrt": "tensorrt"}


def load_engine(path: str | Path, backend: str = "onnxruntime",
                options: Mapping[str, Any] | None = None) -> InferenceEngine:
    """``options``: the backend's own settings (``engines/settings.py``), as keyword arguments."""
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {backend!r}; known: {sorted(BACKENDS)}") from None
    return factory(path, **(options or {}))


def available_backends() -> list[str]:
    found = ["onnxruntime"] if _ort.available() else []
    try:
        from edge_agent.engines import tensorrt as _trt

        if _trt.available():
            found.append("tensorrt")
    except ImportError:
        pass
    # Whether PyTorch and onnx2torch are installed, without importing them: importing torch takes seconds, and the
    # agent's first status (which lists these) must not wait for it. A broken install says so when loaded.
    if "edge_agent.engines.pytorch" in sys.modules:
        if sys.modules["edge_agent.engines.pytorch"].available():
            found.append("pytorch")
    elif all(importlib.util.find_spec(name) is not None for name in ("torch", "onnx2torch")):
        found.append("pytorch")
    return found


__all__ = ["BACKENDS", "InferenceEngine", "available_backends", "is_out_of_memory", "load_engine", "padded_batch_size",
           "run_padded", "stack_padded"]
