#!/usr/bin/env bash
# Refreshes the locks of the whole environment from pyproject.toml:
#   requirements/lock-cpu.txt   raysv[test] with faiss-cpu (laptops, CI, CPU nodes)
#   requirements/lock-gpu.txt   raysv[test,gpu] with faiss-gpu-cu12 instead of faiss-cpu (GPU nodes)
# Exact versions and sha256 hashes of every direct and transitive dependency,
# one universal resolution with per-Python markers (Python 3.10-3.12; Linux
# x86_64 is what raysv supports). Each lock starts with the sha256 of the
# dependency specification it was made from; tests/test_lock.py fails when
# pyproject.toml no longer matches it. Needs the package registry.
#   bash scripts/lock.sh            refresh both locks
#   bash scripts/lock.sh --upgrade  also move every pin to the newest allowed release
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
uv=.venv/bin/uv
if ! [ -x "$uv" ] || [ "$("$uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  tools=${TMPDIR:-/tmp}/raysv-lock-tools
  if ! [ -x "$tools/bin/uv" ] || [ "$("$tools/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    echo "[lock] installing uv $UV_VERSION into $tools"
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install -q "uv==$UV_VERSION"
  fi
  uv=$tools/bin/uv
fi
spec=$(python3 scripts/lock_spec.py)
upgrade=()
[ "${1:-}" = "--upgrade" ] && upgrade=(--upgrade)
compile() {  # compile OUT EXTRA-ARGS...
  local out=$1; shift
  echo "[lock] resolving $out"
  # uv keeps the pins of an existing output file where they still fit.
  if [ -f "$out" ]; then cp "$out" "$out.new"; fi
  "$uv" pip compile pyproject.toml --universal --python-version 3.10 --generate-hashes \
    --quiet --no-header "${upgrade[@]}" "$@" -o "$out.new"
  {
    echo "# raysv lock: made by 'bash scripts/lock.sh' (uv $UV_VERSION) from pyproject.toml; do not edit."
    echo "# spec-sha256: $spec"
    cat "$out.new"
  } > "$out.tmp"
  rm -f "$out.new"
  mv "$out.tmp" "$out"
}
compile requirements/lock-cpu.txt --extra test
compile requirements/lock-gpu.txt --extra test --extra gpu --no-emit-package faiss-cpu
echo "[lock] done: requirements/lock-cpu.txt, requirements/lock-gpu.txt (spec $spec)"
