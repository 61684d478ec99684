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
exec .venv/bin/python -m pytest -q "$@"
