"""Local-directory store: the embedded default, no MongoDB needed.

Layout: ``{root}/blobs/{sha256}`` (content-addressed) and ``{root}/meta/{id}.json``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import ValidationError

from model_registry.artifacts import HASH_CHUNK, ArtifactQuery, identity
from model_registry.errors import ArtifactNotFound, DuplicateArtifact, StoreUnavailable
from model_registry.stores.base import Progress
from schemas import ArtifactInfo

KEY = "local"


class LocalDirectoryStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = asyncio.Lock()

    @property
    def location(self) -> str:
        return str(self.root)

    def _dirs(self) -> tuple[Path, Path]:
        blobs, meta = self.root / "blobs", self.root / "meta"
        try:
            blobs.mkdir(parents=True, exist_ok=True)
            meta.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"registry directory {self.root}: {exc.strerror}") from exc
        return blobs, meta

    def _read_all(self) -> list[ArtifactInfo]:
        _, meta = self._dirs()
        found = []
        for path in sorted(meta.glob("*.json")):
            try:
                found.append(ArtifactInfo.model_validate_json(path.read_bytes()))
            except (ValidationError, OSError):
                continue  # a half-written or foreign file is not an artifact
        return found

    def _put(self, path: Path, info: ArtifactInfo, progress: Progress | None) -> ArtifactInfo:
        blobs, meta = self._dirs()
        key = identity(info)
        if any(identity(a) == key for a in self._read_all()):
            raise DuplicateArtifact(f"{info.name} {info.version} {info.format} batch {info.batch_sizes} exists")
        stored = info.model_copy(update={"id": uuid.uuid4().hex})
        blob = blobs / info.sha256
        if not blob.exists():
            tmp = blobs / f".{stored.id}.part"
            moved = 0
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(HASH_CHUNK):
                    dst.write(chunk)
                    moved += len(chunk)
                    if progress:
                        progress(moved)
            os.replace(tmp, blob)
        meta_tmp = meta / f".{stored.id}.part"
        meta_tmp.write_text(stored.model_dump_json(indent=2))
        os.replace(meta_tmp, meta / f"{stored.id}.json")
        return stored

    async def put(self, path: Path, info: ArtifactInfo, progress: Progress | None = None) -> ArtifactInfo:
        async with self._lock:
            return await asyncio.to_thread(self._put, Path(path), info, progress)

    async def find(self, query: ArtifactQuery) -> list[ArtifactInfo]:
        return [a for a in await asyncio.to_thread(self._read_all) if query.matches(a)]

    async def get(self, artifact_id: str) -> ArtifactInfo:
        path = self.root / "meta" / f"{artifact_id}.json"
        try:
            return ArtifactInfo.model_validate_json(await asyncio.to_thread(path.read_bytes))
        except (FileNotFoundError, ValidationError):
            raise ArtifactNotFound(f"artifact {artifact_id} not in {self.root}") from None

    async def download(self, artifact_id: str) -> AsyncIterator[bytes]:
        info = await self.get(artifact_id)
        blob = self.root / "blobs" / info.sha256
        try:
            f = await asyncio.to_thread(open, blob, "rb")
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {artifact_id}: blob {info.sha256[:12]} missing") from None
        try:
            while chunk := await asyncio.to_thread(f.read, HASH_CHUNK):
                yield chunk
        finally:
            f.close()

    def _delete(self, artifact_id: str) -> None:
        meta = self.root / "meta" / f"{artifact_id}.json"
        try:
            info = ArtifactInfo.model_validate_json(meta.read_bytes())
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {artifact_id} not in {self.root}") from None
        meta.unlink()
        if not any(a.sha256 == info.sha256 for a in self._read_all()):
            (self.root / "blobs" / info.sha256).unlink(missing_ok=True)

    async def delete(self, artifact_id: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self._delete, artifact_id)

    async def close(self) -> None:
        return None
