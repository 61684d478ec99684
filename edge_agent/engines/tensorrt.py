"""TensorRT backend (tensor-name API, ``execute_async_v3``; buffers and streams through cuda-python).

Serves an engine built for one batch size, or one engine with an optimization profile per batch
size: then a batch change only selects another execution context, no load at all. Runs on the
pipeline's inference thread. Works with TensorRT 8.6 (Xavier), 10.x (Orin, NGC images) and 11.x
(``trt_versions`` holds the differences). Import-guarded: where TensorRT or CUDA is missing the
backend says so.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.engines.base import check_io, check_model_path
from edge_agent.engines.trt_versions import engine_device_memory, stream_handle
from edge_agent.errors import BackendUnavailable, ModelError

log = logging.getLogger(__name__)

KEY = "tensorrt"

try:
    import tensorrt as trt
except ImportError:
    trt = None

try:
    from cuda.bindings import runtime as cudart
except ImportError:
    try:
        from cuda import cudart  # cuda-python < 12.6
    except ImportError:
        cudart = None


def available() -> bool:
    if trt is None or cudart is None:
        return False
    err, count = cudart.cudaGetDeviceCount()
    return int(err) == 0 and count > 0


def missing_runtime() -> str | None:
    if trt is None:
        return "TensorRT is not installed (pip install tensorrt, or use an L4T/TensorRT image)"
    if cudart is None:
        return "cuda-python is not installed (pip install cuda-python)"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return "no CUDA device is visible"
    return None


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (error, value...) tuples; raise on anything but success."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: CUDA error {int(err)} ({err})")
    return values[0] if len(values) == 1 else values


def device_facts() -> dict[str, str]:
    """Platform, compute capability, TensorRT and CUDA versions of this device (engine target)."""
    if missing_runtime():
        raise BackendUnavailable(missing_runtime() or "")
    props = _check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    version = int(_check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))
    tegra = Path("/etc/nv_tegra_release").exists()
    model = Path("/proc/device-tree/model")
    name = model.read_text().strip("\x00\n ").lower().replace(" ", "-") if tegra and model.exists() else ""
    return {
        "platform": f"jetson-{name or 'unknown'}" if tegra else f"{platform.machine()}-cuda",
        "sm": f"{props.major}.{props.minor}",
        "tensorrt": trt.__version__,
        "cuda": f"{version // 1000}.{(version % 1000) // 10}",
        "gpu_name": props.name.decode() if isinstance(props.name, bytes) else str(props.name),
    }


def _torch_dtype(dtype: np.dtype) -> Any:
    """The torch dtype of an engine binding's NumPy dtype, for the device chain's output tensors."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "int32": torch.int32, "int64": torch.int64,
            "int8": torch.int8, "bool": torch.bool}[dtype.name]


@dataclass
class _Binding:
    name: str
    is_input: bool
    dtype: np.dtype
    device_ptr: int
    capacity_bytes: int


class TensorRtEngine:
    backend = KEY

    def __init__(self, path: str | Path) -> None:
        problem = missing_runtime()
        if problem:
            raise BackendUnavailable(problem)
        self.path = str(path)
        data = check_model_path(path).read_bytes()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise ModelError(self.path, "not a TensorRT engine for this GPU / TensorRT version")
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ModelError(self.path, f"expected one input, found {len(inputs)}")
        self._input = inputs[0]
        self._outputs = [n for n in names if n != self._input]
        dims = [int(d) for d in self._engine.get_tensor_shape(self._input)]
        fixed_batch = dims[0] if dims[0] != -1 else None
        # One execution context per optimization profile; each profile serves a batch range.
        # An engine built from a fixed-shape model has no profile to ask: it serves its own batch.
        self._contexts: list[tuple[int, int, Any]] = []
        self._stream_handle = stream_handle(self._stream)
        for index in range(self._engine.num_optimization_profiles):
            if fixed_batch is None:
                lo, _, hi = self._engine.get_tensor_profile_shape(self._input, index)
                lo_batch, hi_batch = int(lo[0]), int(hi[0])
            else:
                lo_batch = hi_batch = fixed_batch
            context = self._engine.create_execution_context()
            if context is None:
                raise ModelError(self.path, "TensorRT could not create an execution context (GPU memory?)")
            context.set_optimization_profile_async(index, self._stream_handle)
            self._contexts.append((lo_batch, hi_batch, context))
        shape: list[object] = ["batch" if fixed_batch is None else fixed_batch, *dims[1:]]
        _, self.input_size = check_io(self.path, shape)
        self.output_names = list(self._outputs)
        self._batch_sizes = frozenset(
            size for lo, hi, _ in self._contexts for size in range(lo, hi + 1)) or None
        self._max_batch = max(hi for _, hi, _ in self._contexts)
        self._bindings = {n: self._allocate(n) for n in names}
        for _, _, context in self._contexts:  # buffers never move: bind them once, not per batch
            for b in self._bindings.values():
                context.set_tensor_address(b.name, b.device_ptr)
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def _allocate(self, name: str) -> _Binding:
        dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
        shape = [int(d) for d in self._engine.get_tensor_shape(name)]
        if any(d < 0 for d in shape[1:]):
            raise ModelError(self.path, f"{name} has shape {shape}: only the batch axis may be dynamic")
        per_item = int(np.prod(shape[1:])) * dtype.itemsize
        capacity = per_item * self._max_batch
        ptr = _check(cudart.cudaMalloc(capacity), f"cudaMalloc({capacity}) for {name}")
        is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        return _Binding(name, is_input, dtype, int(ptr), capacity)

    @property
    def batch_sizes(self) -> frozenset[int] | None:
        return self._batch_sizes

    def _context_for(self, batch: int) -> Any:
        for lo, hi, context in self._contexts:
            if lo <= batch <= hi:
                return context
        raise ValueError(f"engine {self.path} has no profile for batch {batch}")

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        size = batch.shape[0]
        context = self._context_for(size)
        host_in = np.ascontiguousarray(batch, dtype=self._bindings[self._input].dtype)
        context.set_input_shape(self._input, tuple(host_in.shape))
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(self._bindings[self._input].device_ptr, host_in.ctypes.data, host_in.nbytes,
                                      h2d, self._stream), "copy to device")
        if not context.execute_async_v3(self._stream_handle):
            raise RuntimeError(f"TensorRT execution failed for batch {size}")
        results: dict[str, np.ndarray] = {}
        for name in self._outputs:
            b = self._bindings[name]
            out = np.empty(tuple(context.get_tensor_shape(name)), dtype=b.dtype)
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, b.device_ptr, out.nbytes, d2h, self._stream),
                   "copy to host")
            results[name] = out
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {k: v.astype(np.float32, copy=False) for k, v in results.items()}

    # --- the device chain (edge_agent/stages/device.py): input and outputs stay on the GPU --------------------

    device = "cuda"
    on_gpu = True

    @property
    def input_dtype(self) -> Any:
        """The torch dtype the device chain pre-processes into: the engine's own input type (fp16 for an
        engine built with an fp16 input, else fp32)."""
        import torch

        return torch.float16 if self._bindings[self._input].dtype == np.float16 else torch.float32

    def infer_device(self, batch: Any) -> dict[str, Any]:
        """Run a torch CUDA tensor ``[B, 3, H, W]`` on torch's current stream; the outputs are torch CUDA tensors
        (copied out of the engine's buffers, which the next batch reuses). Nothing crosses to the host."""
        import torch

        size = int(batch.shape[0])
        context = self._context_for(size)
        source = batch.to(self.input_dtype).contiguous()
        context.set_input_shape(self._input, tuple(source.shape))
        stream = torch.cuda.current_stream().cuda_stream
        d2d = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        _check(cudart.cudaMemcpyAsync(self._bindings[self._input].device_ptr, source.data_ptr(),
                                      source.numel() * source.element_size(), d2d, stream), "copy input")
        if not context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT execution failed for batch {size}")
        outputs: dict[str, Any] = {}
        for name in self._outputs:
            b = self._bindings[name]
            out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=_torch_dtype(b.dtype), device="cuda")
            _check(cudart.cudaMemcpyAsync(out.data_ptr(), b.device_ptr, out.numel() * out.element_size(), d2d,
                                          stream), "copy output")
            outputs[name] = out
        return outputs

    def memory_bytes(self) -> int | None:
        buffers = sum(b.capacity_bytes for b in self._bindings.values())
        return engine_device_memory(self._engine) * len(self._contexts) + buffers

    def close(self) -> None:
        for b in getattr(self, "_bindings", {}).values():
            cudart.cudaFree(b.device_ptr)
        self._bindings = {}
        self._contexts = []
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._engine = None
