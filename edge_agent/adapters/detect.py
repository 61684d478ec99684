"""Tell a model's family from its ONNX graph: output names, output shapes, metadata.

Only unambiguous cases are answered; anything else asks for ``--model-type``.
"""

from __future__ import annotations

import ast
from typing import Any

from edge_agent import nanodet
from edge_agent.adapters.base import AdapterError
from schemas import MODEL_TYPES

_STRIDE_SETS = ((8, 16, 32), (16, 32), (8, 16, 32, 64), (32,))
_ANCHORS_PER_CELL = 3


def _dims(value_info: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def input_size_of(model: Any) -> tuple[int, int] | None:
    """(width, height) of the first graph input that is not an initializer, if static."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        return None
    dims = _dims(inputs[0])
    if len(dims) != 4 or dims[2] is None or dims[3] is None:
        return None
    return dims[3], dims[2]


def labels_from_metadata(model: Any) -> list[str] | None:
    """Class names from ultralytics-style ``names`` metadata (``{0: 'person', ...}``) or a list."""
    props = {p.key: p.value for p in model.metadata_props}
    raw = props.get("names")
    if raw is None:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list | tuple):
        return [str(n) for n in names]
    return None


def _cells(size: tuple[int, int], strides: tuple[int, ...]) -> int:
    return sum(-(-size[0] // s) * -(-size[1] // s) for s in strides)


def check_model_type(model: Any, given: str) -> None:
    """Refuse a ``--model-type`` that contradicts what the graph says unambiguously (an ambiguous graph takes
    what it is given; the adapter's own checks still apply)."""
    try:
        inferred = detect_model_type(model)
    except AdapterError:
        return
    if inferred != given:
        shapes = ", ".join(f"{o.name} {_dims(o)}" for o in model.graph.output)
        raise AdapterError(f"--model-type {given} contradicts the model: its outputs are those of a {inferred} "
                           f"model ({shapes}); the types are {', '.join(MODEL_TYPES)}")


def detect_model_type(model: Any) -> str:
    """``nanodet``, ``yolo-v5`` or ``yolo-ultralytics`` from an ``onnx.ModelProto`` (``yolox`` shares
    v5's shape, so it is never inferred); raises
    ``AdapterError`` when the graph does not say clearly."""
    outputs = list(model.graph.output)
    names = {o.name for o in outputs}
    if set(nanodet.OUTPUT_NAMES) <= names:
        return "nanodet"
    hint = f"; give the model type with --model-type ({', '.join(MODEL_TYPES)})"
    task = {p.key: p.value for p in model.metadata_props}.get("task")
    if task not in (None, "detect"):  # ultralytics writes its task: segment, pose, obb and classify differ
        raise AdapterError(f"the model's metadata says task {task!r}; only detection models are served")
    if len(outputs) != 1:
        raise AdapterError(f"{len(outputs)} outputs {sorted(names)}: not a known single-head layout{hint}")
    dims = _dims(outputs[0])
    if len(dims) != 3 or dims[1] is None or dims[2] is None or dims[1] == dims[2]:
        raise AdapterError(f"output {outputs[0].name} has shape {dims}: cannot tell rows from columns{hint}")
    size = input_size_of(model)
    rows, width = (dims[1], dims[2]) if dims[1] > dims[2] else (dims[2], dims[1])
    cells = {_cells(size, s) for s in _STRIDE_SETS} if size else set()
    labels = labels_from_metadata(model)
    if dims[1] < dims[2]:
        # [B, 4+C, N]: only the ultralytics head puts the boxes along the last axis.
        if labels is not None and width != 4 + len(labels):
            raise AdapterError(f"output {dims} does not fit 4 + {len(labels)} classes{hint}")
        return "yolo-ultralytics"
    # [B, N, K]: v5/v7 and converted darknet heads have 3 anchors per cell. One row per cell is
    # an anchor-free head: YOLOX's export leaves it raw, others (YOLOv6) decode it in the graph.
    if rows in cells:
        raise AdapterError(
            f"output {dims} has one row per cell: YOLOX's raw head (--model-type yolox) or an anchor-free "
            f"head decoded in the graph (--model-type yolo-v5){hint}"
        )
    if rows in {_ANCHORS_PER_CELL * c for c in cells}:
        if labels is not None and width != 5 + len(labels):
            raise AdapterError(f"output {dims} does not fit 5 + {len(labels)} classes{hint}")
        return "yolo-v5"
    raise AdapterError(
        f"output {dims} with input {size}: {rows} rows is not 3 anchors per cell of a known stride set{hint}"
    )
