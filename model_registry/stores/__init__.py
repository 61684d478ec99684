"""Artifact stores behind one Protocol: GridFS (MongoDB) and a local directory (embedded default)."""

from __future__ import annotations

from model_registry.stores.base import ArtifactStore
from model_registry.stores.local import LocalDirectoryStore


def open_store(location: str) -> ArtifactStore:
    """``mongodb://...`` / ``mongodb+srv://...`` -> GridFS; anything else is a directory."""
    if location.startswith(("mongodb://", "mongodb+srv://")):
        from model_registry.stores.gridfs import GridFsStore

        return GridFsStore(location)
    return LocalDirectoryStore(location)


__all__ = ["ArtifactStore", "LocalDirectoryStore", "open_store"]
