"""Artifact metadata helpers: identity, queries, hashing and target matching."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from schemas import ArtifactInfo, ArtifactTarget

HASH_CHUNK = 1 << 20


def identity(info: ArtifactInfo) -> str:
    """What makes an artifact unique: one per name, version, format, precision, batch sizes and target."""
    t = info.target
    sizes = "dynamic" if info.dynamic_batch else ",".join(str(s) for s in sorted(info.batch_sizes))
    return "|".join([info.name, info.version, info.format, info.precision, sizes,
                     t.platform, t.sm or "", t.tensorrt or "", t.cuda or ""])


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtifactQuery:
    """Match on any subset of fields; None means any."""

    name: str | None = None
    version: str | None = None
    format: str | None = None
    batch_size: int | None = None
    platform: str | None = None
    sha256: str | None = None

    def matches(self, info: ArtifactInfo) -> bool:
        return (
            (self.name is None or info.name == self.name)
            and (self.version is None or info.version == self.version)
            and (self.format is None or info.format == self.format)
            and (self.platform is None or info.target.platform == self.platform)
            and (self.sha256 is None or info.sha256 == self.sha256)
            and (self.batch_size is None or serves(info, self.batch_size))
        )


def serves(info: ArtifactInfo, batch_size: int) -> bool:
    if info.dynamic_batch:
        return batch_size <= max(info.batch_sizes)
    return batch_size in info.batch_sizes


def target_matches(artifact: ArtifactTarget, device: ArtifactTarget) -> bool:
    """A TensorRT engine runs only where it was built: same platform, SM and TensorRT version."""
    return (artifact.platform == device.platform and artifact.sm == device.sm
            and artifact.tensorrt == device.tensorrt)


def pick_artifact(candidates: Iterable[ArtifactInfo], batch_size: int, device: ArtifactTarget) -> ArtifactInfo | None:
    """The best artifact for this device and batch size: a matching TensorRT engine, else ONNX;
    a static artifact for exactly that size before a dynamic one; newest first."""
    usable = [a for a in candidates if serves(a, batch_size)
              and (a.format == "onnx" or target_matches(a.target, device))]
    if not usable:
        return None
    return sorted(usable, key=lambda a: (a.format != "tensorrt", a.dynamic_batch, -a.created))[0]


def version_key(version: str) -> tuple[object, ...]:
    """Sort '1' < '2' < '10' and '1.2' < '1.10'; non-numeric parts compare as text."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.replace("-", ".").split("."))


def latest_version(artifacts: Iterable[ArtifactInfo]) -> str | None:
    versions = {a.version for a in artifacts}
    return max(versions, key=version_key) if versions else None
