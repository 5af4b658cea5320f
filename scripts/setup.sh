#!/usr/bin/env bash
# Creates .venv (if missing) and installs raysv with its test tools into it,
# from the lock: requirements/lock-cpu.txt, or with RAYSV_LOCK=gpu
# requirements/lock-gpu.txt (faiss's CUDA build instead of faiss-cpu). Every
# package is pinned and hash-checked, so a fresh machine gets what CI tested,
# whatever was released since. Idempotent: reinstalls only when the lock or
# pyproject.toml changed. Used by demo.sh, test.sh, .ci/run and cluster.yaml,
# so that a fresh machine needs nothing else. Refresh the lock with
# `bash scripts/lock.sh`. pip's own output goes to .venv/setup.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
lock=requirements/lock-${RAYSV_LOCK:-cpu}.txt
[ -f "$lock" ] || { echo "[setup] no lock file $lock (RAYSV_LOCK is cpu or gpu)" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.raysv-installed
want=$(cat "$lock" pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  start=$SECONDS
  log=.venv/setup.log
  : > "$log"
  pip() {  # quiet: pip's lines go to the log, shown only when pip fails
    if ! .venv/bin/python -m pip --disable-pip-version-check "$@" >> "$log" 2>&1; then
      grep -v "^WARNING: Location 'file:" "$log" | tail -25 >&2
      echo "[setup] pip failed (full output: $log)" >&2
      exit 1
    fi
  }
  echo "[setup] installing the locked dependencies from $lock (torch/torchaudio, Ray, faiss, MLflow; the first time about 6 GB and 4-10 minutes)"
  # --no-deps: the lock already lists every transitive dependency, each hash-checked.
  pip install --no-deps --require-hashes -r "$lock"
  echo "[setup] installing raysv itself (editable, built with the locked setuptools)"
  pip install --no-deps --no-build-isolation -e .
  echo "[setup] checking that torch and torchaudio load together"
  .venv/bin/python -m raysv.environment
  echo "$want" > "$stamp"
  echo "[setup] done in $((SECONDS - start)) s; .venv holds $(du -sh .venv | cut -f1)"
fi
