"""Registry operations over any store: push (with static exports), verified download, announcement."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from model_registry.artifacts import ArtifactQuery, latest_version, sha256_file
from model_registry.errors import ArtifactNotFound, IntegrityError, ModelTypeMismatch, RegistryError
from model_registry.export import export_static_batch, inspect_onnx
from model_registry.model_type import onnx_model_type
from model_registry.stores.base import ArtifactStore, Progress
from schemas import ArtifactInfo, ArtifactTarget, ModelAnnouncement

DYNAMIC_MAX_BATCH = 64  # what a dynamic-batch ONNX artifact is declared to serve unless told
Announcer = Callable[[ModelAnnouncement], Awaitable[None]]


async def fetch_verified(store: ArtifactStore, info: ArtifactInfo, destination: Path,
                         progress: Progress | None = None) -> Path:
    """Stream an artifact to ``destination`` (atomically), checking its sha256 on the way."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file of its own per fetch: concurrent fetches of one artifact (in one process or several)
    # never write into each other's bytes; the last complete, verified one wins the atomic rename.
    fd, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    part = Path(name)
    digest = hashlib.sha256()
    moved = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in store.download(info.id):
                digest.update(chunk)
                await asyncio.to_thread(f.write, chunk)
                moved += len(chunk)
                if progress:
                    progress(moved)
        if digest.hexdigest() != info.sha256:
            raise IntegrityError(f"artifact {info.id} ({info.name} {info.version}): sha256 {digest.hexdigest()[:12]}… "
                                 f"!= recorded {info.sha256[:12]}…")
        if moved != info.size_bytes:
            raise IntegrityError(f"artifact {info.id}: {moved} bytes, recorded {info.size_bytes}")
        os.replace(part, destination)
    finally:
        part.unlink(missing_ok=True)
    return destination


class Registry:
    def __init__(self, store: ArtifactStore, announcer: Announcer | None = None) -> None:
        self.store = store
        self.announcer = announcer

    async def _put_file(self, path: Path, info: ArtifactInfo, progress: Progress | None) -> ArtifactInfo:
        sha = await asyncio.to_thread(sha256_file, path)
        return await self.store.put(path, info.model_copy(update={"sha256": sha, "size_bytes": path.stat().st_size}),
                                    progress)

    async def push(
        self,
        path: Path,
        name: str,
        version: str,
        batch_sizes: list[int] | None = None,
        fmt: str = "onnx",
        precision: str = "fp32",
        target: ArtifactTarget | None = None,
        export_static: list[int] | None = None,
        progress: Progress | None = None,
        model_type: str | None = None,
    ) -> list[ArtifactInfo]:
        """Store ``path`` (and its static-batch exports). ``model_type`` (the detector family) is checked
        against an ONNX graph, else inferred from it; a TensorRT plan has no graph to read, so it takes the
        type given, else the one its version already records (the ONNX it was built from)."""
        if not path.is_file():
            raise RegistryError(f"{path}: file not found")
        pushed: list[ArtifactInfo] = []
        dynamic = False
        if fmt == "onnx":
            shape = await asyncio.to_thread(inspect_onnx, path)
            if shape.batch is not None:
                if batch_sizes and batch_sizes != [shape.batch]:
                    raise RegistryError(f"{path}: static batch {shape.batch}, not {batch_sizes}")
                batch_sizes = [shape.batch]
            else:
                dynamic = True
                batch_sizes = batch_sizes or [DYNAMIC_MAX_BATCH]
            if export_static and not dynamic:
                raise RegistryError(f"{path}: --export-static needs a model with a dynamic batch axis")
            model_type = await asyncio.to_thread(onnx_model_type, path, model_type)
        elif not batch_sizes:
            raise RegistryError("a TensorRT engine needs --batch-sizes")
        model_type = await self._version_model_type(name, version, model_type)
        base = ArtifactInfo(id="pending", name=name, version=version, batch_sizes=batch_sizes, format=fmt,  # type: ignore[arg-type]
                            precision=precision, dynamic_batch=dynamic, model_type=model_type,  # type: ignore[arg-type]
                            target=target or ArtifactTarget(), sha256="0" * 64, size_bytes=0)
        pushed.append(await self._put_file(path, base, progress))
        for size in export_static or []:
            with tempfile.TemporaryDirectory(prefix="edgebatch-export-") as tmp:
                static = await asyncio.to_thread(export_static_batch, path, size, Path(tmp) / f"{name}-b{size}.onnx")
                info = base.model_copy(update={"batch_sizes": [size], "dynamic_batch": False})
                pushed.append(await self._put_file(static, info, progress))
        await self.announce(name)
        return pushed

    async def _version_model_type(self, name: str, version: str, model_type: str | None) -> str | None:
        """One version is one network, so one type: a new artifact agrees with what its version records, and
        one whose type is unknown takes it."""
        recorded = sorted({a.model_type for a in await self.store.find(ArtifactQuery(name=name, version=version))
                           if a.model_type is not None})
        if model_type is not None and recorded and recorded != [model_type]:
            raise ModelTypeMismatch(f"{name} {version} is recorded as {', '.join(recorded)}, not {model_type}")
        if model_type is None and len(recorded) == 1:
            return recorded[0]
        return model_type

    async def announcement(self, name: str) -> ModelAnnouncement:
        artifacts = await self.store.find(ArtifactQuery(name=name))
        latest = latest_version(artifacts)
        if latest is None:
            raise ArtifactNotFound(f"no artifacts named {name!r}")
        return ModelAnnouncement(name=name, latest_version=latest,
                                 artifacts=[a for a in artifacts if a.version == latest])

    async def announce(self, name: str) -> ModelAnnouncement | None:
        if self.announcer is None:
            return None
        message = await self.announcement(name)
        await self.announcer(message)
        return message
