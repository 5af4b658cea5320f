#!/usr/bin/env bash
# Creates .venv (if missing) and installs raysv with its test tools into it.
# Idempotent: reinstalls only when pyproject.toml changed. Used by demo.sh,
# test.sh and .ci/run, so that a fresh machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.raysv-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing raysv and dependencies (torch/torchaudio, Ray, faiss, MLflow; a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
