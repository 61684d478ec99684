"""Model adapters: one per detector family, each owning its pre-processing and output decoding."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edge_agent.adapters.base import (
    AdapterError,
    DecoderConfig,
    ModelAdapter,
    Placement,
    PreprocessSpec,
    letterbox_image,
    placement,
    preprocess_with,
)
from edge_agent.adapters.detect import check_model_type, detect_model_type, input_size_of, labels_from_metadata
from edge_agent.adapters.nanodet import NanoDetAdapter
from edge_agent.adapters.select import DEFAULT_MODEL_TYPE, adapter_for, read_onnx
from edge_agent.adapters.yolo import YoloUltralyticsAdapter, YoloV5Adapter, YoloXAdapter

__all__ = [
    "ADAPTERS",
    "DEFAULT_MODEL_TYPE",
    "AdapterError",
    "DecoderConfig",
    "ModelAdapter",
    "NanoDetAdapter",
    "Placement",
    "PreprocessSpec",
    "YoloUltralyticsAdapter",
    "YoloV5Adapter",
    "YoloXAdapter",
    "adapter_for",
    "check_model_type",
    "detect_model_type",
    "input_size_of",
    "labels_from_metadata",
    "letterbox_image",
    "make_adapter",
    "placement",
    "preprocess_with",
    "read_onnx",
]


def _nanodet(labels: Sequence[str], input_size: tuple[int, int] | None, config: DecoderConfig | None) -> ModelAdapter:
    return NanoDetAdapter(labels, config)  # its fixed 416x416 input is checked by check_engine


def _v5(labels: Sequence[str], input_size: tuple[int, int] | None, config: DecoderConfig | None) -> ModelAdapter:
    return YoloV5Adapter(labels, input_size or (640, 640), config)


def _ultralytics(
    labels: Sequence[str], input_size: tuple[int, int] | None, config: DecoderConfig | None
) -> ModelAdapter:
    return YoloUltralyticsAdapter(labels, input_size or (640, 640), config)


def _yolox(labels: Sequence[str], input_size: tuple[int, int] | None, config: DecoderConfig | None) -> ModelAdapter:
    return YoloXAdapter(labels, input_size or (640, 640), config)


ADAPTERS: dict[str, Callable[[Sequence[str], tuple[int, int] | None, DecoderConfig | None], ModelAdapter]] = {
    "nanodet": _nanodet,
    "yolo-v5": _v5,
    "yolo-ultralytics": _ultralytics,
    "yolox": _yolox,
}


def make_adapter(
    model_type: str,
    labels: Sequence[str],
    input_size: tuple[int, int] | None = None,
    config: DecoderConfig | None = None,
) -> ModelAdapter:
    """The adapter registered under ``model_type``; ``input_size`` is (width, height)."""
    try:
        factory = ADAPTERS[model_type]
    except KeyError:
        raise AdapterError(f"unknown model type {model_type!r}; known: {', '.join(sorted(ADAPTERS))}") from None
    return factory(labels, input_size, config)
