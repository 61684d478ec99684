"""Class-aware greedy NMS on the tensor's device: torchvision's kernel where it loads, else an exact
greedy NMS made of tensor ops (no per-box loop on the host)."""

from __future__ import annotations

import torch

try:
    from torchvision.ops import batched_nms as _tv_batched_nms
except Exception:  # not installed, or a build that does not load beside this torch
    _tv_batched_nms = None


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes, ``[N, M]``; areas as w*h, as OpenCV's NMS computes them."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept by greedy NMS, best score first. Exact: iterates ``keep_i = no kept j before i overlaps i``
    to its fixed point, which is greedy NMS's result and is reached in as many steps as the longest chain of
    suppressions (a handful), each one tensor op on the whole set."""
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    b = boxes[order]
    overlaps = (box_iou(b, b) > iou_threshold).triu(diagonal=1)  # [j, i]: j ranks before i and overlaps it
    keep = torch.ones(b.shape[0], dtype=torch.bool, device=b.device)
    for _ in range(b.shape[0]):
        new = ~(overlaps & keep[:, None]).any(dim=0)
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS within each class; indices into ``boxes``, best score first."""
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if _tv_batched_nms is not None:
        kept: torch.Tensor = _tv_batched_nms(boxes.float(), scores.float(), classes, iou_threshold)
        return kept
    # Offsetting each class by more than any coordinate keeps classes apart: one NMS for all of them.
    offset = classes.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return greedy_nms(boxes + offset, scores, iou_threshold)
