"""Artifact stores: one contract suite that the local-directory and the GridFS store both pass."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from model_registry.artifacts import ArtifactQuery, pick_artifact, sha256_file
from model_registry.errors import ArtifactNotFound, DuplicateArtifact, IntegrityError, StoreUnavailable
from model_registry.registry import Registry, fetch_verified
from model_registry.stores.gridfs import GridFsStore
from model_registry.stores.local import LocalDirectoryStore
from schemas import ArtifactInfo, ArtifactTarget, ModelAnnouncement
from tests.conftest import MODEL


def blob(tmp_path: Path, size: int, seed: int = 1) -> Path:
    path = tmp_path / f"blob{seed}.bin"
    path.write_bytes(bytes((i * seed) % 251 for i in range(size)))
    return path


def info_for(path: Path, **fields) -> ArtifactInfo:
    base = dict(id="pending", name="det", version="1", batch_sizes=[4], format="onnx",
                sha256=sha256_file(path), size_bytes=path.stat().st_size)
    return ArtifactInfo(**(base | fields))


class StoreContract:
    """Every store passes these; subclasses provide the ``store`` fixture."""

    async def test_put_get_find_download(self, store, tmp_path: Path) -> None:
        path = blob(tmp_path, 3 * 2**20 + 17)  # several chunks, and a ragged end
        moved: list[int] = []
        stored = await store.put(path, info_for(path), moved.append)
        assert stored.id != "pending" and moved[-1] == path.stat().st_size
        assert (await store.get(stored.id)) == stored
        data = b"".join([chunk async for chunk in store.download(stored.id)])
        assert data == path.read_bytes()
        assert await store.find(ArtifactQuery(name="det")) == [stored]
        assert await store.find(ArtifactQuery(name="det", version="2")) == []
        assert await store.find(ArtifactQuery(sha256=stored.sha256)) == [stored]
        assert await store.find(ArtifactQuery(batch_size=4)) == [stored]
        assert await store.find(ArtifactQuery(batch_size=8)) == []

    async def test_identity_is_unique(self, store, tmp_path: Path) -> None:
        path = blob(tmp_path, 1000)
        await store.put(path, info_for(path))
        with pytest.raises(DuplicateArtifact):
            await store.put(path, info_for(path))
        other = await store.put(path, info_for(path, batch_sizes=[8]))  # another batch size is another artifact
        assert other.batch_sizes == [8]
        assert len(await store.find(ArtifactQuery(name="det"))) == 2

    async def test_query_by_each_field(self, store, tmp_path: Path) -> None:
        a, b = blob(tmp_path, 500, 1), blob(tmp_path, 600, 2)
        onnx = await store.put(a, info_for(a, version="1"))
        trt = await store.put(b, info_for(b, version="2", format="tensorrt", precision="fp16",
                                          target=ArtifactTarget(platform="jetson-orin", sm="8.7", tensorrt="10.3")))
        assert await store.find(ArtifactQuery(format="tensorrt")) == [trt]
        assert await store.find(ArtifactQuery(version="1")) == [onnx]
        assert await store.find(ArtifactQuery(platform="jetson-orin")) == [trt]
        assert (await store.get(trt.id)).target.sm == "8.7"

    async def test_delete_and_missing(self, store, tmp_path: Path) -> None:
        path = blob(tmp_path, 700)
        stored = await store.put(path, info_for(path))
        await store.delete(stored.id)
        with pytest.raises(ArtifactNotFound):
            await store.get(stored.id)
        with pytest.raises(ArtifactNotFound):
            await store.delete(stored.id)
        with pytest.raises(ArtifactNotFound):
            _ = [c async for c in store.download(stored.id)]
        assert await store.find(ArtifactQuery(name="det")) == []

    async def test_registry_push_exports_static_batches_and_announces(self, store, tmp_path: Path) -> None:
        heard: list[ModelAnnouncement] = []

        async def announcer(message: ModelAnnouncement) -> None:
            heard.append(message)

        registry = Registry(store, announcer)
        pushed = await registry.push(MODEL, "nanodet", "1", export_static=[1, 4])
        assert [(a.batch_sizes, a.dynamic_batch) for a in pushed] == [([64], True), ([1], False), ([4], False)]
        assert len({a.sha256 for a in pushed}) == 3
        assert heard and heard[-1].latest_version == "1" and len(heard[-1].artifacts) == 3
        chosen = pick_artifact(await store.find(ArtifactQuery(name="nanodet")), 4, ArtifactTarget())
        assert chosen.batch_sizes == [4] and not chosen.dynamic_batch  # static beats dynamic
        out = await fetch_verified(store, chosen, tmp_path / "pulled.onnx")
        assert sha256_file(out) == chosen.sha256
        forged = chosen.model_copy(update={"sha256": "0" * 64})
        with pytest.raises(IntegrityError):
            await fetch_verified(store, forged, tmp_path / "forged.onnx")
        assert not (tmp_path / "forged.onnx").exists()

    async def test_concurrent_fetches_of_one_artifact_all_succeed(self, store, tmp_path: Path) -> None:
        import asyncio

        path = blob(tmp_path, 3 << 20, seed=7)  # several chunks: fetches interleave
        info = await store.put(path, info_for(path))
        results = await asyncio.gather(*(fetch_verified(store, info, tmp_path / "cache" / "one.bin")
                                         for _ in range(20)), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert sha256_file(tmp_path / "cache" / "one.bin") == info.sha256
        assert [p.name for p in (tmp_path / "cache").iterdir()] == ["one.bin"], "no temporary file left behind"


class TestLocalDirectoryStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalDirectoryStore:
        return LocalDirectoryStore(tmp_path / "registry")

    def test_unwritable_directory_is_a_clear_error(self, tmp_path: Path) -> None:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        store = LocalDirectoryStore(blocker / "registry")
        with pytest.raises(StoreUnavailable):
            store._dirs()


class TestGridFsStore(StoreContract):
    @pytest.fixture
    async def store(self, mongo_url: str):
        store = GridFsStore(mongo_url, database=f"t{uuid.uuid4().hex[:10]}")
        yield store
        await store.close()

    async def test_unreachable_mongo_is_a_clear_error(self) -> None:
        store = GridFsStore("mongodb://127.0.0.1:9", timeout_ms=300)
        with pytest.raises(StoreUnavailable):
            await store.find(ArtifactQuery(name="x"))
        await store.close()
