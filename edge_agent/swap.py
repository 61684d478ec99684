"""Engine loading for swaps without downtime: resolve the artifact, check memory, fetch it into a
sha256-keyed cache, load and warm it up beside the serving engine.

The reconciler (``edge_agent.control``) decides when to load and switches at a batch boundary; every
failure here is an ``OrderRefused`` with a machine-readable reason, and the serving engine keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.engines import FORMAT_BACKEND, InferenceEngine, load_engine, run_padded
from edge_agent.errors import OrderRefused
from edge_agent.probes import ResourceProbe
from model_registry.artifacts import ArtifactQuery, latest_version, pick_artifact, sha256_file, target_matches
from model_registry.errors import RegistryError
from model_registry.registry import fetch_verified
from model_registry.stores.base import ArtifactStore
from schemas import ArtifactInfo, ArtifactTarget, ModelAnnouncement

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
    """Artifacts on disk by sha256: returning to a batch size or version costs no download.

    A file is hashed once per (size, mtime, inode): an announcement or order that finds it unchanged
    costs a stat, not a re-hash of many MB. Concurrent calls for one artifact share one fetch.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._verified: dict[Path, tuple[int, int, int]] = {}  # path -> stat signature when its hash matched
        self._fetching: dict[Path, asyncio.Future[None]] = {}
        self.hashes = 0  # files hashed (for tests and the chaos figures)
        self.fetches = 0

    def path_for(self, info: ArtifactInfo) -> Path:
        return self.directory / f"{info.sha256}.{'onnx' if info.format == 'onnx' else 'plan'}"

    @staticmethod
    def _signature(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino

    async def ensure(self, store: ArtifactStore, info: ArtifactInfo) -> tuple[Path, bool]:
        """(local path, cache hit). A cached file is verified by its hash (once while unchanged); a bad one is
        fetched again."""
        path = self.path_for(info)
        while (running := self._fetching.get(path)) is not None:
            await asyncio.shield(running)  # another caller is fetching it: share that download
        signature = self._signature(path)
        if signature is not None:
            if self._verified.get(path) == signature:
                return path, True
            self.hashes += 1
            if await asyncio.to_thread(sha256_file, path) == info.sha256:
                self._verified[path] = signature
                return path, True
            log.warning("cached %s is corrupt; fetching it again", path.name)
            self._verified.pop(path, None)
            path.unlink(missing_ok=True)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fetching[path] = done
        try:
            self.fetches += 1
            await fetch_verified(store, info, path)
            if (signature := self._signature(path)) is not None:
                self._verified[path] = signature  # just verified on the way in
        finally:
            del self._fetching[path]
            done.set_result(None)
        return path, False


@dataclass(frozen=True)
class MemoryGuard:
    """Refuses a load that would not fit: the new engine lives beside the serving one until the switch."""

    per_frame_bytes: int = 40 * MIB  # activations per batch item (NanoDet 416 on CPU measures ~30 MiB)
    weights_factor: float = 2.0  # file size -> resident size while loading
    headroom_bytes: int = 256 * MIB  # kept free for everything else

    def required(self, info: ArtifactInfo, batch_size: int) -> int:
        return int(info.size_bytes * self.weights_factor) + self.per_frame_bytes * batch_size

    @staticmethod
    def free_bytes(probe: ResourceProbe) -> tuple[int, str]:
        """Free memory of the kind that bounds a load: the GPU's where there is one, else the host's."""
        sample = probe.sample()
        if sample.gpu_memory_total_bytes is not None and sample.gpu_memory_used_bytes is not None:
            return sample.gpu_memory_total_bytes - sample.gpu_memory_used_bytes, "GPU"
        return sample.host_memory_total_bytes - sample.host_memory_used_bytes, "host"

    def _refuse_unless_fits(self, probe: ResourceProbe, need: int, what: str) -> None:
        free, kind = self.free_bytes(probe)
        need += self.headroom_bytes
        if need > free:
            raise OrderRefused("memory", f"not enough {kind} memory for {what}: needs {need / MIB:.0f} MiB (incl. "
                               f"{self.headroom_bytes / MIB:.0f} MiB headroom), {free / MIB:.0f} MiB free")

    def check(self, probe: ResourceProbe, info: ArtifactInfo, batch_size: int) -> None:
        """A new engine for ``info`` at ``batch_size`` beside the serving one."""
        self._refuse_unless_fits(probe, self.required(info, batch_size),
                                 f"{info.name} {info.version} batch {batch_size}")

    def check_growth(self, probe: ResourceProbe, from_size: int, to_size: int) -> None:
        """The serving engine at a larger batch: only the extra frames' activations are new."""
        if to_size > from_size:
            self._refuse_unless_fits(probe, self.per_frame_bytes * (to_size - from_size),
                                     f"batch {to_size} on the serving engine (from {from_size})")


def warm_up(engine: InferenceEngine, batch_size: int) -> None:
    width, height = engine.input_size
    run_padded(engine, np.zeros((batch_size, 3, height, width), dtype=np.float32))


class EngineSwapper:
    """Loads engines from a model registry for the reconciler: resolve, guard, fetch, load, warm up."""

    def __init__(self, store: ArtifactStore, cache: ArtifactCache, device: ArtifactTarget | None = None,
                 guard: MemoryGuard | None = None, onnx_backend: str = "onnxruntime",
                 backend_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.store = store
        self.cache = cache
        self.device = device or ArtifactTarget()
        self.guard = guard or MemoryGuard()
        self.onnx_backend = onnx_backend  # what runs ONNX artifacts; engines run on their own runtime
        self.backend_options = dict(backend_options or {})  # backend -> its own settings (engines/settings.py)

    async def _find(self, name: str) -> list[ArtifactInfo]:
        try:
            return await self.store.find(ArtifactQuery(name=name))
        except (RegistryError, OSError) as exc:
            raise OrderRefused("fetch_error", f"registry {self.store.location} unreadable: {exc}") from exc

    async def resolve(self, name: str, version: str, batch_size: int) -> ArtifactInfo:
        found = await self._find(name)
        if not found:
            raise OrderRefused("unknown_model", f"unknown model {name!r} in registry {self.store.location}")
        if version == "latest":
            version = latest_version(found) or version
        of_version = [a for a in found if a.version == version]
        if not of_version:
            raise OrderRefused("unknown_version", f"model {name!r} has no version {version!r} (have "
                               f"{sorted({a.version for a in found})})")
        info = pick_artifact(of_version, batch_size, self.device)
        if info is None:
            raise OrderRefused("no_artifact", f"no artifact of {name} {version} serves batch {batch_size} on "
                               f"{self.device.platform} (serves {self.servable(of_version)})")
        return info

    def usable(self, info: ArtifactInfo) -> bool:
        return info.format == "onnx" or target_matches(info.target, self.device)

    def servable(self, artifacts: list[ArtifactInfo]) -> list[int]:
        """Batch sizes these artifacts serve on this device (a dynamic one: every size up to its maximum)."""
        sizes: set[int] = set()
        for a in artifacts:
            if self.usable(a):
                sizes.update(range(1, max(a.batch_sizes) + 1) if a.dynamic_batch else a.batch_sizes)
        return sorted(sizes)

    async def servable_sizes(self, name: str, version: str) -> list[int]:
        """What an order for ``name`` ``version`` may ask for, from what the registry holds now."""
        return self.servable([a for a in await self._find(name) if a.version == version])

    def backend_for(self, info: ArtifactInfo) -> str:
        return self.onnx_backend if info.format == "onnx" else FORMAT_BACKEND[info.format]

    async def load(self, info: ArtifactInfo, batch_size: int, probe: ResourceProbe) -> tuple[InferenceEngine,
                                                                                               dict[str, float]]:
        """Check memory, fetch (cache), load and warm up; returns the engine and timings in ms.

        Raises OrderRefused only: ``memory`` before anything is spent, ``fetch_error`` for the download,
        ``load_error`` for any exception the runtime raises while loading or on the first batch."""
        timings: dict[str, float] = {}
        await asyncio.to_thread(self.guard.check, probe, info, batch_size)  # before spending a download
        t = time.monotonic()
        try:
            path, hit = await self.cache.ensure(self.store, info)
        except (RegistryError, OSError) as exc:
            raise OrderRefused("fetch_error", f"fetch of {info.name} {info.version} ({info.id}) failed: "
                               f"{exc}") from exc
        timings["download"] = round((time.monotonic() - t) * 1000, 2)
        timings["cache_hit"] = 1.0 if hit else 0.0
        t = time.monotonic()
        try:
            backend = self.backend_for(info)
            engine = await asyncio.to_thread(load_engine, path, backend, self.backend_options.get(backend))
        except Exception as exc:  # any runtime error (CUDA, MemoryError, a bad file): refuse, keep serving
            raise OrderRefused("load_error", f"load of {info.name} {info.version} ({info.id}) failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        timings["load"] = round((time.monotonic() - t) * 1000, 2)
        t = time.monotonic()
        try:
            await asyncio.to_thread(warm_up, engine, batch_size)
        except Exception as exc:  # a runtime error on the first batch: never switch to it
            engine.close()
            raise OrderRefused("load_error", f"warm-up of {info.name} {info.version} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        timings["warmup"] = round((time.monotonic() - t) * 1000, 2)
        return engine, timings

    async def prefetch(self, announcement: ModelAnnouncement, batch_size: int, model_type: str | None = None) -> None:
        """Fetch the announced version's artifact for the current batch size ahead of an order; not one
        recorded as another ``model_type`` than the agent decodes (an order for it would be refused)."""
        info = pick_artifact(announcement.artifacts, batch_size, self.device)
        if info is None:
            return
        if model_type is not None and info.model_type not in (None, model_type):
            log.info("not prefetching %s %s: a %s model, this agent decodes %s", info.name, info.version,
                     info.model_type, model_type)
            return
        try:
            await self.cache.ensure(self.store, info)
        except (RegistryError, OSError) as exc:
            log.warning("prefetch of %s %s failed: %s", info.name, info.version, exc)
