"""FP16 copies of an ONNX model, for strongly typed TensorRT builds (the only FP16 route in 11.x).

Inputs and outputs stay float32 (``keep_io_types``), so agents feed and read the same buffers
whatever the precision; ops that are unsafe in FP16 stay float32 behind casts.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
from onnxconverter_common import float16

from model_registry.errors import RegistryError

log = logging.getLogger(__name__)


def convert_to_fp16(source: Path, out: Path) -> Path:
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError, OSError, ... on a bad file
        raise RegistryError(f"{source}: not a readable ONNX model ({exc})") from exc
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    if caught:  # constants outside FP16's range (e.g. -inf masks) are clamped to +-10000
        log.info("%s: %d constants clamped to the FP16 range", source.name, len(caught))
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(out))
    return out
