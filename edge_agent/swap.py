"""Engine swap without downtime: resolve the artifact, fetch it into a sha256-keyed cache, check
memory, load and warm it up beside the serving engine, switch at a batch boundary.

Any failure leaves the serving engine serving and is reported as a ``swap_failed`` event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.engines import FORMAT_BACKEND, InferenceEngine, load_engine, run_padded
from edge_agent.errors import EdgeAgentError, SwapError
from edge_agent.nanodet import INPUT_SIZE
from edge_agent.probes import ResourceProbe
from model_registry.artifacts import ArtifactQuery, latest_version, pick_artifact, sha256_file
from model_registry.errors import RegistryError
from model_registry.registry import fetch_verified
from model_registry.stores.base import ArtifactStore
from schemas import ArtifactInfo, ArtifactTarget, DesiredState, ModelAnnouncement

if TYPE_CHECKING:
    from edge_agent.agent import Agent

log = logging.getLogger(__name__)

MIB = 2**20


def local_device_target() -> ArtifactTarget:
    """This device as an engine target: its GPU facts where TensorRT runs, else ONNX only."""
    from edge_agent.engines import tensorrt as trt_backend

    if not trt_backend.available():
        return ArtifactTarget()
    facts = trt_backend.device_facts()
    return ArtifactTarget(platform=facts["platform"], sm=facts["sm"], tensorrt=facts["tensorrt"], cuda=facts["cuda"])


class ArtifactCache:
    """Artifacts on disk by sha256: returning to a batch size or version costs no download."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path_for(self, info: ArtifactInfo) -> Path:
        return self.directory / f"{info.sha256}.{'onnx' if info.format == 'onnx' else 'plan'}"

    async def ensure(self, store: ArtifactStore, info: ArtifactInfo) -> tuple[Path, bool]:
        """(local path, cache hit). A cached file is re-hashed before use; a bad one is fetched again."""
        path = self.path_for(info)
        if path.exists():
            if await asyncio.to_thread(sha256_file, path) == info.sha256:
                return path, True
            log.warning("cached %s is corrupt; fetching it again", path.name)
            path.unlink(missing_ok=True)
        await fetch_verified(store, info, path)
        return path, False


@dataclass(frozen=True)
class MemoryGuard:
    """Refuses a load that would not fit: the new engine lives beside the serving one until the switch."""

    per_frame_bytes: int = 40 * MIB  # activations per batch item (NanoDet 416 on CPU measures ~30 MiB)
    weights_factor: float = 2.0  # file size -> resident size while loading
    headroom_bytes: int = 256 * MIB  # kept free for everything else

    def required(self, info: ArtifactInfo, batch_size: int) -> int:
        return int(info.size_bytes * self.weights_factor) + self.per_frame_bytes * batch_size

    def check(self, probe: ResourceProbe, info: ArtifactInfo, batch_size: int) -> None:
        sample = probe.sample()
        if sample.gpu_memory_total_bytes is not None and sample.gpu_memory_used_bytes is not None:
            free = sample.gpu_memory_total_bytes - sample.gpu_memory_used_bytes
            kind = "GPU"
        else:
            free = sample.host_memory_total_bytes - sample.host_memory_used_bytes
            kind = "host"
        need = self.required(info, batch_size) + self.headroom_bytes
        if need > free:
            raise SwapError(f"not enough {kind} memory for {info.name} {info.version} batch {batch_size}: needs "
                            f"{need / MIB:.0f} MiB (incl. {self.headroom_bytes / MIB:.0f} MiB headroom), "
                            f"{free / MIB:.0f} MiB free")


def warm_up(engine: InferenceEngine, batch_size: int) -> None:
    run_padded(engine, np.zeros((batch_size, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32))


class EngineSwapper:
    """The agent's SwapHandler when a registry is configured."""

    def __init__(self, store: ArtifactStore, cache: ArtifactCache, device: ArtifactTarget | None = None,
                 guard: MemoryGuard | None = None, onnx_backend: str = "onnxruntime") -> None:
        self.store = store
        self.cache = cache
        self.device = device or ArtifactTarget()
        self.guard = guard or MemoryGuard()
        self.onnx_backend = onnx_backend  # what runs ONNX artifacts; engines run on their own runtime
        self._lock = asyncio.Lock()
        self.swaps = 0
        self.failures = 0

    async def resolve(self, name: str, version: str, batch_size: int) -> ArtifactInfo:
        found = await self.store.find(ArtifactQuery(name=name))
        if not found:
            raise SwapError(f"unknown model {name!r} in registry {self.store.location}")
        if version == "latest":
            version = latest_version(found) or version
        of_version = [a for a in found if a.version == version]
        if not of_version:
            raise SwapError(f"model {name!r} has no version {version!r} (have "
                            f"{sorted({a.version for a in found})})")
        info = pick_artifact(of_version, batch_size, self.device)
        if info is None:
            raise SwapError(f"no artifact of {name} {version} serves batch {batch_size} on {self.device.platform}")
        return info

    def backend_for(self, info: ArtifactInfo) -> str:
        return self.onnx_backend if info.format == "onnx" else FORMAT_BACKEND[info.format]

    async def load(self, info: ArtifactInfo, batch_size: int, probe: ResourceProbe) -> tuple[InferenceEngine,
                                                                                               dict[str, float]]:
        """Check memory, fetch (cache), load and warm up; returns the engine and timings in ms."""
        timings: dict[str, float] = {}
        await asyncio.to_thread(self.guard.check, probe, info, batch_size)  # before spending a download
        t = time.monotonic()
        path, hit = await self.cache.ensure(self.store, info)
        timings["download"] = round((time.monotonic() - t) * 1000, 2)
        timings["cache_hit"] = 1.0 if hit else 0.0
        t = time.monotonic()
        try:
            engine = await asyncio.to_thread(load_engine, path, self.backend_for(info))
        except EdgeAgentError as exc:
            raise SwapError(f"load of {info.name} {info.version} ({info.id}) failed: {exc}") from exc
        timings["load"] = round((time.monotonic() - t) * 1000, 2)
        t = time.monotonic()
        try:
            await asyncio.to_thread(warm_up, engine, batch_size)
        except Exception as exc:  # a runtime error on the first batch: never switch to it
            engine.close()
            raise SwapError(f"warm-up of {info.name} {info.version} failed: {exc}") from exc
        timings["warmup"] = round((time.monotonic() - t) * 1000, 2)
        return engine, timings

    async def apply(self, agent: Agent, desired: DesiredState) -> None:
        async with self._lock:  # one swap at a time; a newer order waits, an older one is dropped
            if desired.generation < agent.applied_generation:
                await agent.publish_event("desired_ignored", "superseded before its swap began", desired.generation)
                return
            await self._apply(agent, desired)

    async def _apply(self, agent: Agent, desired: DesiredState) -> None:
        pipeline = agent.pipeline
        serving = pipeline.serving
        name = desired.model or serving.model
        version = desired.version or serving.version
        batch_size = desired.batch_size or serving.batch_size
        started = time.monotonic()
        await agent.publish_event("swap_started", f"{name} {version} batch {batch_size}", desired.generation)
        try:
            t = time.monotonic()
            info = await self.resolve(name, version, batch_size)
            resolve_ms = round((time.monotonic() - t) * 1000, 2)
            sizes = serving.engine.batch_sizes
            if info.sha256 == serving.artifact_sha256 and (sizes is None or batch_size in sizes):
                # Same bytes (perhaps re-tagged as another version): no load, just the new setting.
                switched = pipeline.switch(batch_size=batch_size, model=name, version=info.version,
                                           generation=desired.generation)
                await switched
                self.swaps += 1
                await agent.publish_event("swap_finished", f"{name} {info.version} batch {batch_size} on the "
                                          "serving engine (same artifact)",
                                          desired.generation, {"resolve": resolve_ms,
                                                               "total": round((time.monotonic() - started) * 1000, 2)})
                await agent.publish_status()
                return
            engine, timings = await self.load(info, batch_size, agent.probe)
            t = time.monotonic()
            switched = pipeline.switch(batch_size=batch_size, engine=engine, model=name, version=info.version,
                                       generation=desired.generation, artifact_sha256=info.sha256)
            first_batch = await switched
            timings["switch"] = round((first_batch - t) * 1000, 2)
            timings["resolve"] = resolve_ms
            timings["total"] = round((first_batch - started) * 1000, 2)
            first_batch_wall = time.time() - (time.monotonic() - first_batch)
            timings["decision_to_first_batch"] = round((first_batch_wall - desired.ts) * 1000, 2)
            self.swaps += 1
            await agent.publish_event("swap_finished", f"{name} {info.version} batch {batch_size} ({info.format}, "
                                      f"artifact {info.id})", desired.generation, timings)
            await agent.publish_status()
        except asyncio.CancelledError:
            raise
        except (SwapError, RegistryError, EdgeAgentError, OSError) as exc:
            self.failures += 1
            await agent.publish_event("swap_failed", f"{exc}; still serving {serving.model} {serving.version} "
                                      f"batch {pipeline.batch_size}", desired.generation)

    async def prefetch(self, announcement: ModelAnnouncement, batch_size: int) -> None:
        """Fetch the announced version's artifact for the current batch size ahead of an order."""
        info = pick_artifact(announcement.artifacts, batch_size, self.device)
        if info is None:
            return
        try:
            await self.cache.ensure(self.store, info)
        except (RegistryError, OSError) as exc:
            log.warning("prefetch of %s %s failed: %s", info.name, info.version, exc)
