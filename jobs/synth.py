"""Generate a speaker corpus folder as a Ray job (runs on the head node's CPUs).

    ray job submit --working-dir . -- python jobs/synth.py --config configs/synth_large.yaml --out /mnt/corpus

Arguments are those of `raysv synth`.

Ray runs a job once (a job has no retries; Ray Train retries lost workers inside it,
train.max_failures). To retry a failed or stopped (`ray job stop`) job, submit the same line again: output is identical for a seed.
With `scripts/local_cluster.sh` (token auth): `eval "$(bash scripts/local_cluster.sh env)"` first.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
