"""GridFS store through PyMongo's async API (``AsyncMongoClient``, ``AsyncGridFSBucket``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from gridfs import AsyncGridFSBucket
from gridfs.errors import FileExists, NoFile
from pydantic import ValidationError
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from model_registry.artifacts import HASH_CHUNK, ArtifactQuery, identity
from model_registry.errors import ArtifactNotFound, DuplicateArtifact, StoreUnavailable
from model_registry.stores.base import Progress
from schemas import ArtifactInfo

KEY = "gridfs"
CHUNK_BYTES = 1 << 20


def _problem(exc: PyMongoError) -> str:
    """The part of a driver error a person needs (the topology dump is for debugging)."""
    text = str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0]
    return text[:300]


def _object_id(artifact_id: str) -> ObjectId:
    try:
        return ObjectId(artifact_id)
    except (InvalidId, TypeError):
        raise ArtifactNotFound(f"artifact id {artifact_id!r} is not a GridFS id") from None


class GridFsStore:
    """Artifacts in a GridFS bucket; metadata in each file's ``metadata`` with a unique identity index."""

    def __init__(self, url: str, database: str = "edgebatch", bucket: str = "artifacts",
                 timeout_ms: int = 5000) -> None:
        self.url = url
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
        self._db = self._client[database]
        self._bucket_name = bucket
        self._bucket = AsyncGridFSBucket(self._db, bucket_name=bucket, chunk_size_bytes=CHUNK_BYTES)
        self._indexed = False

    @property
    def location(self) -> str:
        return self.url.split("@")[-1]  # never echo credentials

    async def _ensure_indexes(self) -> None:
        if self._indexed:
            return
        files = self._db[f"{self._bucket_name}.files"]
        try:
            await files.create_index([("metadata.identity", ASCENDING)], unique=True, name="artifact_identity")
            for field in ("name", "version", "format", "sha256"):
                await files.create_index([(f"metadata.{field}", ASCENDING)], name=f"artifact_{field}")
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB at {self.location}: {_problem(exc)}") from exc
        self._indexed = True

    @staticmethod
    def _info(doc: Any) -> ArtifactInfo | None:
        meta = dict(getattr(doc, "metadata", None) or {})
        meta.pop("identity", None)
        try:
            return ArtifactInfo.model_validate({**meta, "id": str(doc._id)})
        except ValidationError:
            return None

    async def put(self, path: Path, info: ArtifactInfo, progress: Progress | None = None) -> ArtifactInfo:
        await self._ensure_indexes()
        key = identity(info)
        meta = info.model_dump(mode="json", exclude={"id"}) | {"identity": key}
        try:
            if await self._db[f"{self._bucket_name}.files"].find_one({"metadata.identity": key}):
                raise DuplicateArtifact(f"{info.name} {info.version} {info.format} batch {info.batch_sizes} exists")
            stream = self._bucket.open_upload_stream(Path(path).name, metadata=meta)
            moved = 0
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(HASH_CHUNK):
                        await stream.write(chunk)
                        moved += len(chunk)
                        if progress:
                            progress(moved)
                await stream.close()
            except (FileExists, DuplicateKeyError) as exc:
                await self._bucket.delete(stream._id)  # drop the chunks of the refused file
                raise DuplicateArtifact(f"{info.name} {info.version}: identity exists") from exc
            except BaseException:
                await stream.abort()
                raise
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB at {self.location}: {_problem(exc)}") from exc
        return info.model_copy(update={"id": str(stream._id)})

    async def find(self, query: ArtifactQuery) -> list[ArtifactInfo]:
        flt: dict[str, Any] = {}
        for field in ("name", "version", "format", "sha256"):
            value = getattr(query, field)
            if value is not None:
                flt[f"metadata.{field}"] = value
        if query.platform is not None:
            flt["metadata.target.platform"] = query.platform
        try:
            found = [self._info(doc) async for doc in self._bucket.find(flt)]
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB at {self.location}: {_problem(exc)}") from exc
        return [a for a in found if a is not None and query.matches(a)]

    async def get(self, artifact_id: str) -> ArtifactInfo:
        oid = _object_id(artifact_id)
        try:
            async for doc in self._bucket.find({"_id": oid}):
                info = self._info(doc)
                if info is not None:
                    return info
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB at {self.location}: {_problem(exc)}") from exc
        raise ArtifactNotFound(f"artifact {artifact_id} not in {self.location}")

    async def download(self, artifact_id: str) -> AsyncIterator[bytes]:
        oid = _object_id(artifact_id)
        try:
            stream = await self._bucket.open_download_stream(oid)
        except NoFile:
            raise ArtifactNotFound(f"artifact {artifact_id} not in {self.location}") from None
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB at {self.location}: {_problem(exc)}") from exc
        try:
            while chunk := await stream.readchunk():
                yield chunk
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB at {self.location}: {_problem(exc)}") from exc
        finally:
            await stream.close()

    async def delete(self, artifact_id: str) -> None:
        try:
            await self._bucket.delete(_object_id(artifact_id))
        except NoFile:
            raise ArtifactNotFound(f"artifact {artifact_id} not in {self.location}") from None
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB at {self.location}: {_problem(exc)}") from exc

    async def close(self) -> None:
        await self._client.close()
