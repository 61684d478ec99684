"""ONNX Runtime backend: the CPU default, with CUDA / TensorRT execution providers when present."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_agent.engines.base import check_io, check_model_path
from edge_agent.errors import BackendUnavailable, ModelError

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - onnxruntime is a hard dependency
    ort = None

log = logging.getLogger(__name__)

KEY = "onnxruntime"
# Preferred order: the fastest provider this onnxruntime build offers comes first.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available() -> bool:
    return ort is not None


def default_providers() -> list[str]:
    if ort is None:
        return []
    have = set(ort.get_available_providers())
    return [p for p in PROVIDER_PREFERENCE if p in have]


class OnnxRuntimeEngine:
    """An ONNX model in an ``onnxruntime.InferenceSession``."""

    backend = KEY

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        allow_spinning: bool = False,
    ) -> None:
        if ort is None:
            raise BackendUnavailable("onnxruntime is not installed")
        self.path = str(path)
        model_path = check_model_path(path)
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        if not allow_spinning:
            # Spinning intra-op threads burn the cores the pipeline's decode/pre/post threads need.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.providers = providers or default_providers()
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors (Fail, InvalidProtobuf, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(self.path, f"not a loadable ONNX model ({first[:200]})") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(self.path, f"expected one input, found {len(inputs)}")
        self._input_name = inputs[0].name
        self._output_names = self.output_names = [o.name for o in self._session.get_outputs()]
        self._batch_sizes, self.input_size = check_io(self.path, list(inputs[0].shape))
        log.info("loaded %s on %s", self.path, self._session.get_providers())

    @property
    def batch_sizes(self) -> frozenset[int] | None:
        return self._batch_sizes

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, {self._input_name: batch})
        return dict(zip(self._output_names, results, strict=True))

    def memory_bytes(self) -> int | None:
        return None  # the CPU arena is part of the process RSS the host probe reports

    def close(self) -> None:
        self._session = None
