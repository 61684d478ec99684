"""Pipeline stages between the batcher and the sinks: one object each, composed here.

The chain is the DeepStream element idea: ``default_stages`` lists what a batch goes through; add,
remove or replace an element by editing that list (or by passing ``stages=`` to ``Pipeline``).
The host chain pre-processes, infers and decodes on the CPU side; the device chain (an engine that
runs on a GPU and takes device tensors: PyTorch's, TensorRT's) uploads uint8 frames once and keeps
everything on the device until the final boxes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from edge_agent.adapters import ModelAdapter
from edge_agent.engines import InferenceEngine
from edge_agent.errors import BackendUnavailable
from edge_agent.stages.base import BatchStage, ServingConfig, Work, work_of
from edge_agent.stages.decode import HostDecode
from edge_agent.stages.filters import CameraFilters, DetectionFilter
from edge_agent.stages.infer import HostInfer
from edge_agent.stages.preprocess import HostPreprocess
from edge_agent.stages.workers import MeasuredWorkers, candidate_counts

DevicePath = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class StageSettings:
    """Worker threads for the host pre- and post-processing (None: measure the count that helps most), and
    when the device chain serves: ``auto`` for an engine on a GPU that takes device tensors, ``always`` for any
    engine that takes them (PyTorch on the CPU too: how the device path is checked without a GPU), ``never``."""

    pre_workers: int | None = None
    post_workers: int | None = None
    device_path: DevicePath = "auto"


def uses_device_chain(engine: InferenceEngine, mode: DevicePath = "auto") -> bool:
    """Whether ``engine`` is fed by the device chain under ``mode``. The chain is PyTorch code: ``auto`` keeps the
    host chain where PyTorch is not installed (a TensorRT-only Jetson), ``always`` then fails to build it."""
    takes_tensors = callable(getattr(engine, "infer_device", None))
    if mode == "never" or not takes_tensors:
        return False
    if mode == "always":
        return True
    return bool(getattr(engine, "on_gpu", False)) and _torch_importable()


@functools.cache
def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401  (already imported where an engine runs on it; TensorRT's may not be)
    except ImportError:
        return False
    return True


def device_of(engine: InferenceEngine) -> str | None:
    """The device an engine that takes device tensors runs on (``cuda:0``, ``cpu``), as text."""
    device = getattr(engine, "device", None)
    return None if device is None else str(device)


def default_stages(
    engine: InferenceEngine,
    adapter: ModelAdapter,
    filters: Mapping[str, DetectionFilter],
    settings: StageSettings | None = None,
) -> list[BatchStage]:
    """The chain a batch goes through, for the engine the pipeline starts with."""
    settings = settings or StageSettings()
    if uses_device_chain(engine, settings.device_path):
        try:
            from edge_agent.stages.device import device_stages  # needs PyTorch
        except ImportError as exc:
            raise BackendUnavailable(f"the device chain (--device-path always) needs PyTorch: {exc}") from exc

        return [*device_stages(engine, adapter), CameraFilters(filters)]
    return [
        HostPreprocess(adapter, settings.pre_workers),
        HostInfer(),
        HostDecode(adapter, settings.post_workers),
        CameraFilters(filters),
    ]


__all__ = [
    "BatchStage",
    "CameraFilters",
    "DetectionFilter",
    "HostDecode",
    "HostInfer",
    "HostPreprocess",
    "MeasuredWorkers",
    "ServingConfig",
    "StageSettings",
    "Work",
    "candidate_counts",
    "DevicePath",
    "default_stages",
    "device_of",
    "uses_device_chain",
    "work_of",
]
