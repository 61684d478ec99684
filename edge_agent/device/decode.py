"""Each family's raw outputs -> candidate boxes on the device, then one shared tail: score filter, boxes
back to original pixels, class-aware NMS, the best ``max_detections``; one copy to the host per batch.

The candidates match the host adapters' decoders (``edge_agent/adapters``) formula for formula; the
contract test checks both paths give the same detections.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from edge_agent import nanodet
from edge_agent.adapters.base import AdapterError, DecoderConfig, ModelAdapter, placement
from edge_agent.device.nms import batched_greedy_nms
from schemas import Detection


@dataclass
class Candidates:
    """Per image of the batch: xyxy boxes in network-input pixels, best-class score and class id."""

    boxes: torch.Tensor  # [B, N, 4]
    scores: torch.Tensor  # [B, N]
    classes: torch.Tensor  # [B, N]


def _single(outputs: Mapping[str, torch.Tensor], adapter: ModelAdapter) -> torch.Tensor:
    name = getattr(adapter, "output_name", None)
    out = outputs[name] if name is not None else next(iter(outputs.values())) if len(outputs) == 1 else None
    if out is None:
        raise AdapterError(f"{adapter.model_type}: {len(outputs)} outputs {sorted(outputs)}; which one is the head?")
    if out.dim() != 3:
        raise AdapterError(f"{adapter.model_type}: output has shape {tuple(out.shape)}, expected rank 3")
    return out.float()


def _rows(rows: torch.Tensor, objectness: bool) -> Candidates:
    first = 5 if objectness else 4
    scores, classes = rows[..., first:].max(dim=-1)
    if objectness:
        scores = scores * rows[..., 4]
    xy, wh = rows[..., :2], rows[..., 2:4]
    return Candidates(torch.cat([xy - wh / 2, xy + wh / 2], dim=-1), scores, classes)


def _yolo_v5(outputs: Mapping[str, torch.Tensor], adapter: ModelAdapter) -> Candidates:
    return _rows(_single(outputs, adapter), objectness=True)


def _yolo_ultralytics(outputs: Mapping[str, torch.Tensor], adapter: ModelAdapter) -> Candidates:
    return _rows(_single(outputs, adapter).transpose(1, 2), objectness=False)


_GRIDS: dict[tuple[tuple[int, int], str], tuple[torch.Tensor, torch.Tensor]] = {}


def _yolox_grid(adapter: ModelAdapter, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The host adapter's cell grid (each row's cell and stride), on ``device``, made once per input size."""
    key = (adapter.input_size, str(device))
    if key not in _GRIDS:
        _GRIDS[key] = (torch.from_numpy(adapter.cells).to(device),  # type: ignore[attr-defined]
                       torch.from_numpy(adapter.cell_strides).to(device))  # type: ignore[attr-defined]
    return _GRIDS[key]


def _yolox(outputs: Mapping[str, torch.Tensor], adapter: ModelAdapter) -> Candidates:
    raw = _single(outputs, adapter)
    cells, strides = _yolox_grid(adapter, raw.device)
    if raw.shape[1] != cells.shape[0]:
        raise AdapterError(f"yolox: {raw.shape[1]} rows, but a {adapter.input_size} input has {cells.shape[0]} cells")
    xy = (raw[..., :2] + cells) * strides
    wh = torch.exp(raw[..., 2:4]) * strides
    return _rows(torch.cat([xy, wh, raw[..., 4:]], dim=-1), objectness=True)


_BINS: dict[str, torch.Tensor] = {}


def _nanodet(outputs: Mapping[str, torch.Tensor], adapter: ModelAdapter) -> Candidates:
    boxes, scores, classes = [], [], []
    for stride in nanodet.STRIDES:
        cls = outputs[f"cls_s{stride}"].float()
        reg = outputs[f"reg_s{stride}"].float()
        b, n = cls.shape[:2]
        device = cls.device
        if str(device) not in _BINS:
            _BINS[str(device)] = torch.arange(nanodet.REG_BINS, dtype=torch.float32, device=device)
        bins = _BINS[str(device)]
        dist = (reg.view(b, n, 4, nanodet.REG_BINS).softmax(dim=-1) @ bins) * stride  # left, top, right, bottom
        grid = nanodet.INPUT_SIZE // stride
        idx = torch.arange(n, device=device)
        centres = torch.stack([((idx % grid) + 0.5) * stride, ((idx // grid) + 0.5) * stride], dim=1).float()
        boxes.append(torch.cat([centres - dist[..., :2], centres + dist[..., 2:]], dim=-1))
        best, which = cls.max(dim=-1)
        scores.append(best)
        classes.append(which)
    return Candidates(torch.cat(boxes, dim=1), torch.cat(scores, dim=1), torch.cat(classes, dim=1))


DEVICE_DECODERS: dict[str, Callable[[Mapping[str, torch.Tensor], ModelAdapter], Candidates]] = {
    "nanodet": _nanodet,
    "yolo-v5": _yolo_v5,
    "yolo-ultralytics": _yolo_ultralytics,
    "yolox": _yolox,
}


def candidates_for(adapter: ModelAdapter) -> Callable[[Mapping[str, torch.Tensor], ModelAdapter], Candidates]:
    try:
        return DEVICE_DECODERS[adapter.model_type]
    except KeyError:
        raise AdapterError(f"no device decoder for model type {adapter.model_type!r}; "
                           f"known: {', '.join(sorted(DEVICE_DECODERS))}") from None


NMS_PAIRS = 1 << 24


def detections_on_device(outputs: Mapping[str, torch.Tensor], adapter: ModelAdapter,
                         frame_sizes: Sequence[tuple[int, int]], config: DecoderConfig) -> list[list[Detection]]:
    """Detections per real image (``frame_sizes`` are (height, width)), boxes in original pixels. The whole
    batch at once: score filter, boxes back through each frame's letterbox, NMS, the best ``max_detections``;
    the final boxes are the one copy to the host."""
    cand = candidates_for(adapter)(outputs, adapter)
    n = len(frame_sizes)
    scores, boxes, classes = cand.scores[:n], cand.boxes[:n], cand.classes[:n]
    device = boxes.device
    above = scores > config.score_threshold
    k = min(int(above.sum(dim=1).max().item()) if n else 0, config.max_candidates)
    if k == 0:
        return [[] for _ in frame_sizes]
    top, index = torch.where(above, scores, torch.full_like(scores, -1.0)).topk(k, dim=1)  # sorted, best first
    valid = top > config.score_threshold
    boxes = boxes.gather(1, index[:, :, None].expand(-1, -1, 4))
    classes = classes.gather(1, index)
    # Each frame's own letterbox, back to its pixels: input = original * scale + pad.
    spec = adapter.spec
    places = [placement(h, w, spec.input_size, spec.letterbox, spec.centre) for h, w in frame_sizes]
    geometry = torch.tensor([[p.scale_x, p.scale_y, p.pad_x, p.pad_y, w, h]
                             for p, (h, w) in zip(places, frame_sizes, strict=True)], device=device)
    scale = geometry[:, None, [0, 1, 0, 1]]
    pad = geometry[:, None, [2, 3, 2, 3]]
    limit = geometry[:, None, [4, 5, 4, 5]]
    boxes = (boxes - pad) / scale
    clipped = torch.minimum(boxes.clamp(min=0), limit)
    if getattr(adapter, "nms_on_clipped", True):  # as the family's host decoder does
        boxes = clipped
        # A box wholly outside the frame clips to nothing; OpenCV's NMS drops it, and so does this.
        valid &= (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    # NMS compares every pair of an image's candidates: images go in groups whose [group, K, K] temporaries
    # stay near NMS_PAIRS elements, so one crowded frame cannot make a batch's NMS run out of memory.
    group = max(1, NMS_PAIRS // (k * k))
    keep = torch.cat([batched_greedy_nms(boxes[i:i + group], classes[i:i + group], valid[i:i + group],
                                         config.iou_threshold) for i in range(0, n, group)])
    keep &= keep.cumsum(dim=1) <= config.max_detections
    rows = torch.cat([clipped, top[..., None], classes[..., None].float()], dim=-1)[keep]
    counts = keep.sum(dim=1).tolist()
    host = rows.cpu().tolist()  # the only copy of boxes back to the host: what NMS kept, every image at once
    labels = adapter.labels
    result: list[list[Detection]] = []
    start = 0
    for count in counts:
        dets = []
        for x1, y1, x2, y2, score, c in host[start:start + count]:
            cid = int(c)
            dets.append(Detection(class_id=cid, label=labels[cid] if cid < len(labels) else str(cid),
                                  score=round(score, 4), box=(round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1))))
        result.append(dets)
        start += count
    return result
