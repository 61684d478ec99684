"""The device chain (upload, device pre-processing, ``infer_device``, device decode) against the host chain, on
real models and the sample photos. It runs on PyTorch on the CPU here: the same code as on a GPU, less the
CUDA streams and pinned memory."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from edge_agent.adapters import ModelAdapter, adapter_for
from edge_agent.engines import InferenceEngine, load_engine
from edge_agent.errors import SwapError
from edge_agent.nanodet import load_labels
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.sources import open_sources
from edge_agent.stages import StageSettings, default_stages, work_of
from schemas import Detection
from tests.conftest import IMAGES, LABELS, MODEL, VIDEO
from tests.test_adapters import _ultralytics_layout, iou

torch = pytest.importorskip("torch", reason="PyTorch (scripts/test.sh installs it) runs the device chain here")
from edge_agent.engines import pytorch as torch_backend  # noqa: E402

if not torch_backend.available():
    pytest.skip(f"pytorch backend: {torch_backend.missing_runtime()}", allow_module_level=True)

from edge_agent.stages.device import DeviceDecode, DeviceInfer, DeviceUpload  # noqa: E402

ALWAYS = StageSettings(device_path="always")


def _images() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(VIDEO))
    ok, frame = cap.read()
    cap.release()
    assert ok
    photos = [cv2.imread(str(IMAGES / n)) for n in ("dog.jpg", "person.jpg")]
    return [*photos, frame]


def _run_chain(engine: InferenceEngine, adapter: ModelAdapter, images: list[np.ndarray],
               settings: StageSettings | None = None) -> list[list[Detection]]:
    """Every stage of the chain the pipeline would build, called in turn on one batch."""
    stages = default_stages(engine, adapter, {}, settings)
    work = work_of(images, engine)
    for stage in stages:
        stage.process(work)
    for stage in stages:
        stage.close()
    return [f.detections for f in work.batch.frames]


def _found_in(a: list[Detection], b: list[Detection], threshold: float) -> None:
    """Each confident detection of ``a`` is in ``b``: same class, box IoU >= 0.9. Confident: at least 0.05 over
    the score bar, since the paths' inputs differ by a grey level here and there (OpenCV's fixed-point resize),
    and a detection right at the bar may fall either side of it."""
    confident = [d for d in a if d.score >= threshold + 0.05]
    assert confident or not a
    for d in confident:
        assert max((iou(d.box, e.box) for e in b if e.label == d.label), default=0.0) >= 0.9, (d, b)


class Family:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.host = load_engine(path, "onnxruntime")
        self.device = load_engine(path, "pytorch", {"device": "cpu"})
        labels = load_labels(LABELS)
        self.adapter = adapter_for(path, self.host.input_size, self.host.output_names, None, None, labels)


@pytest.fixture(scope="module", params=["nanodet", "yolo-v5", "yolo-ultralytics", "yolov8n"])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Family:
    """Each family on a real model; ``yolo-ultralytics`` twice: yolov3-tiny re-laid-out in the graph, and
    Ultralytics' own yolov8n export. The YOLO models are fetched only when asked for (``-k nanodet`` runs offline,
    as on the GPU host)."""
    if request.param == "nanodet":
        return Family(MODEL)
    yolov3_tiny: Path = request.getfixturevalue("yolov3_tiny")
    if request.param == "yolo-v5":
        return Family(yolov3_tiny)
    if request.param == "yolov8n":
        return Family(request.getfixturevalue("yolov8n"))
    path = tmp_path_factory.mktemp("ultralytics") / "yolov3-tiny-ultralytics.onnx"
    onnx.save(_ultralytics_layout(onnx.load(str(yolov3_tiny))), str(path))
    return Family(path)


def test_the_device_chain_is_built_for_an_engine_that_takes_tensors(family: Family) -> None:
    kinds = [type(s) for s in default_stages(family.device, family.adapter, {}, ALWAYS)][:3]
    assert kinds == [DeviceUpload, DeviceInfer, DeviceDecode]
    assert family.adapter.model_type == family.adapter.model_type
    # On the CPU "auto" keeps the host chain: the device chain pays on a GPU.
    assert not isinstance(default_stages(family.device, family.adapter, {})[0], DeviceUpload)


def test_device_chain_gives_the_host_detections(family: Family) -> None:
    images = _images()
    host = _run_chain(family.host, family.adapter, images)
    device = _run_chain(family.device, family.adapter, images, ALWAYS)
    assert all(host), "every sample has objects"
    bar = family.adapter.config.score_threshold
    for h, d in zip(host, device, strict=True):
        _found_in(h, d, bar)
        _found_in(d, h, bar)


def test_each_image_gives_the_same_alone_or_in_a_batch(family: Family) -> None:
    images = _images()
    together = _run_chain(family.device, family.adapter, images, ALWAYS)
    for image, in_batch in zip(images, together, strict=True):
        alone = _run_chain(family.device, family.adapter, [image], ALWAYS)[0]
        assert [d.class_id for d in alone] == [d.class_id for d in in_batch]
        for a, b in zip(alone, in_batch, strict=True):  # identical up to the float sums' order
            assert abs(a.score - b.score) <= 1e-3 and max(abs(x - y) for x, y in zip(a.box, b.box, strict=True)) <= 0.2


def test_fp16_stays_within_tolerance_of_fp32(family: Family) -> None:
    half = load_engine(family.path, "pytorch", {"device": "cpu", "precision": "fp16"})
    assert half.input_dtype == torch.float16
    images = _images()
    full = _run_chain(family.device, family.adapter, images, ALWAYS)
    reduced = _run_chain(half, family.adapter, images, ALWAYS)
    bar = family.adapter.config.score_threshold
    for f, r in zip(full, reduced, strict=True):
        assert f
        _found_in(f, r, bar)
        _found_in(r, f, bar)


async def test_pipeline_serves_a_video_through_the_device_chain(engine, short_video: Path) -> None:
    device_engine = load_engine(MODEL, "pytorch", {"device": "cpu"})
    labels = load_labels(LABELS)
    adapter = adapter_for(MODEL, device_engine.input_size, device_engine.output_names, None, None, labels)
    sources = await open_sources([str(short_video)])
    pipeline = Pipeline(sources, device_engine, adapter,
                        PipelineConfig(batch_size=4, realtime=False, max_frames=12, stages=ALWAYS))
    assert isinstance(pipeline.stages[0], DeviceUpload)
    with pytest.raises(SwapError, match="host chain"):
        pipeline.switch(engine=engine)  # an engine the device chain cannot feed: refused, nothing changes
    summary = await pipeline.run()
    assert summary.frames_in == summary.frames_out == 12 and summary.dropped == 0
    assert summary.latency["pre"].count == 12 and summary.latency["infer"].count == 12


def _greedy_reference(boxes: np.ndarray, classes: np.ndarray, threshold: float) -> list[int]:
    """Textbook greedy NMS, one box at a time (boxes already best-first)."""
    from edge_agent.device.nms import box_iou

    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes)).numpy()
    kept: list[int] = []
    for i in range(len(boxes)):
        if all(classes[j] != classes[i] or iou[j, i] <= threshold for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(20))
def test_batched_nms_is_exactly_greedy_nms(seed: int) -> None:
    from edge_agent.device.nms import batched_greedy_nms

    rng = np.random.default_rng(seed)
    batch, k = 3, 60
    xy = rng.uniform(0, 200, (batch, k, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (batch, k, 2))], axis=2).astype(np.float32)
    classes = rng.integers(0, 3, (batch, k))
    valid = rng.uniform(size=(batch, k)) > 0.1
    keep = batched_greedy_nms(torch.from_numpy(boxes), torch.from_numpy(classes), torch.from_numpy(valid), 0.45)
    for b in range(batch):
        rows = np.nonzero(valid[b])[0]
        expected = rows[_greedy_reference(boxes[b][rows], classes[b][rows], 0.45)]
        assert np.nonzero(keep[b].numpy())[0].tolist() == expected.tolist()


def _overflows_in_half(path: Path) -> Path:
    """A model whose activations pass fp16's largest value (65504): x * 300, squared."""
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.array(300.0, dtype=np.float32), "scale")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["images", "scale"], ["scaled"]),
         helper.make_node("Mul", ["scaled", "scaled"], ["out"])],
        "overflow", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 32, 32])], [scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_fp16_is_taken_only_where_it_agrees_with_fp32(tmp_path: Path) -> None:
    from edge_agent.engines.torch_graph import half_if_it_agrees

    nanodet = load_engine(MODEL, "pytorch", {"device": "cpu"})
    half, error = half_if_it_agrees(nanodet._module, nanodet.input_size, torch.device("cpu"))
    assert half is not None and error < 0.02
    assert next(half.parameters()).dtype == torch.float16 and next(nanodet._module.parameters()).dtype == torch.float32
    overflow = load_engine(_overflows_in_half(tmp_path / "overflow.onnx"), "pytorch", {"device": "cpu"})
    half, error = half_if_it_agrees(overflow._module, overflow.input_size, torch.device("cpu"))
    assert half is None and error == float("inf")
