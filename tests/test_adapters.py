"""Model adapters on real weights: darknet yolov3-tiny (COCO) converted to ONNX here, served as the
v5-style head and, transposed in the graph, as the ultralytics head; NanoDet through its adapter
gives exactly today's detections; letterbox geometry round-trips; the model type is inferred."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from edge_agent.adapters import (
    AdapterError,
    DecoderConfig,
    ModelAdapter,
    NanoDetAdapter,
    YoloUltralyticsAdapter,
    YoloV5Adapter,
    YoloXAdapter,
    detect_model_type,
    input_size_of,
    labels_from_metadata,
    letterbox_image,
    make_adapter,
    placement,
)
from edge_agent.engines import load_engine, run_padded
from edge_agent.errors import SwapError
from edge_agent.nanodet import NanoDetDecoder, load_labels, preprocess
from edge_agent.pipeline import Pipeline
from schemas import Detection, FrameDetections
from tests.conftest import IMAGES, LABELS, MODEL
from tests.darknet_model import DARKNET_FILES
from tests.test_cli import edge_agent
from tests.test_nanodet import iou

# Expected objects (boxes as NanoDet finds them, tests/test_nanodet.py); None: any box.
EXPECTED = {
    "dog.jpg": [("dog", (131, 221, 360, 542)), ("bicycle", (122, 128, 569, 424))],
    "person.jpg": [("person", (187, 100, 279, 376)), ("horse", (405, 139, 602, 347)), ("dog", (70, 264, 202, 346))],
}


def _ultralytics_layout(model: onnx.ModelProto) -> onnx.ModelProto:
    """[B, N, 5+C] -> [B, 4+C, N] with objectness folded into the class scores, in the graph."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    head = graph.output[0].name
    k = graph.output[0].type.tensor_type.shape.dim[2].dim_value

    def const(name: str, *values: int) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    const("axis2", 2)
    graph.node.extend(
        [
            helper.make_node("Slice", [head, const("s0", 0), const("s4", 4), "axis2"], ["u_box"]),
            helper.make_node("Slice", [head, "s4", const("s5", 5), "axis2"], ["u_obj"]),
            helper.make_node("Slice", [head, "s5", const("sk", k), "axis2"], ["u_cls"]),
            helper.make_node("Mul", ["u_cls", "u_obj"], ["u_score"]),
            helper.make_node("Concat", ["u_box", "u_score"], ["u_rows"], axis=2),
            helper.make_node("Transpose", ["u_rows"], ["output0"], perm=[0, 2, 1]),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, ["batch", k - 1, None]))
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


class Served:
    """An ONNX Runtime session with the adapter the model's own graph asks for."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        labels = labels_from_metadata(model)
        assert labels is not None
        self.adapter = make_adapter(detect_model_type(model), labels, input_size_of(model))

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        batch = np.stack([self.adapter.preprocess(im) for im in images])
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(None, {self.session.get_inputs()[0].name: batch}), strict=True))
        return self.adapter.decode_batch(outputs, [im.shape[:2] for im in images])


@pytest.fixture(scope="session")
def v5(yolov3_tiny: Path) -> Served:
    return Served(onnx.load(str(yolov3_tiny)))


@pytest.fixture(scope="session")
def ultralytics(yolov3_tiny: Path) -> Served:
    return Served(_ultralytics_layout(onnx.load(str(yolov3_tiny))))


def _image(name: str) -> np.ndarray:
    image = cv2.imread(str(IMAGES / name))
    assert image is not None, name
    return image


def _check_expected(name: str, found: list[Detection], image: np.ndarray) -> None:
    h, w = image.shape[:2]
    for d in found:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, f"{name}: {d} outside {w}x{h}"
    for label, box in EXPECTED[name]:
        same = [d for d in found if d.label == label]
        assert same, f"{name}: no {label} among {[d.label for d in found]}"
        assert max(d.score for d in same) > 0.4, f"{name}: {label} only at {[d.score for d in same]}"
        assert max(iou(d.box, box) for d in same) >= 0.5, f"{name}: {label} boxes {[d.box for d in same]} vs {box}"


def test_converted_yolov3_tiny_is_a_v5_head_with_dynamic_batch(v5: Served) -> None:
    assert isinstance(v5.adapter, YoloV5Adapter)
    assert isinstance(v5.adapter, ModelAdapter)
    assert v5.adapter.input_size == (416, 416)
    assert v5.adapter.labels[:3] == ["person", "bicycle", "car"] and len(v5.adapter.labels) == 80
    dims = v5.model.graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3 * (13 * 13 + 26 * 26), 85]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_v5_adapter_finds_the_objects(v5: Served, name: str) -> None:
    image = _image(name)
    found = v5.detect([image])[0]
    _check_expected(name, found, image)
    if name == "dog.jpg":
        assert {"truck", "car"} & {d.label for d in found}, [d.label for d in found]


def test_v5_batch_gives_what_each_image_gives_alone(v5: Served) -> None:
    images = [_image(n) for n in sorted(EXPECTED)]
    alone = [v5.detect([im])[0] for im in images]
    together = v5.detect(images)
    for a, b in zip(alone, together, strict=True):
        assert [d.label for d in a] == [d.label for d in b]
        for da, db in zip(a, b, strict=True):
            assert np.allclose(da.box, db.box, atol=0.15) and abs(da.score - db.score) < 1e-3


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ultralytics_layout_gives_the_same_detections(v5: Served, ultralytics: Served, name: str) -> None:
    assert isinstance(ultralytics.adapter, YoloUltralyticsAdapter)
    image = _image(name)
    a, b = v5.detect([image])[0], ultralytics.detect([image])[0]
    _check_expected(name, b, image)
    assert [d.label for d in a] == [d.label for d in b]
    for da, db in zip(a, b, strict=True):
        assert np.allclose(da.box, db.box, atol=0.15) and abs(da.score - db.score) < 1e-3


def test_nanodet_adapter_gives_todays_detections(engine) -> None:
    labels = load_labels(LABELS)
    adapter = NanoDetAdapter(labels)
    decoder = NanoDetDecoder(labels)
    images = [_image(n) for n in ("dog.jpg", "person.jpg", "kite.jpg", "coffee.png")]
    sizes = [im.shape[:2] for im in images]
    today = decoder.decode_batch(run_padded(engine, np.stack([preprocess(im) for im in images])), sizes)
    batch = np.stack([adapter.preprocess(im) for im in images])
    assert np.array_equal(batch, np.stack([preprocess(im) for im in images]))
    assert adapter.decode_batch(run_padded(engine, batch), sizes) == today
    assert all(today)


def test_model_types_are_inferred(v5: Served, ultralytics: Served) -> None:
    assert detect_model_type(onnx.load(str(MODEL))) == "nanodet"
    assert detect_model_type(v5.model) == "yolo-v5"
    assert detect_model_type(ultralytics.model) == "yolo-ultralytics"


def _single_output(shape: list[int | str | None], input_hw: int | str = 640) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["raw"])],
        "g",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, input_hw, input_hw])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ([1, 25200, 85], "yolo-v5"),  # yolov5s 640
        ([1, 84, 8400], "yolo-ultralytics"),  # yolov8n 640
        ([1, 8400, 85], "yolox"),  # one row per cell: YOLOX raw, or a decoded anchor-free head (YOLOv6)
        ([1, 300, 6], None),  # end-to-end (v10) head
        ([1, "n", 85], None),
        ([1, 85, 85], None),
    ],
)
def test_ambiguous_shapes_ask_for_the_model_type(shape: list[int | str], expected: str | None) -> None:
    model = _single_output(shape)
    if expected == "yolox":
        with pytest.raises(AdapterError, match="--model-type yolox"):
            detect_model_type(model)
    elif expected is not None:
        assert detect_model_type(model) == expected
    else:
        with pytest.raises(AdapterError, match="--model-type"):
            detect_model_type(model)


def test_unknown_model_type_names_the_known_ones() -> None:
    with pytest.raises(AdapterError, match="nanodet, yolo-ultralytics, yolo-v5, yolox"):
        make_adapter("centernet", [])


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(16, 1500),
    height=st.integers(16, 1500),
    box=st.tuples(*(st.floats(0.1, 0.9) for _ in range(4))),
    size=st.sampled_from([(416, 416), (640, 640), (640, 384)]),
)
def test_letterbox_round_trip(width: int, height: int, box: tuple[float, ...], size: tuple[int, int]) -> None:
    """A rectangle drawn on the frame, found in the letterboxed input and mapped back, lands on
    the pixels it was drawn on (within one input pixel)."""
    fx1, fx2 = sorted((box[0], box[2]))
    fy1, fy2 = sorted((box[1], box[3]))
    x1, x2 = int(fx1 * width), max(int(fx2 * width), int(fx1 * width) + 1)
    y1, y2 = int(fy1 * height), max(int(fy2 * height), int(fy1 * height) + 1)
    frame = np.zeros((height, width, 3), np.uint8)
    frame[y1:y2, x1:x2] = 255
    canvas = letterbox_image(frame, size, pad_value=0)
    assert canvas.shape == (size[1], size[0], 3)
    ys, xs = np.nonzero(canvas[:, :, 0] > 127)
    p = placement(height, width, size, letterbox=True)
    assert abs(p.scale_x - p.scale_y) <= 1.0 / min(width, height)
    if xs.size == 0:
        # Bilinear resizing spreads a thin rectangle below half intensity: a sliver under ~1.5 input pixels
        # across, or a dot (1.5 x 1.5 input pixels keeps at most about 0.67 x 0.67 of its value).
        w_in, h_in = (x2 - x1) * p.scale_x, (y2 - y1) * p.scale_y
        assert min(w_in, h_in) < 1.5 or w_in * h_in < 4, (w_in, h_in)
        return
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float32)
    back = p.to_original(found, height, width)[0]
    tolerance = 1.5 / p.scale_x + 1
    assert np.allclose(back, (x1, y1, x2, y2), atol=tolerance), (back, (x1, y1, x2, y2), p)


def test_agent_runs_yolo_with_the_type_inferred(tmp_path: Path, yolov3_tiny: Path, short_video: Path) -> None:
    """``edge-agent run`` on the converted model: the type and the labels come from the ONNX."""
    detections = tmp_path / "det.jsonl"
    result = edge_agent(
        "run",
        "--model",
        str(yolov3_tiny),
        "--source",
        str(short_video),
        "--offline",
        "--batch-size",
        "2",
        "--max-frames",
        "6",
        "--detections",
        str(detections),
    )
    assert result.returncode == 0, result.stderr
    frames = [FrameDetections.model_validate_json(line) for line in detections.read_text().splitlines()]
    assert len(frames) == 6
    assert all(any(d.label == "person" for d in f.detections) for f in frames), frames


def test_agent_refuses_a_model_type_that_does_not_fit(yolov3_tiny: Path, short_video: Path) -> None:
    result = edge_agent(
        "run", "--model", str(yolov3_tiny), "--model-type", "nanodet", "--source", str(short_video), "--max-frames", "2"
    )
    assert result.returncode == 2
    assert "does not fit [batch, 3, 416, 416]" not in result.stderr  # same input size: the outputs are what differ
    assert "--model-type nanodet contradicts the model: its outputs are those of a yolo-v5 model" in result.stderr
    assert "output [None, 2535, 85]" in result.stderr and "yolox" in result.stderr, "the shapes and the types"
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # YOLOX shares v5's row layout, but not its row count: refused before the first batch, not at it.
    yolox = edge_agent("run", "--model", str(yolov3_tiny), "--model-type", "yolox", "--source", str(short_video),
                       "--max-frames", "2")
    assert yolox.returncode == 2 and "--model-type yolox contradicts the model" in yolox.stderr, yolox.stderr
    assert "Traceback" not in yolox.stderr


def _yolox_row(box: tuple[float, float, float, float], stride: int, cls: int, classes: int) -> tuple[int, np.ndarray]:
    """Encode an xyxy box in input pixels the way YOLOX's head emits it; returns (row index, row)."""
    cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
    gx, gy = int(cx // stride), int(cy // stride)
    before = sum((640 // s) ** 2 for s in (8, 16, 32) if s < stride)
    row = np.zeros(5 + classes, np.float32)
    row[:5] = (cx / stride - gx, cy / stride - gy, np.log(w / stride), np.log(h / stride), 0.9)
    row[5 + cls] = 0.8
    return before + gy * (640 // stride) + gx, row


def test_yolox_adapter_decodes_the_raw_head_and_the_top_left_letterbox() -> None:
    adapter = YoloXAdapter(["a", "b", "c"], (640, 640))
    assert isinstance(adapter, ModelAdapter) and make_adapter("yolox", ["a"], (640, 640)).model_type == "yolox"
    height, width = 960, 1280  # scale 0.5, the image in the top 480 rows, no left/top padding
    raw = np.zeros((1, 8400, 8), np.float32)
    originals = {"b": (200.0, 300.0, 600.0, 700.0), "c": (700.0, 100.0, 1260.0, 900.0)}
    for (label, box), stride in zip(originals.items(), (16, 32), strict=True):
        index, row = _yolox_row(tuple(v / 2 for v in box), stride, "abc".index(label), 3)
        raw[0, index] = row
    found = adapter.decode_batch({"output": raw}, [(height, width)])[0]
    assert sorted(d.label for d in found) == ["b", "c"]
    for d in found:
        assert abs(d.score - 0.72) < 1e-3
        assert np.allclose(d.box, originals[d.label], atol=0.2), (d.box, originals[d.label])
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (10, 20, 30)  # BGR
    blob = adapter.preprocess(image)
    assert blob.shape == (3, 640, 640)
    assert np.allclose(blob[:, :480, :].reshape(3, -1).mean(axis=1), (10, 20, 30))  # BGR, 0..255
    assert np.all(blob[:, 480:, :] == 114)
    with pytest.raises(AdapterError, match="8400 cells"):
        adapter.decode_batch({"output": raw[:, :100]}, [(height, width)])


async def test_pipeline_refuses_an_engine_of_another_family(engine, decoder, yolov3_tiny: Path) -> None:
    """A swap to a model the serving adapter cannot decode is refused before anything changes."""
    pipeline = Pipeline([], engine, decoder)
    yolo = load_engine(yolov3_tiny)
    try:
        with pytest.raises(SwapError, match="not a NanoDet-m 416 model"):
            pipeline.switch(engine=yolo)
        assert pipeline.serving.engine is engine
    finally:
        yolo.close()


def test_registry_cli_converts_darknet(tmp_path: Path, yolov3_tiny: Path) -> None:
    out = tmp_path / "y.onnx"
    files = [str(yolov3_tiny.parent / n) for n in DARKNET_FILES[:2]]
    cmd = [sys.executable, "-m", "model_registry.cli", "convert-darknet", *files, "--out", str(out)]
    done = subprocess.run([*cmd, "--names", str(yolov3_tiny.parent / "coco.names")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "80 classes" in done.stdout
    assert detect_model_type(onnx.load(str(out))) == "yolo-v5"
    missing = subprocess.run([*cmd[:4], "/no/such.cfg", files[1], "--out", str(out)], capture_output=True, text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "/no/such.cfg: No such file or directory" in missing.stderr


class AdapterContract:
    """What every adapter promises; one subclass per family (FastStream-style contract tests)."""

    def make(self, config: DecoderConfig | None = None) -> ModelAdapter:
        raise NotImplementedError

    def outputs(self, batch: int) -> dict[str, np.ndarray]:
        """Outputs of the family's shape for ``batch`` images, with nothing detected."""
        raise NotImplementedError

    def output_names(self) -> list[str]:
        return list(self.outputs(1))

    def test_is_a_model_adapter_registered_under_its_type(self) -> None:
        adapter = self.make()
        assert isinstance(adapter, ModelAdapter)
        again = make_adapter(adapter.model_type, adapter.labels, adapter.input_size)
        assert type(again) is type(adapter) and again.input_size == adapter.input_size

    @pytest.mark.parametrize("shape", [(37, 53, 3), (480, 640, 3), (1080, 720, 3)])
    def test_preprocess_gives_the_network_input(self, shape: tuple[int, int, int]) -> None:
        adapter = self.make()
        image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        blob = adapter.preprocess(image)
        width, height = adapter.input_size
        assert blob.shape == (3, height, width) and blob.dtype == np.float32
        assert np.isfinite(blob).all()

    def test_nothing_detected_and_padded_rows_ignored(self) -> None:
        adapter = self.make()
        assert adapter.decode_batch(self.outputs(3), [(480, 640), (100, 200)]) == [[], []]

    def test_check_engine_accepts_its_own_model_and_refuses_another_size(self) -> None:
        adapter = self.make()
        adapter.check_engine(adapter.input_size, self.output_names())
        with pytest.raises(AdapterError):
            adapter.check_engine((320, 320), self.output_names())

    def scored_outputs(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Outputs of the family's shape with a few confident candidates among many weak ones."""
        raise NotImplementedError

    @pytest.mark.parametrize("shape", [(37, 53, 3), (480, 640, 3), (1080, 720, 3), (416, 416, 3)])
    def test_device_preprocess_matches_the_host(self, shape: tuple[int, int, int]) -> None:
        torch = pytest.importorskip(
            "torch", reason="PyTorch (scripts/test.sh installs it): the device chain runs on PyTorch tensors")
        from edge_agent.device import preprocess_on_device

        adapter = self.make()
        image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        host = adapter.preprocess(image)
        device = preprocess_on_device([torch.from_numpy(image)], adapter.spec, rows=2).numpy()
        width, height = adapter.input_size
        assert device.shape == (2, 3, height, width) and not device[1].any(), "row 2 is a static engine's padding"
        # In grey levels: OpenCV's fixed-point bilinear and PyTorch's float one round apart by a level at most.
        levels = np.abs(device[0] - host) * np.asarray(adapter.spec.std, np.float32)[:, None, None]
        assert levels.max() <= 1.01 and levels.mean() < 0.5, (levels.max(), levels.mean())

    @pytest.mark.parametrize("max_candidates", [1000, 5])
    def test_device_decode_gives_the_host_detections(self, max_candidates: int) -> None:
        """Also where more candidates pass the score bar than NMS considers (5 of about 12 an image here): both
        paths take the same best ones."""
        torch = pytest.importorskip(
            "torch", reason="PyTorch (scripts/test.sh installs it): the device chain runs on PyTorch tensors")
        from edge_agent.device import detections_on_device

        adapter = self.make(DecoderConfig(max_candidates=max_candidates))
        outputs = self.scored_outputs(3, np.random.default_rng(2))
        sizes = [(480, 640), (100, 200), (1080, 720)]
        host = adapter.decode_batch(outputs, sizes)
        device = detections_on_device({k: torch.from_numpy(v) for k, v in outputs.items()}, adapter, sizes,
                                      adapter.config)
        assert all(host), "every image has detections to compare"
        assert all(len(dets) <= max_candidates for dets in host)
        for h_dets, d_dets in zip(host, device, strict=True):
            assert [d.class_id for d in d_dets] == [d.class_id for d in h_dets]
            for h, d in zip(h_dets, d_dets, strict=True):
                assert abs(h.score - d.score) <= 2e-4
                assert max(abs(a - b) for a, b in zip(h.box, d.box, strict=True)) <= 0.11


COCO = [f"c{i}" for i in range(80)]


def _yolo_rows(rng: np.random.Generator, batch: int, rows: int, size: tuple[int, int], objectness: bool,
               raw_boxes: bool = False) -> np.ndarray:
    """[B, rows, 4(+1)+80]: weak candidates everywhere and 12 confident ones per image."""
    first = 5 if objectness else 4
    out = rng.uniform(0, 0.2, (batch, rows, first + 80)).astype(np.float32)
    if raw_boxes:  # YOLOX: offsets in the cell and log sizes in stride units
        out[..., :2] = rng.uniform(-0.5, 1.5, (batch, rows, 2))
        out[..., 2:4] = rng.normal(1, 1, (batch, rows, 2))
    else:
        out[..., 0] = rng.uniform(0, size[0], (batch, rows))
        out[..., 1] = rng.uniform(0, size[1], (batch, rows))
        out[..., 2:4] = rng.uniform(8, 200, (batch, rows, 2))
    for b in range(batch):
        for row in rng.choice(rows, 12, replace=False):
            if objectness:
                out[b, row, 4] = rng.uniform(0.7, 1.0)
            out[b, row, first + rng.integers(80)] = rng.uniform(0.6, 1.0)
    return out


class TestNanoDetContract(AdapterContract):
    def make(self, config: DecoderConfig | None = None) -> ModelAdapter:
        return NanoDetAdapter(COCO, config)

    def scored_outputs(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = {}
        for stride in (8, 16, 32):
            cells = (416 // stride) ** 2
            cls = rng.uniform(0, 0.2, (batch, cells, 80)).astype(np.float32)
            for b in range(batch):
                for cell in rng.choice(cells, 8, replace=False):
                    cls[b, cell, rng.integers(80)] = rng.uniform(0.4, 0.95)
            out[f"cls_s{stride}"] = cls
            out[f"reg_s{stride}"] = rng.normal(0, 2, (batch, cells, 44)).astype(np.float32)
        return out

    def outputs(self, batch: int) -> dict[str, np.ndarray]:
        out = {}
        for stride in (8, 16, 32):
            cells = (416 // stride) ** 2
            out[f"cls_s{stride}"] = np.zeros((batch, cells, 80), np.float32)
            out[f"reg_s{stride}"] = np.zeros((batch, cells, 44), np.float32)
        return out


class TestYoloV5Contract(AdapterContract):
    def make(self, config: DecoderConfig | None = None) -> ModelAdapter:
        return YoloV5Adapter(COCO, (416, 416), config)

    def scored_outputs(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"output": _yolo_rows(rng, batch, 2535, (416, 416), objectness=True)}

    def outputs(self, batch: int) -> dict[str, np.ndarray]:
        return {"output": np.zeros((batch, 2535, 85), np.float32)}


class TestYoloUltralyticsContract(AdapterContract):
    def make(self, config: DecoderConfig | None = None) -> ModelAdapter:
        return YoloUltralyticsAdapter(COCO, (640, 384), config)

    def scored_outputs(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        rows = _yolo_rows(rng, batch, 5040, (640, 384), objectness=False)
        return {"output0": np.ascontiguousarray(rows.transpose(0, 2, 1))}

    def outputs(self, batch: int) -> dict[str, np.ndarray]:
        return {"output0": np.zeros((batch, 84, 5040), np.float32)}


class TestYoloXContract(AdapterContract):
    def make(self, config: DecoderConfig | None = None) -> ModelAdapter:
        return YoloXAdapter(COCO, (640, 640), config)

    def scored_outputs(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"output": _yolo_rows(rng, batch, 8400, (640, 640), objectness=True, raw_boxes=True)}

    def outputs(self, batch: int) -> dict[str, np.ndarray]:
        return {"output": np.zeros((batch, 8400, 85), np.float32)}


def test_an_ultralytics_model_of_another_task_is_refused() -> None:
    model = _single_output([1, 56, 8400])  # yolov8n-pose: would pass for 52 classes by shape alone
    helper.set_model_props(model, {"task": "pose", "names": "{0: 'person'}"})
    with pytest.raises(AdapterError, match="task 'pose'"):
        detect_model_type(model)
    helper.set_model_props(model, {"task": "detect", "names": repr({i: f"c{i}" for i in range(52)})})
    assert detect_model_type(model) == "yolo-ultralytics"
