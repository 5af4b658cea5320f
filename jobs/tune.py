"""A Ray Tune sweep of a training stage's knobs as a Ray job.

    ray job submit --working-dir . -- python jobs/tune.py --config configs/tune_rejection.yaml \\
        --data /mnt/corpus --out /mnt/runs/tune_rejection --set max_concurrent_trials=4

Each trial runs its own Ray Train workers; the best trial is picked on dev EER.
Rerunning with the same --out reuses finished trials. Arguments are those of `raysv tune`.

Ray runs a job once (a job has no retries; Ray Train retries lost workers inside it,
train.max_failures). To retry a failed or stopped (`ray job stop`) job, submit the same line again: finished trials are reused.
With `scripts/local_cluster.sh` (token auth): `eval "$(bash scripts/local_cluster.sh env)"` first.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
