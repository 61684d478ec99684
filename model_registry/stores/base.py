"""The artifact-store Protocol (GridFS, local directory)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from model_registry.artifacts import ArtifactQuery
from schemas import ArtifactInfo

Progress = Callable[[int], None]  # bytes moved so far


@runtime_checkable
class ArtifactStore(Protocol):
    async def put(self, path: Path, info: ArtifactInfo, progress: Progress | None = None) -> ArtifactInfo:
        """Store the file under ``info`` (its ``id`` is assigned here); DuplicateArtifact if the
        identity exists. ``info.sha256`` and ``size_bytes`` must describe the file."""
        ...

    async def find(self, query: ArtifactQuery) -> list[ArtifactInfo]: ...

    async def get(self, artifact_id: str) -> ArtifactInfo:
        """ArtifactNotFound if absent."""
        ...

    def download(self, artifact_id: str) -> AsyncIterator[bytes]:
        """Stream the bytes in chunks; ArtifactNotFound if absent."""
        ...

    async def delete(self, artifact_id: str) -> None: ...

    async def close(self) -> None: ...

    @property
    def location(self) -> str: ...
