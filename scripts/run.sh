#!/usr/bin/env bash
# Sets up, then runs the main job on the embedded default (broker + Fashion-MNIST).
# Extra arguments go to ddp_kbit.main, e.g. scripts/run.sh --epochs 1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m ddp_kbit.main "$@"
