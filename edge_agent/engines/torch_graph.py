"""Tidying an onnx2torch module for the GPU: constant pads folded, and CUDA graphs per batch size.

onnx2torch turns an opset >= 11 ``Pad`` into ``OnnxPadDynamic``, which reads its pads with ``.tolist()`` on
every call: a device-to-host sync that also breaks CUDA-graph capture. Where the pads (and the fill value) are
constants of the graph, the module is replaced by ``OnnxPadStatic`` with those values, which computes the same.
"""

from __future__ import annotations

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


class GraphRunner:
    """CUDA graphs of ``module``, one per input shape, captured at the first batch of that shape and replayed
    after: one launch per batch instead of one per layer. The outputs are copied out of the graph's buffers
    (a device copy), since the next replay overwrites them while this batch is still being decoded."""

    def __init__(self, module: Any, device: torch.device) -> None:
        self.module = module
        self.device = device
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, Any]] = {}
        self.failed: dict[tuple[int, ...], str] = {}

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
        with torch.cuda.graph(graph):
            static_out = self.module(static_in)
        return graph, static_in, static_out
