#!/usr/bin/env bash
# The README's test command: set up, lint, then the default (non-slow) tests.
# Extra arguments go to pytest, e.g. -m slow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check raysv tests jobs scripts
.venv/bin/ruff format --check raysv tests jobs scripts
exec .venv/bin/python -m pytest "$@"
