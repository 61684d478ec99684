"""The device chain: frames go to the engine's device once per batch as uint8 and come back as final boxes.

- ``DeviceUpload``: the batch's frames into pinned host memory, one copy to the device (asynchronous, on
  the stage's own CUDA stream), then letterbox/resize/normalise there (``edge_agent/device``).
- ``DeviceInfer``: the engine's ``infer_device`` on its own stream, which waits for the upload's event only,
  so the next batch's upload overlaps this batch's inference.
- ``DeviceDecode``: score filter, boxes back to original pixels and batched NMS on the device; one copy of
  the final boxes back.
On a CPU-only PyTorch the same code runs on CPU tensors (no streams, no pinned memory): that is how it is
checked where no GPU is at hand.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from edge_agent.adapters import ModelAdapter
from edge_agent.device import detections_on_device, preprocess_on_device
from edge_agent.device.decode import candidates_for
from edge_agent.engines import InferenceEngine, padded_batch_size
from edge_agent.stages.base import BatchStage, EngineHandOver, Work, record_stage


def _device_of(engine: InferenceEngine) -> torch.device:
    return torch.device(getattr(engine, "device", "cpu"))


class _Streamed:
    """A CUDA stream of the stage's own on a GPU; nothing on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None  # type: ignore[no-untyped-call]

    def _context(self) -> Any:
        return torch.cuda.stream(self.stream) if self.stream is not None else _NoStream()

    def _record(self) -> Any:
        if self.stream is None:
            return None
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(self.stream)
        return event

    def _wait(self, event: Any) -> None:
        if self.stream is not None and event is not None:
            self.stream.wait_event(event)


class _NoStream:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class DeviceUpload(_Streamed):
    name = "pre"

    def __init__(self, adapter: ModelAdapter, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(device)
        self.adapter = adapter
        self.dtype = dtype  # the first engine's; each batch takes its own engine's input dtype
        # Per frame shape, two pinned buffers used in turn (one being copied, one being filled), each with room
        # for the most frames of that shape a batch has had: partial batches share them ([:n]), so real-time
        # batches of every size pin no more than two buffers per camera resolution.
        self._pinned: dict[tuple[int, ...], list[tuple[torch.Tensor, Any]]] = {}

    def _staging(self, frame_shape: tuple[int, ...], frames: int) -> torch.Tensor:
        """A pinned host buffer with room for ``frames`` frames of ``frame_shape`` whose last copy is done."""
        ring = self._pinned.setdefault(frame_shape, [])
        buf: torch.Tensor | None = None
        if len(ring) >= 2:
            buf, done = ring.pop(0)
            if done is not None:
                done.synchronize()
        if buf is None or buf.shape[0] < frames:
            rows = 1 << max(0, frames - 1).bit_length()  # grow in powers of two: few reallocations
            buf = torch.empty((rows, *frame_shape), dtype=torch.uint8, pin_memory=True)
        return buf

    def process(self, work: Work) -> None:
        batch = work.batch
        start = time.monotonic()
        images = [f.image for f in batch.frames]
        with torch.inference_mode(), self._context():
            if self.stream is None:
                on_device = [torch.from_numpy(im) for im in images]
            else:
                slots: list[torch.Tensor | None] = [None] * len(images)
                groups: dict[tuple[int, ...], list[int]] = {}
                for i, im in enumerate(images):
                    groups.setdefault(im.shape, []).append(i)
                for shape, index in groups.items():
                    buffer = self._staging(shape, len(index))
                    host = buffer[:len(index)]
                    np.stack([images[i] for i in index], out=host.numpy())  # the one host copy
                    dev = host.to(self.device, non_blocking=True)
                    self._pinned[shape].append((buffer, self._record()))
                    for i, t in zip(index, dev.unbind(0), strict=True):
                        slots[i] = t
                on_device = [t for t in slots if t is not None]
            engine = work.serving.engine
            rows = padded_batch_size(engine, len(images))
            dtype = getattr(engine, "input_dtype", self.dtype)
            batch.tensor = preprocess_on_device(on_device, self.adapter.spec, rows, dtype)
            batch.carry["uploaded"] = self._record()
        batch.engine_batch_size = rows
        record_stage(batch, "pre", start, time.monotonic())

    def close(self) -> None:
        self._pinned.clear()


class DeviceInfer(_Streamed):
    name = "infer"

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self._engines = EngineHandOver()

    def process(self, work: Work) -> None:
        engine = work.serving.engine
        self._engines.serving(engine)
        batch = work.batch
        start = time.monotonic()
        with torch.inference_mode(), self._context():
            self._wait(batch.carry.pop("uploaded", None))
            rows = batch.carry.get("max_rows")
            if rows:  # after an out-of-memory: the batch in slices of a size that fits, outputs joined
                slices = [engine.infer_device(part) for part in batch.tensor.split(rows)]  # type: ignore[attr-defined]
                batch.outputs = {k: torch.cat([o[k] for o in slices]) for k in slices[0]}
            else:
                batch.outputs = engine.infer_device(batch.tensor)  # type: ignore[attr-defined]
            if self.stream is not None:
                self.stream.synchronize()  # the batch's inference time, and its outputs ready for decoding
        batch.tensor = None
        record_stage(batch, "infer", start, time.monotonic())

    def close(self) -> None:
        self._engines.forget()


class DeviceDecode(_Streamed):
    name = "post"

    def __init__(self, adapter: ModelAdapter, device: torch.device) -> None:
        super().__init__(device)
        candidates_for(adapter)  # an adapter with no device decoder is refused here, not at the first batch
        self.adapter = adapter

    def process(self, work: Work) -> None:
        batch = work.batch
        assert batch.outputs is not None, "an inference stage comes first"
        start = time.monotonic()
        with torch.inference_mode(), self._context():
            detections = detections_on_device(batch.outputs, self.adapter,
                                              [f.image.shape[:2] for f in batch.frames], self.adapter.config)
        batch.outputs = None
        for f, dets in zip(batch.frames, detections, strict=True):
            f.detections = dets
        record_stage(batch, "post", start, time.monotonic())

    def close(self) -> None:
        pass


def device_stages(engine: InferenceEngine, adapter: ModelAdapter) -> list[BatchStage]:
    device = _device_of(engine)
    dtype = getattr(engine, "input_dtype", torch.float32)
    return [DeviceUpload(adapter, device, dtype), DeviceInfer(device), DeviceDecode(adapter, device)]
