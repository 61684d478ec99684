#!/usr/bin/env bash
# The main job, locally: a private mosquitto, the controller and an agent on the sample video.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/edge-agent demo "$@"
