#!/usr/bin/env bash
# Style and types: ruff, and mypy (strict on schemas/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy schemas edge_agent cloud_controller model_registry mqtt_bus
