"""Pick and check the adapter for a loaded engine: ``--model-type`` if given, else inferred from the ONNX."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_agent.adapters.base import AdapterError, DecoderConfig, ModelAdapter
from edge_agent.adapters.detect import check_model_type, detect_model_type, labels_from_metadata

DEFAULT_MODEL_TYPE = "nanodet"


def read_onnx(path: Path) -> Any | None:
    """The graph of an ONNX file without its weights, or None for anything else (a TensorRT plan)."""
    if path.suffix.lower() != ".onnx":
        return None
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for a file that is not a model
        raise AdapterError(f"not a readable ONNX model ({type(exc).__name__})") from exc


def adapter_for(
    model_path: Path | None,
    input_size: tuple[int, int],
    output_names: Sequence[str],
    model_type: str | None,
    labels: Sequence[str] | None,
    default_labels: Sequence[str],
    config: DecoderConfig | None = None,
) -> ModelAdapter:
    """The adapter for an engine with this input (width, height) and these outputs.

    ``model_type`` wins; else the type is inferred from ``model_path`` when it is ONNX; else NanoDet
    (a TensorRT plan carries no graph to read). ``labels`` (a labels file) win over the model's own
    metadata, which wins over ``default_labels``."""
    from edge_agent.adapters import make_adapter

    model = read_onnx(model_path) if model_path is not None else None
    if model_type is None:
        model_type = detect_model_type(model) if model is not None else DEFAULT_MODEL_TYPE
    elif model is not None:
        check_model_type(model, model_type)
    if labels is None:
        labels = (labels_from_metadata(model) if model is not None else None) or default_labels
    adapter = make_adapter(model_type, labels, input_size, config)
    adapter.check_engine(input_size, output_names)
    return adapter
