#!/bin/bash
# raysv bench autok on a lent GPU machine (no network; see bench/README.md):
# the demo pipeline at N training speakers for each N:SEED job, one job after
# the other, each with all the cores and the GPU (Stage I and II train there:
# RAYSV_BENCH_AUTOK_GPU=1). Rerunning it resumes finished stages.
# Measured 2026-11-30 (H200 + 16 cores): six jobs in PARALLEL (each its own local
# Ray with 16 CPUs and OpenMP's default threads) never finished Stage I's first
# epoch in 6 minutes (stacks in GOMP_parallel: oversubscribed spinning threads),
# hence one at a time. Not yet run to the end on a GPU.
# Usage (repo root, the dependencies unpacked on PYTHONPATH):
#   bench/device/autok_gpu.sh LIMIT_S 100:0 100:1 40:0 ...
# Everything comes back as one file, $OUT/autok_gpu.tgz: per job its log and
# bench JSON (autok_spk<N>_gpu.json under s<N>_<SEED>/), and the runs' summaries.
set -u
LIMIT=$1; shift
OUT=${OUT:-/tmp/out}; W=/tmp/autok_gpu; mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 RAYSV_BENCH_AUTOK_GPU=1
nvidia-smi -L; nproc
python3 -c "import torch, torchaudio; print('torch', torch.__version__, torchaudio.__version__, torch.cuda.is_available())"
for job in "$@"; do
  n=${job%%:*}; s=${job##*:}
  RAYSV_BENCH_AUTOK_SPEAKERS=$n RAYSV_BENCH_AUTOK_SEEDS=$s timeout "$LIMIT" \
    python3 -m raysv.cli bench autok --out "$W/s${n}_$s" >"$W/s${n}_$s.log" 2>&1
done
for job in "$@"; do n=${job%%:*}; s=${job##*:}; echo "== $job"; tail -2 "$W/s${n}_$s.log"; done
find runs/bench_autok_gpu -name summary.json -o -name '_summary.json' -o -name '_auto_k.json' \
  | tar -czf "$OUT/autok_gpu.tgz" -T - -C / "${W#/}" 2>&1 | tail -2
ls -la "$OUT"
