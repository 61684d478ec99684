"""The agent's artifact cache: one download for many concurrent callers, no re-hash of an unchanged file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from edge_agent.swap import ArtifactCache
from model_registry.artifacts import sha256_file
from model_registry.stores.local import LocalDirectoryStore
from schemas import ArtifactInfo


async def stored(tmp_path: Path) -> tuple[LocalDirectoryStore, ArtifactInfo]:
    blob = tmp_path / "model.onnx"
    blob.write_bytes(os.urandom(3 << 20))
    store = LocalDirectoryStore(tmp_path / "registry")
    info = await store.put(blob, ArtifactInfo(id="pending", name="m", version="1", batch_sizes=[1], format="onnx",
                                              sha256=sha256_file(blob), size_bytes=blob.stat().st_size))
    return store, info


async def test_concurrent_callers_share_one_download_and_unchanged_files_are_not_hashed_again(tmp_path: Path) -> None:
    store, info = await stored(tmp_path)
    cache = ArtifactCache(tmp_path / "cache")
    results = await asyncio.gather(*(cache.ensure(store, info) for _ in range(20)))
    assert cache.fetches == 1 and cache.hashes == 0
    assert sum(not hit for _, hit in results) == 1 and len({p for p, _ in results}) == 1
    for _ in range(100):  # e.g. a hundred announcements of the model it serves
        path, hit = await cache.ensure(store, info)
        assert hit
    assert cache.fetches == 1 and cache.hashes == 0
    assert sha256_file(path) == info.sha256


async def test_a_changed_or_corrupt_cached_file_is_verified_and_fetched_again(tmp_path: Path) -> None:
    store, info = await stored(tmp_path)
    cache = ArtifactCache(tmp_path / "cache")
    path, _ = await cache.ensure(store, info)
    before = path.stat().st_mtime_ns
    with open(path, "r+b") as f:  # rewritten after it was verified (a tamper, a half copy)
        f.write(b"garbage" * 16)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # as any rewrite a second later would leave it
    again, hit = await cache.ensure(store, info)
    assert not hit and cache.hashes == 1 and cache.fetches == 2
    assert sha256_file(again) == info.sha256
    fresh = ArtifactCache(tmp_path / "cache")  # a restarted agent trusts nothing it did not hash itself
    _, hit = await fresh.ensure(store, info)
    assert hit and fresh.hashes == 1 and fresh.fetches == 0
