"""A batch size the device runs out of memory at: refused with the figure, the previous size serves on, no frame
is lost, and the refusal reaches the controller.

No GPU here: the engine is the real ONNX Runtime engine behind a wrapper that raises PyTorch's real
``OutOfMemoryError`` (with CUDA's message) above a number of rows, as a GPU with that much memory would. The
pipeline, the agent, mosquitto and the controller's view are all real."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.engines import InferenceEngine, is_out_of_memory, load_engine
from edge_agent.errors import OutOfMemoryAtBatchSize
from edge_agent.pipeline import Pipeline, PipelineConfig
from edge_agent.probes.host import HostProbe
from edge_agent.settings import AgentSettings
from edge_agent.sources import open_sources
from schemas import Topics
from tests.conftest import MODEL
from tests.mqtt_helpers import eventually, observing
from tests.test_order_lifecycle import last_status, order, running
from tests.test_pipeline import CollectingSink

try:
    import torch
except ImportError:  # the host path's handling runs without PyTorch: CUDA's error text is what it recognises then
    torch = None

CUDA_MESSAGE = ("CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
                "1.02 GiB is free.")


def out_of_memory() -> Exception:
    """What PyTorch raises on a GPU that is full (its real exception class where PyTorch is installed)."""
    return torch.cuda.OutOfMemoryError(CUDA_MESSAGE) if torch is not None else RuntimeError(CUDA_MESSAGE)


class MemoryBound:
    """The real engine, as on a device whose memory holds at most ``max_rows`` rows of input."""

    def __init__(self, engine: InferenceEngine, max_rows: int) -> None:
        self.engine = engine
        self.max_rows = max_rows
        self.backend, self.path = engine.backend, engine.path
        self.input_size, self.output_names = engine.input_size, engine.output_names
        self.rows_run: list[int] = []

    @property
    def batch_sizes(self) -> frozenset[int] | None:
        return self.engine.batch_sizes

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.shape[0] > self.max_rows:
            raise out_of_memory()
        self.rows_run.append(batch.shape[0])
        return self.engine.infer(batch)

    def memory_bytes(self) -> int | None:
        return 3 * 2**30

    def close(self) -> None:
        self.engine.close()


def test_out_of_memory_is_told_from_other_errors() -> None:
    assert is_out_of_memory(out_of_memory())
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


async def test_a_size_that_runs_out_of_memory_is_refused_and_no_frame_is_lost(decoder, short_video) -> None:
    engine = MemoryBound(load_engine(MODEL), max_rows=4)
    sink = CollectingSink()
    sources = await open_sources([str(short_video), str(short_video)])
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=2, realtime=False), [sink])
    switched: list[asyncio.Future[float]] = []

    def on_batch(batch, serving) -> None:
        if len(sink.batches) == 3 and not switched:
            switched.append(pipeline.set_batch_size(8))

    pipeline.batch_listeners.append(on_batch)
    summary = await pipeline.run()
    assert summary.frames_in == summary.frames_out == 80, "every frame served, the refused batches in slices"
    assert sink.closed, "the run ended cleanly, sinks closed"
    assert summary.dropped == 0
    with pytest.raises(OutOfMemoryAtBatchSize) as refused:
        switched[0].result()
    text = str(refused.value)
    assert "batch size 8 ran out of device memory" in text and "Tried to allocate 1.50 GiB" in text
    assert "3072 MiB" in text and "serving batch size 2 instead" in text
    assert pipeline.batch_size == 2 and 8 in pipeline.refused_sizes
    assert max(engine.rows_run) <= 4, "nothing larger than fits ran"
    for stream in ("s0", "s1"):
        seqs = [f.seq for f in sink.frames if f.stream_id == stream]
        assert seqs == list(range(40)), "in order, none lost"
    assert all(f.detections for f in sink.frames)


async def test_the_refusal_reaches_the_controller_and_the_old_size_serves_on(broker, prefix, decoder,
                                                                              short_video) -> None:
    topics = Topics(prefix)
    sources = await open_sources([str(short_video)], loop=True)
    pipeline = Pipeline(sources, MemoryBound(load_engine(MODEL), max_rows=4), decoder, PipelineConfig(batch_size=2))
    settings = AgentSettings(broker_url=broker.url, agent_id="cam1", prefix=prefix, telemetry_interval_s=0.5)
    agent = Agent(pipeline, HostProbe(), settings)
    async with observing(broker.url, f"{prefix}/#") as obs, running(agent):
        await eventually(lambda: obs.on(topics.status("cam1")), 10, "status")
        refused = await order(obs, topics, 1, batch_size=8)
        assert refused.kind == "desired_refused" and refused.refusal == "memory", refused
        assert "ran out of device memory" in refused.detail and "Tried to allocate" in refused.detail
        await eventually(lambda: last_status(obs, topics).last_order is not None, 10, "status with the outcome")
        assert last_status(obs, topics).last_order.refusal == "memory"
        assert agent.pipeline.batch_size == 2
        out = agent.pipeline.stats.frames_out
        await eventually(lambda: agent.pipeline.stats.frames_out > out + 4, 20, "batch 2 still serves")
        assert (await order(obs, topics, 2, batch_size=4)).kind == "desired_applied", "a size that fits is taken"
        # The device said no to 8: 8 again, and anything larger, is refused at once, never tried.
        tried = len(agent.pipeline.serving.engine.rows_run)  # type: ignore[attr-defined]
        for generation, size in ((3, 8), (4, 16)):
            again = await order(obs, topics, generation, batch_size=size)
            assert again.refusal == "memory" and "batch size 8 ran out of device memory" in again.detail, again
        assert agent.pipeline.batch_size == 4
        out = agent.pipeline.stats.frames_out
        await eventually(lambda: agent.pipeline.stats.frames_out > out + 8, 20, "batch 4 serves on")
        assert set(agent.pipeline.serving.engine.rows_run[tried:]) <= {1, 2, 3, 4}  # type: ignore[attr-defined]


async def test_out_of_memory_at_the_first_size_halves_it(decoder, short_video) -> None:
    """Nothing smaller has served yet: half the size serves, and the batch that failed is inferred in halves."""
    engine = MemoryBound(load_engine(MODEL), max_rows=2)
    sink = CollectingSink()
    sources = await open_sources([str(short_video)])
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=4, realtime=False), [sink])
    summary = await pipeline.run()
    assert summary.frames_in == summary.frames_out == 40 and pipeline.batch_size == 2 and sink.closed
    assert 4 in pipeline.refused_sizes and max(engine.rows_run) <= 2
    assert [f.seq for f in sink.frames] == list(range(40))


class DeviceMemoryBound:
    """PyTorch's engine on the CPU taking device tensors, as on a GPU whose memory holds ``max_rows`` rows."""

    def __init__(self, max_rows: int) -> None:
        self.engine = load_engine(MODEL, "pytorch", {"device": "cpu"})
        self.max_rows = max_rows
        self.backend, self.path, self.device = "pytorch", self.engine.path, "cpu"
        self.input_size, self.output_names = self.engine.input_size, self.engine.output_names
        self.input_dtype = torch.float32 if torch is not None else None
        self.rows_run: list[int] = []

    batch_sizes = None

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise AssertionError("the device chain feeds infer_device")

    def infer_device(self, batch):  # type: ignore[no-untyped-def]
        if batch.shape[0] > self.max_rows:
            raise out_of_memory()
        self.rows_run.append(batch.shape[0])
        return self.engine.infer_device(batch)

    def memory_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        self.engine.close()


async def test_the_device_chain_slices_a_batch_that_runs_out_of_memory(decoder, short_video) -> None:
    from edge_agent.engines import pytorch as torch_backend
    from edge_agent.stages import StageSettings

    if not torch_backend.available():
        pytest.skip(f"pytorch backend: {torch_backend.missing_runtime()}")
    from edge_agent.stages.device import DeviceInfer

    engine = DeviceMemoryBound(max_rows=2)
    sink = CollectingSink()
    sources = await open_sources([str(short_video)])
    pipeline = Pipeline(sources, engine, decoder, PipelineConfig(batch_size=4, realtime=False, max_frames=16,
                                                                 stages=StageSettings(device_path="always")),
                        [sink])
    assert isinstance(pipeline.stages[1], DeviceInfer)
    summary = await pipeline.run()
    assert summary.frames_in == summary.frames_out == 16 and max(engine.rows_run) <= 2
    assert pipeline.batch_size == 2 and all(f.detections for f in sink.frames)
