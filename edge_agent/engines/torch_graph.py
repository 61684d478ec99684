"""Tidying an onnx2torch module for the GPU: constant pads folded, fp16 where it agrees with fp32, and CUDA
graphs per batch size.

onnx2torch turns an opset >= 11 ``Pad`` into ``OnnxPadDynamic``, which reads its pads with ``.tolist()`` on
every call: a device-to-host sync that also breaks CUDA-graph capture. Where the pads (and the fill value) are
constants of the graph, the module is replaced by ``OnnxPadStatic`` with those values, which computes the same.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def _constant(module: torch.fx.GraphModule, arg: Any) -> torch.Tensor | float | None:
    if isinstance(arg, (int, float)):
        return float(arg)
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        value = module
        for part in str(arg.target).split("."):
            value = getattr(value, part)
        return value if isinstance(value, torch.Tensor) else None
    return None


def fold_constant_pads(module: Any) -> int:
    """Replace each ``OnnxPadDynamic`` whose pads and fill value are constants by ``OnnxPadStatic``; returns how
    many were folded. A module that is not an fx graph (or an onnx2torch without these classes) is left alone."""
    try:
        from onnx2torch.node_converters.pad import OnnxPadDynamic, OnnxPadStatic
    except ImportError:
        return 0
    if not isinstance(module, torch.fx.GraphModule):
        return 0
    folded = 0
    for node in list(module.graph.nodes):
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), OnnxPadDynamic):
            continue
        dynamic = module.get_submodule(node.target)
        pads = _constant(module, node.args[1]) if len(node.args) > 1 else None
        fill = _constant(module, node.args[2]) if len(node.args) > 2 and node.args[2] is not None else 0.0
        if not isinstance(pads, torch.Tensor) or fill is None:
            continue
        value = float(fill.reshape(-1)[0]) if isinstance(fill, torch.Tensor) else float(fill)
        static = OnnxPadStatic.create_from_onnx_params([int(p) for p in pads.tolist()], onnx_mode=_onnx_mode(dynamic),
                                                       constant_value=value)
        module.add_submodule(node.target, static)  # replaces it under the same name
        node.args = (node.args[0],)
        folded += 1
    if folded:
        module.graph.eliminate_dead_code()
        module.recompile()
    return folded


def _onnx_mode(dynamic: Any) -> str:
    """OnnxPadDynamic keeps the torch mode name; OnnxPadStatic.create_from_onnx_params takes ONNX's."""
    return {"constant": "constant", "reflect": "reflect", "replicate": "edge"}[dynamic.mode]


FP16_TOLERANCE = 0.02  # of each output's fp32 range


def half_if_it_agrees(module: Any, input_size: tuple[int, int], device: torch.device,
                      tolerance: float = FP16_TOLERANCE) -> tuple[Any | None, float]:
    """An fp16 copy of ``module`` if its outputs on a probe input stay within ``tolerance`` of the fp32 ones (each
    relative to that output's largest magnitude, and finite), else None; with the worst difference found.
    The probe is smooth noise in the range normalised images take: it finds overflow and layers that lose too
    much in fp16, not a model's accuracy on real scenes (the tests compare detections on the sample photos)."""
    generator = torch.Generator().manual_seed(0)
    width, height = input_size
    coarse = torch.rand((1, 3, height // 8 + 1, width // 8 + 1), generator=generator) * 4.0 - 2.0
    probe = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear").to(device)
    half = copy.deepcopy(module).half()
    with torch.inference_mode():
        full_out = _as_tuple(module(probe))
        half_out = _as_tuple(half(probe.half()))
    worst = 0.0
    for f, h in zip(full_out, half_out, strict=True):
        h = h.float()
        if not torch.isfinite(h).all():
            return None, float("inf")
        scale = max(1e-6, float(f.abs().max()))
        worst = max(worst, float((f - h).abs().max()) / scale)
    return (half if worst <= tolerance else None), worst


def _as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


class GraphRunner:
    """CUDA graphs of ``module``, one per input shape, captured at the first batch of that shape and replayed
    after: one launch per batch instead of one per layer. The outputs are copied out of the graph's buffers
    (a device copy), since the next replay overwrites them while this batch is still being decoded."""

    def __init__(self, module: Any, device: torch.device) -> None:
        self.module = module
        self.device = device
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, Any]] = {}
        self.failed: dict[tuple[int, ...], str] = {}
        self._pool: Any = None  # one memory pool shared by every size's graph, not one each

    def __call__(self, batch: torch.Tensor) -> Any:
        key = tuple(batch.shape)
        if key in self.failed:
            return self.module(batch)
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(batch)
            except Exception as exc:  # an op that cannot be captured: this shape runs eagerly from now on
                self.failed[key] = f"{type(exc).__name__}: {exc}"
                log.warning("CUDA graph capture failed for input %s (%s); running it eagerly", key, exc)
                return self.module(batch)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(batch)
        graph.replay()
        return tuple(o.clone() for o in static_out) if isinstance(static_out, (tuple, list)) else static_out.clone()

    def _capture(self, batch: torch.Tensor) -> tuple[Any, torch.Tensor, Any]:
        static_in = batch.clone()
        side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph: lazy inits, cuDNN's algorithm choice
                self.module(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # thread_local: the upload and decode stages keep allocating and copying on their own threads while
        # this one captures; the default ("global") mode would make their calls fail during the capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            static_out = self.module(static_in)
        return graph, static_in, static_out
