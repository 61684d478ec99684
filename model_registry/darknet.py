"""Darknet ``.cfg`` + ``.weights`` -> ONNX, with the yolo layers decoded in the graph.

The output is the v5-style head ``[B, N, 5+C]``: cx, cy, w, h (input pixels), objectness and
class scores, all after their activations, so ``edge_agent.adapters.YoloV5Adapter`` serves it.
Supported layers are those of yolov3(-tiny): convolutional (with or without batch_normalize;
leaky, linear, relu, logistic), maxpool (incl. size 2 stride 1), route, shortcut, upsample, yolo.
The batch dimension is dynamic. Darknet input is RGB /255, letterboxed with grey.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_registry.errors import RegistryError

OPSET = 13
_BN_EPSILON = 1e-6  # darknet's normalize_cpu adds .000001 to the variance


class DarknetError(RegistryError):
    """A cfg or weights file this converter cannot read."""


@dataclass
class Section:
    kind: str
    options: dict[str, str] = field(default_factory=dict)

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise DarknetError(f"[{self.kind}] lacks {key}=")
            return default
        return int(self.options[key])

    def get_ints(self, key: str) -> list[int]:
        return [int(v) for v in self.options[key].split(",") if v.strip()]


def parse_cfg(text: str) -> list[Section]:
    sections: list[Section] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append(Section(line.strip("[]").strip()))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetError("cfg does not start with [net]")
    return sections


class _Weights:
    def __init__(self, data: bytes) -> None:
        major, minor, _revision = np.frombuffer(data[:12], dtype=np.int32)
        seen_bytes = 8 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 4
        self._floats = np.frombuffer(data[12 + seen_bytes :], dtype=np.float32)
        self._at = 0

    def take(self, count: int) -> np.ndarray:
        if self._at + count > self._floats.size:
            raise DarknetError(f"weights file ends after {self._floats.size} floats; need {self._at + count}")
        out = self._floats[self._at : self._at + count]
        self._at += count
        return out

    def left(self) -> int:
        return self._floats.size - self._at


@dataclass
class _Tensor:
    name: str
    channels: int
    height: int
    width: int


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str, **attrs: Any) -> str:
        out = self.name(stem)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def convert(cfg_text: str, weights: bytes, labels: list[str] | None = None) -> onnx.ModelProto:
    """The ONNX model of a darknet network; ``labels`` go into ``names`` metadata if given."""
    sections = parse_cfg(cfg_text)
    net = sections[0]
    width, height, channels = net.get_int("width"), net.get_int("height"), net.get_int("channels", 3)
    w = _Weights(weights)
    b = _Builder()
    layers: list[_Tensor] = []
    heads: list[str] = []
    x = _Tensor("images", channels, height, width)
    for index, s in enumerate(sections[1:]):
        if s.kind == "convolutional":
            x = _conv(b, w, s, x)
        elif s.kind == "maxpool":
            x = _maxpool(b, s, x)
        elif s.kind == "upsample":
            stride = s.get_int("stride", 2)
            scales = b.const("scales", np.array([1, 1, stride, stride], dtype=np.float32))
            out = b.op("Resize", [x.name, "", scales], "upsample", mode="nearest")
            x = _Tensor(out, x.channels, x.height * stride, x.width * stride)
        elif s.kind == "route":
            sources = [layers[i if i >= 0 else index + i] for i in s.get_ints("layers")]
            if len(sources) == 1:
                x = sources[0]
            else:
                if len({(t.height, t.width) for t in sources}) != 1:
                    raise DarknetError(f"layer {index}: route of differently sized layers")
                out = b.op("Concat", [t.name for t in sources], "route", axis=1)
                x = _Tensor(out, sum(t.channels for t in sources), sources[0].height, sources[0].width)
        elif s.kind == "shortcut":
            other = layers[s.get_int("from") if s.get_int("from") >= 0 else index + s.get_int("from")]
            x = _Tensor(b.op("Add", [x.name, other.name], "shortcut"), x.channels, x.height, x.width)
            x = _activation(b, s.options.get("activation", "linear"), x)
        elif s.kind == "yolo":
            heads.append(_yolo(b, s, x, (width, height)))
        else:
            raise DarknetError(f"layer {index}: [{s.kind}] is not supported")
        layers.append(x)
    if w.left():
        raise DarknetError(f"{w.left()} floats of the weights file are left over: cfg and weights differ")
    if not heads:
        raise DarknetError("the cfg has no [yolo] layer")
    output = heads[0] if len(heads) == 1 else b.op("Concat", heads, "detections", axis=1)
    b.nodes.append(helper.make_node("Identity", [output], ["output"], name="output"))
    classes = sections[-1].get_int("classes") if sections[-1].kind == "yolo" else None
    graph = helper.make_graph(
        b.nodes,
        "darknet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, height, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", None, None])],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgebatch-darknet")
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    if labels is not None:
        if classes is not None and len(labels) != classes:
            raise DarknetError(f"{len(labels)} labels for {classes} classes")
        helper.set_model_props(model, {"names": repr(dict(enumerate(labels)))})
    onnx.checker.check_model(model)
    return model


def convert_files(cfg: str | Path, weights: str | Path, names: str | Path | None = None) -> onnx.ModelProto:
    try:
        labels = None
        if names is not None:
            labels = [line.strip() for line in Path(names).read_text().splitlines() if line.strip()]
        cfg_text, data = Path(cfg).read_text(), Path(weights).read_bytes()
    except OSError as exc:
        raise DarknetError(f"{exc.filename}: {exc.strerror}") from exc
    return convert(cfg_text, data, labels)


def save_converted(cfg: str | Path, weights: str | Path, names: str | Path | None, out: str | Path) -> int:
    """Convert and write ``out``; returns the number of classes."""
    model = convert_files(cfg, weights, names)
    try:
        onnx.save(model, str(out))
    except OSError as exc:
        raise DarknetError(f"{out}: {exc.strerror}") from exc
    return int(model.graph.output[0].type.tensor_type.shape.dim[2].dim_value) - 5


def _conv(b: _Builder, w: _Weights, s: Section, x: _Tensor) -> _Tensor:
    filters, size, stride = s.get_int("filters"), s.get_int("size"), s.get_int("stride", 1)
    pad = size // 2 if s.get_int("pad", 0) else s.get_int("padding", 0)
    groups = s.get_int("groups", 1)
    bias = w.take(filters).copy()
    if s.get_int("batch_normalize", 0):
        scales, mean, var = w.take(filters), w.take(filters), w.take(filters)
        kernel = w.take(filters * (x.channels // groups) * size * size).reshape(filters, -1, size, size)
        factor = scales / np.sqrt(var + _BN_EPSILON)
        kernel = kernel * factor[:, None, None, None]
        bias = bias - mean * factor
    else:
        kernel = w.take(filters * (x.channels // groups) * size * size).reshape(filters, -1, size, size)
    out = b.op(
        "Conv",
        [x.name, b.const("w", kernel.astype(np.float32)), b.const("b", bias.astype(np.float32))],
        "conv",
        kernel_shape=[size, size],
        strides=[stride, stride],
        pads=[pad, pad, pad, pad],
        group=groups,
    )
    oh = (x.height + 2 * pad - size) // stride + 1
    ow = (x.width + 2 * pad - size) // stride + 1
    return _activation(b, s.options.get("activation", "logistic"), _Tensor(out, filters, oh, ow))


def _activation(b: _Builder, kind: str, x: _Tensor) -> _Tensor:
    if kind == "linear":
        return x
    if kind == "leaky":
        out = b.op("LeakyRelu", [x.name], "leaky", alpha=0.1)
    elif kind == "relu":
        out = b.op("Relu", [x.name], "relu")
    elif kind == "logistic":
        out = b.op("Sigmoid", [x.name], "logistic")
    else:
        raise DarknetError(f"activation {kind} is not supported")
    return _Tensor(out, x.channels, x.height, x.width)


def _maxpool(b: _Builder, s: Section, x: _Tensor) -> _Tensor:
    size, stride = s.get_int("size", 2), s.get_int("stride", 2)
    padding = s.get_int("padding", size - 1)
    # darknet: out = (in + padding - size) / stride + 1, the window starting at -padding/2;
    # ONNX pads with -inf, as darknet's bounds check does.
    begin = padding // 2
    oh = (x.height + padding - size) // stride + 1
    ow = (x.width + padding - size) // stride + 1
    end_h = (oh - 1) * stride + size - x.height - begin
    end_w = (ow - 1) * stride + size - x.width - begin
    out = b.op(
        "MaxPool",
        [x.name],
        "maxpool",
        kernel_shape=[size, size],
        strides=[stride, stride],
        pads=[begin, begin, max(0, end_h), max(0, end_w)],
    )
    return _Tensor(out, x.channels, oh, ow)


def _yolo(b: _Builder, s: Section, x: _Tensor, input_size: tuple[int, int]) -> str:
    """[B, A*(5+C), H, W] logits -> [B, A*H*W, 5+C] decoded rows."""
    mask = s.get_ints("mask")
    pairs = s.get_ints("anchors")
    anchors = np.array([(pairs[2 * m], pairs[2 * m + 1]) for m in mask], dtype=np.float32)
    classes = s.get_int("classes")
    scale_xy = float(s.options.get("scale_x_y", "1"))
    a, k, h, w = len(mask), 5 + classes, x.height, x.width
    if x.channels != a * k:
        raise DarknetError(f"[yolo] gets {x.channels} channels, expected {a} x (5 + {classes})")
    shape5 = b.const("shape", np.array([0, a, k, h, w], dtype=np.int64))
    t = b.op("Reshape", [x.name, shape5], "yolo_split")
    t = b.op("Transpose", [t], "yolo_rows", perm=[0, 1, 3, 4, 2])  # B, A, H, W, K
    shape3 = b.const("shape", np.array([0, a * h * w, k], dtype=np.int64))
    t = b.op("Reshape", [t, shape3], "yolo_flat")
    sig = b.op("Sigmoid", [t], "yolo_sigmoid")

    def cols(src: str, start: int, stop: int) -> str:
        return b.op(
            "Slice",
            [
                src,
                b.const("start", np.array([start], dtype=np.int64)),
                b.const("stop", np.array([stop], dtype=np.int64)),
                b.const("axis", np.array([2], dtype=np.int64)),
            ],
            "yolo_cols",
        )

    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    grid = np.tile(np.stack([xs.ravel(), ys.ravel()], axis=1), (a, 1))[None]  # 1, A*H*W, 2
    stride = np.array([input_size[0] / w, input_size[1] / h], dtype=np.float32)
    # xy = (sigmoid * s - (s - 1) / 2 + grid) * stride, folded into one Mul and one Add.
    offset = ((grid - (scale_xy - 1) / 2) * stride).astype(np.float32)
    xy = b.op("Mul", [cols(sig, 0, 2), b.const("xy_scale", (stride * scale_xy).astype(np.float32))], "yolo_xy")
    xy = b.op("Add", [xy, b.const("grid", offset)], "yolo_xy")
    anchor_rows = np.repeat(anchors, h * w, axis=0)[None]  # 1, A*H*W, 2 in input pixels
    wh = b.op("Exp", [cols(t, 2, 4)], "yolo_exp")
    wh = b.op("Mul", [wh, b.const("anchors", anchor_rows)], "yolo_wh")
    return b.op("Concat", [xy, wh, cols(sig, 4, k)], "yolo_out", axis=2)
