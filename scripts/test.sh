#!/usr/bin/env bash
# Installs what the tests need (mosquitto, Python packages), then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
