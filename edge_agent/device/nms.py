"""Class-aware greedy NMS for a whole batch at once, in tensor ops on the tensor's device.

Exact greedy NMS (what OpenCV's ``NMSBoxesBatched`` and torchvision's ``batched_nms`` compute), without a loop
over boxes: with the candidates sorted by score, ``keep_i = valid_i and no kept j before i overlaps i`` is
iterated from "all valid" to its fixed point, which is greedy NMS's result and is reached in as many steps as
the longest chain of suppressions (a handful). Every image of the batch iterates together, so a batch costs
a few kernels and one host sync per step, not one per box or per image.
"""

from __future__ import annotations

import torch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes, ``[..., N, M]`` for ``a`` ``[..., N, 4]`` and ``b`` ``[..., M, 4]``; areas as w*h, as
    OpenCV's NMS computes them."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def batched_greedy_nms(boxes: torch.Tensor, classes: torch.Tensor, valid: torch.Tensor,
                       iou_threshold: float) -> torch.Tensor:
    """``boxes`` ``[B, K, 4]`` sorted by score (best first) in each image, ``classes`` ``[B, K]``, ``valid``
    ``[B, K]`` (padding and filtered rows false): the ``[B, K]`` mask greedy NMS keeps, within each class."""
    if boxes.shape[1] == 0:
        return valid
    same_class = classes[:, :, None] == classes[:, None, :]
    later = torch.ones(boxes.shape[1], boxes.shape[1], dtype=torch.bool, device=boxes.device).triu(diagonal=1)
    # [b, j, i]: j ranks before i, same class, and overlaps it past the threshold.
    suppresses = (box_iou(boxes, boxes) > iou_threshold) & same_class & later & valid[:, :, None]
    keep = valid
    for _ in range(boxes.shape[1]):
        new = valid & ~(suppresses & keep[:, :, None]).any(dim=1)
        if torch.equal(new, keep):
            break
        keep = new
    return keep
