#!/usr/bin/env bash
# Installs what the tests need (mosquitto, Python packages), then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_tensorrt_api.py builds stub libraries for the real TensorRT bindings: cc, nm, readelf.
if ! command -v cc >/dev/null 2>&1 || ! command -v nm >/dev/null 2>&1 || ! command -v readelf >/dev/null 2>&1; then
  echo "test: installing gcc and binutils ..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc binutils >/dev/null
fi
# The device path's tests run PyTorch on the CPU (tests/test_device_path.py): torch 2.13.0, whose CPU build lies
# on this project's machines (PyPI's newer torch is a multi-GB CUDA build), and onnx2torch without its torchvision
# (PyPI's torchvision does not load beside a CPU torch; edge_agent/engines/pytorch.py copes without it).
if ! .venv/bin/python -c "import torch, onnx2torch" >/dev/null 2>&1; then
  echo "test: installing PyTorch (CPU) and onnx2torch ..." >&2
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -m pip install -q --no-deps "onnx2torch>=1.5.15" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -c "import torch; from edge_agent.engines import pytorch as p; assert p.available(), p.missing_runtime()"
fi
exec .venv/bin/python -m pytest -q "$@"
