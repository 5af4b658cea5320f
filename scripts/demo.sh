#!/usr/bin/env bash
# The README's main command: set up, then run the demo on an embedded default
# (local Ray, local MLflow store under runs/demo, a generated corpus).
# Extra arguments go to `raysv demo`, e.g. --data DIR or --set synth.train_speakers=80.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/raysv demo "$@"
