"""Static-batch ONNX export: one artifact per batch size, as the paper built one engine per size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from model_registry.errors import RegistryError


@dataclass(frozen=True)
class OnnxShape:
    input_name: str
    batch: int | None  # None: dynamic batch axis


def inspect_onnx(path: Path) -> OnnxShape:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise RegistryError(f"{path}: not an ONNX model ({type(exc).__name__})") from exc
    if not model.graph.input:
        raise RegistryError(f"{path}: ONNX model has no input")
    first = model.graph.input[0]
    dims = first.type.tensor_type.shape.dim
    if not dims:
        raise RegistryError(f"{path}: input {first.name} has no shape")
    batch = dims[0].dim_value if dims[0].HasField("dim_value") else None
    return OnnxShape(first.name, batch or None)


def export_static_batch(source: Path, batch_size: int, destination: Path) -> Path:
    """Copy ``source`` with its batch axis fixed to ``batch_size`` on every input and output."""
    model = onnx.load(str(source))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch_size
    del model.graph.value_info[:]  # stale intermediate shapes would contradict the new batch axis
    onnx.save(model, str(destination))
    return destination
