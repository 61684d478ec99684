"""Artifact stores: one contract suite that the local-directory and the GridFS store both pass."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from model_registry.artifacts import ArtifactQuery, identity, pick_artifact, sha256_file
from model_registry.errors import (
    ArtifactNotFound,
    DuplicateArtifact,
    IntegrityError,
    ModelTypeMismatch,
    StoreUnavailable,
)
from model_registry.registry import Registry, fetch_verified
from model_registry.stores.gridfs import GridFsStore
from model_registry.stores.local import LocalDirectoryStore
from schemas import ArtifactInfo, ArtifactTarget, ModelAnnouncement, Topics, decode
from tests.conftest import MODEL
from tests.mqtt_helpers import eventually, observing


def blob(tmp_path: Path, size: int, seed: int = 1) -> Path:
    path = tmp_path / f"blob{seed}.bin"
    path.write_bytes(bytes((i * seed) % 251 for i in range(size)))
    return path


def info_for(path: Path, **fields) -> ArtifactInfo:
    base = dict(id="pending", name="det", version="1", batch_sizes=[4], format="onnx",
                sha256=sha256_file(path), size_bytes=path.stat().st_size)
    return ArtifactInfo(**(base | fields))


def one_row_per_cell_model(path: Path) -> Path:
    """A 640x640 model with one [B, 8400, 85] output: a layout ``detect_model_type`` cannot tell."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["raw"])], "one_row_per_cell",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8400, 85])])
    onnx.save(helper.make_model(graph), str(path))
    return path


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


    async def test_push_records_the_model_type_and_announces_it(self, store, tmp_path: Path,
                                                               yolov3_tiny: Path) -> None:
        heard: list[ModelAnnouncement] = []

        async def announcer(message: ModelAnnouncement) -> None:
            heard.append(message)

        registry = Registry(store, announcer)
        nano = await registry.push(MODEL, "nanodet", "1", export_static=[2])
        yolo = await registry.push(yolov3_tiny, "yolo", "1")
        assert [a.model_type for a in nano] == ["nanodet", "nanodet"], "inferred, and kept by the static exports"
        assert [a.model_type for a in yolo] == ["yolo-v5"]
        assert {a.model_type for a in await store.find(ArtifactQuery(name="nanodet"))} == {"nanodet"}
        assert (await store.get(yolo[0].id)).model_type == "yolo-v5", "stored, not only returned"
        assert [a.model_type for a in heard[-1].artifacts] == ["yolo-v5"] and heard[-1].name == "yolo"
        # A TensorRT plan has no graph: it takes the type its version records (the ONNX it was built from) ...
        plan = blob(tmp_path, 2000)
        built = await registry.push(plan, "nanodet", "1", batch_sizes=[4], fmt="tensorrt")
        assert built[0].model_type == "nanodet"
        # ... and a type that contradicts the model, or what its version records, is refused, nothing stored.
        with pytest.raises(ModelTypeMismatch, match="--model-type yolo-v5 contradicts the model.*nanodet"):
            await registry.push(MODEL, "nanodet", "2", model_type="yolo-v5")
        with pytest.raises(ModelTypeMismatch, match="--model-type nanodet contradicts the model.*yolo-v5"):
            await registry.push(yolov3_tiny, "yolo", "2", model_type="nanodet")
        # One row per cell: YOLOX's raw head or a decoded anchor-free one. Unknown unless given; a given type
        # is still checked against the graph by its adapter.
        one_row_per_cell = one_row_per_cell_model(tmp_path / "x.onnx")
        assert (await registry.push(one_row_per_cell, "x", "1"))[0].model_type is None
        with pytest.raises(ModelTypeMismatch, match="--model-type nanodet does not fit the model: input 640x640"):
            await registry.push(one_row_per_cell, "x", "2", model_type="nanodet")
        assert (await registry.push(one_row_per_cell, "x", "3", model_type="yolox"))[0].model_type == "yolox"
        with pytest.raises(ModelTypeMismatch, match="yolo 1 is recorded as yolo-v5, not yolox"):
            await registry.push(plan, "yolo", "1", batch_sizes=[8], fmt="tensorrt", model_type="yolox")
        assert await store.find(ArtifactQuery(version="2")) == []
        assert len(await store.find(ArtifactQuery(name="yolo"))) == 1

    async def test_an_old_record_without_a_model_type_still_loads(self, store, tmp_path: Path) -> None:
        path = blob(tmp_path, 1500)
        artifact_id = await self.put_old_record(store, path, info_for(path, name="old"))
        found = await store.find(ArtifactQuery(name="old"))
        assert [(a.id, a.model_type) for a in found] == [(artifact_id, None)], "loads, type unknown"
        assert (await store.get(artifact_id)).model_type is None
        announced = await Registry(store).announcement("old")
        assert [a.model_type for a in announced.artifacts] == [None]
        # A plan pushed beside it finds no type to take: unknown too.
        plan = blob(tmp_path, 900, seed=3)
        assert (await Registry(store).push(plan, "old", "1", batch_sizes=[8], fmt="tensorrt"))[0].model_type is None


class TestLocalDirectoryStore(StoreContract):
    @staticmethod
    async def put_old_record(store: LocalDirectoryStore, path: Path, info: ArtifactInfo) -> str:
        """The record as a store that predates model types wrote it: no ``model_type`` key at all."""
        stored = await store.put(path, info)
        meta = store.root / "meta" / f"{stored.id}.json"
        record = json.loads(meta.read_text())
        del record["model_type"]
        meta.write_text(json.dumps(record))
        return stored.id

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

    @staticmethod
    async def put_old_record(store: GridFsStore, path: Path, info: ArtifactInfo) -> str:
        """The GridFS file as a store that predates model types wrote it: metadata without ``model_type``."""
        metadata = info.model_dump(mode="json", exclude={"id", "model_type"}) | {"identity": identity(info)}
        oid = await store._bucket.upload_from_stream(path.name, path.read_bytes(), metadata=metadata)
        return str(oid)

    async def test_unreachable_mongo_is_a_clear_error(self) -> None:
        store = GridFsStore("mongodb://127.0.0.1:9", timeout_ms=300)
        with pytest.raises(StoreUnavailable):
            await store.find(ArtifactQuery(name="x"))
        await store.close()


def test_push_announces_the_model_type_and_refuses_a_contradicting_one(broker, prefix, tmp_path: Path) -> None:
    """``model-registry push --broker``: the retained announcement names the type; ``--model-type`` that the
    model contradicts is one line on stderr, exit 2, nothing stored."""
    import asyncio

    def registry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "model_registry.cli", "--store", str(tmp_path / "reg"), *args],
                              capture_output=True, text=True, timeout=240, cwd=tmp_path)

    wrong = registry("push", str(MODEL), "--name", "nanodet", "--version", "1", "--model-type", "yolo-ultralytics")
    lines = [line for line in wrong.stderr.splitlines() if line.strip()]
    assert wrong.returncode == 2 and len(lines) == 1, wrong.stderr
    assert "--model-type yolo-ultralytics contradicts the model" in lines[0] and "nanodet" in lines[0]
    pushed = registry("push", str(MODEL), "--name", "nanodet", "--version", "1", "--broker", broker.url,
                      "--prefix", prefix)
    assert pushed.returncode == 0, pushed.stderr
    assert "type nanodet" in pushed.stdout

    async def retained() -> ModelAnnouncement:
        async with observing(broker.url, f"{prefix}/models/#") as obs:
            topic = Topics(prefix).model("nanodet")
            await eventually(lambda: obs.on(topic), 10, "the retained announcement")
            return decode(ModelAnnouncement, obs.on(topic)[-1])

    announcement = asyncio.run(retained())
    assert [(a.version, a.model_type) for a in announcement.artifacts] == [("1", "nanodet")]
    listed = registry("list", "--json")
    assert [(r["version"], r["model_type"]) for r in json.loads(listed.stdout)] == [("1", "nanodet")]
