"""The inference-engine Protocol every backend implements."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edge_agent.errors import ModelError


@runtime_checkable
class InferenceEngine(Protocol):
    """A loaded model that runs one batch at a time, on the thread that calls it."""

    backend: str
    path: str
    input_size: tuple[int, int]  # (width, height) of the network input
    output_names: list[str]

    @property
    def batch_sizes(self) -> frozenset[int] | None:
        """Batch sizes it can run: None for any size (dynamic batch axis)."""
        ...

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a float32 [B, 3, H, W] batch; return the output tensors by name (the adapter decodes them)."""
        ...

    def memory_bytes(self) -> int | None:
        """Device memory this engine holds, if the backend can tell."""
        ...

    def close(self) -> None: ...


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a backend running out of (device) memory: PyTorch's ``OutOfMemoryError``, CUDA's
    and ONNX Runtime's allocation failures, Python's ``MemoryError``."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation"))


def padded_batch_size(engine: InferenceEngine, frames: int) -> int:
    """The batch the engine must run to serve ``frames`` images (static engines pad)."""
    sizes = engine.batch_sizes
    if sizes is None or frames in sizes:
        return frames
    fitting = sorted(s for s in sizes if s >= frames)
    if not fitting:
        raise ValueError(f"engine serves batch sizes {sorted(sizes)}, cannot run {frames} frames")
    return fitting[0]


def stack_padded(engine: InferenceEngine, tensors: list[np.ndarray]) -> np.ndarray:
    """Stack per-frame tensors into the batch ``engine`` runs, zero rows padding a static size:
    one copy, however the batch is padded."""
    size = padded_batch_size(engine, len(tensors))
    batch = np.zeros((size, *tensors[0].shape), dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        batch[i] = t
    return batch


def run_padded(engine: InferenceEngine, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``batch`` on ``engine``, padding with zeros to a size a static engine serves."""
    if padded_batch_size(engine, batch.shape[0]) != batch.shape[0]:
        batch = stack_padded(engine, list(batch))
    return engine.infer(batch)


def check_model_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelError(str(path), "file not found")
    if not p.is_file():
        raise ModelError(str(path), "not a file")
    return p


def check_io(path: str, input_shape: list[object]) -> tuple[frozenset[int] | None, tuple[int, int]]:
    """Validate that a model takes one image batch [batch, 3, H, W] of a fixed size; return its static
    batch size if any and (W, H). Whether its outputs fit is the model adapter's check."""
    if len(input_shape) != 4:
        raise ModelError(path, f"input has rank {len(input_shape)}, expected [batch, 3, height, width]")
    _, c, h, w = input_shape
    if c != 3 or not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ModelError(path, f"input shape {input_shape} does not fit [batch, 3, height, width] with a fixed size")
    batch = input_shape[0]
    return (frozenset({batch}) if isinstance(batch, int) and batch > 0 else None), (w, h)
