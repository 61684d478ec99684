"""PyTorch backend: the ONNX model converted by onnx2torch, run on CUDA when PyTorch sees a GPU.

For GPU machines that have PyTorch but where TensorRT and onnxruntime-gpu cannot be installed. On a GPU
it takes device tensors (``infer_device``), so the device chain (edge_agent/stages/device.py) feeds it
without the host; constant pads are folded, fp16 is used where it agrees with fp32, and CUDA graphs per
batch size are an option. Import-guarded: where PyTorch or onnx2torch is missing the backend says so
and the rest works.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from edge_agent.engines.base import check_io, check_model_path
from edge_agent.errors import BackendUnavailable, ModelError

KEY = "pytorch"
log = logging.getLogger(__name__)

try:
    import torch
except ImportError:
    torch = None  # type: ignore[assignment]

def _import_onnx2torch() -> Any:
    """onnx2torch's ``convert``, or None. onnx2torch imports torchvision for two converters (NMS, RoiAlign)
    only; where torchvision cannot load beside this torch (PyPI's CUDA torchvision next to a CPU torch),
    a stand-in lets the rest load, and a model with those ops fails to convert with a clear error."""
    try:
        from onnx2torch import convert as found
    except ImportError as exc:
        if "torchvision" not in str(exc) and not isinstance(exc.__context__, RuntimeError):
            return None
    except RuntimeError:  # torchvision's extension did not load
        pass
    else:
        return found
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith(("torchvision.", "onnx2torch"))]:
        del sys.modules[name]
    stand_in, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

    def unavailable(*_args: object, **_kwargs: object) -> None:
        raise NotImplementedError("torchvision cannot load here: models with NonMaxSuppression or RoiAlign "
                                  "nodes cannot run on the pytorch backend")

    ops.nms = ops.roi_align = ops.box_convert = unavailable  # type: ignore[attr-defined]
    stand_in.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stand_in, ops
    try:
        from onnx2torch import convert as found
    except ImportError:
        return None
    return found


convert = _import_onnx2torch() if torch is not None else None


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

    def __init__(self, path: str | Path, device: str | None = None,
                 precision: Literal["auto", "fp32", "fp16"] = "auto", cuda_graphs: bool = False) -> None:
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
        from edge_agent.engines.torch_graph import GraphRunner, fold_constant_pads, half_if_it_agrees

        self.pads_folded = fold_constant_pads(self._module)
        # fp16 halves the memory traffic on a GPU. "auto" takes it there only if this model's fp16 outputs agree
        # with its fp32 ones on a probe input (a model whose activations overflow fp16 stays fp32; the
        # detections' agreement is checked by the tests on the sample photos); fp32 on the CPU, where half is slower.
        self.precision = "fp16" if precision == "fp16" else "fp32"
        self.fp16_error: float | None = None  # the probe's worst relative difference, where it ran
        if precision == "fp16":
            self._module = self._module.half()
        elif precision == "auto" and self.device.type == "cuda":
            half, self.fp16_error = half_if_it_agrees(self._module, self.input_size, self.device)
            if half is not None:
                self._module, self.precision = half, "fp16"
            else:
                log.warning("%s: fp16 outputs differ from fp32 by %.3g (relative): serving fp32", self.path,
                            self.fp16_error)
        self.input_dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self._run = GraphRunner(self._module, self.device) if cuda_graphs and self.on_gpu else self._module
        if self.on_gpu:
            # .to() and .half() were queued on the default stream; the stages run on streams of their own.
            torch.cuda.synchronize(self.device)

    @property
    def on_gpu(self) -> bool:
        return bool(self.device.type == "cuda")

    def infer_device(self, batch: Any) -> dict[str, Any]:
        """Run a ``[B, 3, H, W]`` tensor already on the device (of ``input_dtype``); the outputs stay there."""
        with torch.inference_mode():
            outputs = self._run(batch.to(self.input_dtype))
        if not isinstance(outputs, (tuple, list)):
            outputs = (outputs,)
        return dict(zip(self._output_names, outputs, strict=True))

    @property
    def batch_sizes(self) -> frozenset[int] | None:
        return self._batch_sizes

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device, self.input_dtype)
            outputs = self._run(tensor)
            if not isinstance(outputs, (tuple, list)):
                outputs = (outputs,)
            host = [o.float().cpu().numpy() for o in outputs]  # .cpu() waits for the GPU
        return dict(zip(self._output_names, host, strict=True))

    def memory_bytes(self) -> int | None:
        if self.device.type != "cuda":
            return None  # CPU tensors are part of the process RSS the host probe reports
        return int(torch.cuda.memory_reserved(self.device))

    def close(self) -> None:
        self._module = self._run = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
