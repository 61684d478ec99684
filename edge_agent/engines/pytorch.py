"""PyTorch backend: the ONNX model converted by onnx2torch, run on CUDA when PyTorch sees a GPU.

For GPU machines that have PyTorch but where TensorRT and onnxruntime-gpu cannot be installed:
it gives real GPU timings per batch size through the same pipeline and profiler. Import-guarded:
where PyTorch or onnx2torch is missing the backend says so and the rest works.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edge_agent.engines.base import check_io, check_model_path
from edge_agent.errors import BackendUnavailable, ModelError

KEY = "pytorch"

try:
    import torch
except ImportError:
    torch = None  # type: ignore[assignment]
try:
    from onnx2torch import convert
except ImportError:
    convert = None


def missing_runtime() -> str | None:
    if torch is None:
        return "PyTorch is not installed"
    if convert is None:
        return "onnx2torch is not installed (pip install onnx2torch)"
    return None


def available() -> bool:
    return missing_runtime() is None


def _dims(value: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim]


class PyTorchEngine:
    backend = KEY

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        problem = missing_runtime()
        if problem:
            raise BackendUnavailable(problem)
        self.path = str(path)
        try:
            model = onnx.load(str(check_model_path(path)))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(self.path, f"not a loadable ONNX model ({exc})") from exc
        weights = {w.name for w in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in weights]
        if len(inputs) != 1:
            raise ModelError(self.path, f"expected one input, found {len(inputs)}")
        self._output_names = self.output_names = [o.name for o in model.graph.output]
        self._batch_sizes, self.input_size = check_io(self.path, _dims(inputs[0]))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self._module = convert(model).eval().to(self.device)
        except Exception as exc:  # onnx2torch raises NotImplementedError and friends for unsupported ops
            raise ModelError(self.path, f"onnx2torch cannot convert it ({exc})") from exc

    @property
    def batch_sizes(self) -> frozenset[int] | None:
        return self._batch_sizes

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            outputs = self._module(tensor)
            if not isinstance(outputs, (tuple, list)):
                outputs = (outputs,)
            host = [o.float().cpu().numpy() for o in outputs]  # .cpu() waits for the GPU
        return dict(zip(self._output_names, host, strict=True))

    def memory_bytes(self) -> int | None:
        if self.device.type != "cuda":
            return None  # CPU tensors are part of the process RSS the host probe reports
        return int(torch.cuda.memory_reserved(self.device))

    def close(self) -> None:
        self._module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
