"""Resize (stretch or letterbox), channel order and normalisation of uint8 frames, on their device.

Bilinear with half-pixel centres and no antialiasing, as ``cv2.resize(INTER_LINEAR)`` does, so the
device input matches the host input to within rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812

from edge_agent.adapters.base import PreprocessSpec, placement


def preprocess_on_device(frames: Sequence[torch.Tensor], spec: PreprocessSpec, rows: int,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """HxWx3 uint8 BGR frames (already on the device) -> ``[rows, 3, H, W]`` network input of ``dtype``;
    rows beyond ``len(frames)`` are zero (a static engine's padding)."""
    in_w, in_h = spec.input_size
    device = frames[0].device
    out = torch.zeros((rows, 3, in_h, in_w), dtype=dtype, device=device)
    mean, inv_std = _normalisation(spec, device)
    # Frames of one size resize together: one kernel per size in the batch, not per frame.
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(frames):
        by_size.setdefault((int(f.shape[0]), int(f.shape[1])), []).append(i)
    for (h, w), index in by_size.items():
        chw = torch.stack([frames[i] for i in index]).permute(0, 3, 1, 2).float()
        if spec.rgb:
            chw = chw.flip(1)
        p = placement(h, w, spec.input_size, spec.letterbox, spec.centre)
        new_w, new_h = (round(w * p.scale_x), round(h * p.scale_y)) if spec.letterbox else (in_w, in_h)
        resized = chw if (new_h, new_w) == (h, w) else F.interpolate(
            chw, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
        # cv2 rounds the resized uint8 image; so does this, before normalising.
        resized = resized.round_().clamp_(0, 255)
        if spec.letterbox:
            canvas = torch.full((len(index), 3, in_h, in_w), float(spec.pad_value), device=device)
            canvas[:, :, p.pad_y:p.pad_y + new_h, p.pad_x:p.pad_x + new_w] = resized
        else:
            canvas = resized
        normalised = ((canvas - mean) * inv_std).to(dtype)
        if index == list(range(index[0], index[0] + len(index))):
            out[index[0]:index[0] + len(index)] = normalised  # the usual case: no index tensor to copy up
        else:
            out[torch.tensor(index, device=device)] = normalised
    return out


_NORMALISATION: dict[tuple[PreprocessSpec, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _normalisation(spec: PreprocessSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std as ``[1, 3, 1, 1]`` tensors on ``device``, made once (a host-to-device copy per batch
    would wait on the stream)."""
    key = (spec, str(device))
    if key not in _NORMALISATION:
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        inv_std = (1.0 / torch.tensor(spec.std, dtype=torch.float32, device=device)).view(1, 3, 1, 1)
        _NORMALISATION[key] = (mean, inv_std)
    return _NORMALISATION[key]
