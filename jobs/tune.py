"""A Ray Tune sweep of a training stage's knobs as a Ray job.

    ray job submit --working-dir . -- python jobs/tune.py --config configs/tune_rejection.yaml \\
        --data /mnt/corpus --out /mnt/runs/tune_rejection --set max_concurrent_trials=4

Each trial runs its own Ray Train workers; the best trial is picked on dev EER.
Rerunning with the same --out reuses finished trials. Arguments are those of `raysv tune`.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
