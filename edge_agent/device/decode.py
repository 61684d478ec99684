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
from edge_agent.device.nms import batched_nms
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
    key = (adapter.input_size, str(device))
    if key not in _GRIDS:
        cells, strides = [], []
        for s in getattr(adapter, "strides", (8, 16, 32)):
            gw, gh = adapter.input_size[0] // s, adapter.input_size[1] // s
            ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            cells.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))
            strides.append(torch.full((gw * gh, 1), float(s)))
        _GRIDS[key] = (torch.cat(cells).float().to(device), torch.cat(strides).to(device))
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
        bins = _BINS.setdefault(str(device), torch.arange(nanodet.REG_BINS, dtype=torch.float32, device=device))
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


def detections_on_device(outputs: Mapping[str, torch.Tensor], adapter: ModelAdapter,
                         frame_sizes: Sequence[tuple[int, int]], config: DecoderConfig) -> list[list[Detection]]:
    """Detections per real image (``frame_sizes`` are (height, width)), boxes in original pixels."""
    cand = candidates_for(adapter)(outputs, adapter)
    spec = adapter.spec
    device = cand.boxes.device
    clip_first = getattr(adapter, "nms_on_clipped", True)  # as the family's host decoder does
    kept_rows: list[torch.Tensor] = []
    for i, (h, w) in enumerate(frame_sizes):
        mask = cand.scores[i] > config.score_threshold
        boxes, scores, classes = cand.boxes[i][mask], cand.scores[i][mask], cand.classes[i][mask]
        p = placement(h, w, spec.input_size, spec.letterbox, spec.centre)
        scale = torch.tensor([p.scale_x, p.scale_y, p.scale_x, p.scale_y], device=device)
        pad = torch.tensor([p.pad_x, p.pad_y, p.pad_x, p.pad_y], dtype=torch.float32, device=device)
        limit = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
        boxes = (boxes - pad) / scale
        if clip_first:
            boxes = torch.minimum(boxes.clamp(min=0), limit)
            # A box wholly outside the frame clips to nothing; OpenCV's NMS drops it, and so does this.
            real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, classes = boxes[real], scores[real], classes[real]
        keep = batched_nms(boxes, scores, classes, config.iou_threshold)[: config.max_detections]
        if not clip_first:
            boxes = torch.minimum(boxes.clamp(min=0), limit)
        kept_rows.append(torch.cat([boxes[keep], scores[keep, None], classes[keep, None].float()], dim=1))
    counts = [r.shape[0] for r in kept_rows]
    # The only copy back to the host: every image's final boxes at once.
    host = torch.cat(kept_rows).cpu().tolist() if kept_rows else []
    labels = adapter.labels
    result: list[list[Detection]] = []
    start = 0
    for n in counts:
        dets = []
        for x1, y1, x2, y2, score, c in host[start:start + n]:
            cid = int(c)
            dets.append(Detection(class_id=cid, label=labels[cid] if cid < len(labels) else str(cid),
                                  score=round(score, 4), box=(round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1))))
        result.append(dets)
        start += n
    return result
