"""Stage II training on a pseudo-label table as a Ray job.

    ray job submit --working-dir . -- python jobs/train.py --config configs/train_lgl.yaml \\
        --labels /mnt/labels/r1 --manifest /mnt/runs/stage1/manifests/utterances.parquet \\
        --init /mnt/runs/stage1/best_model.pt --dev-trials /mnt/runs/stage1/manifests/trials_dev.parquet \\
        --out /mnt/runs/train_r1

Rerunning with the same --out resumes from the last checkpoint.
Arguments are those of `raysv train`.

Ray runs a job once (a job has no retries; Ray Train retries lost workers inside it,
train.max_failures). To retry a failed or stopped (`ray job stop`) job, submit the same line again: it resumes from the last checkpoint.
With `scripts/local_cluster.sh` (token auth): `eval "$(bash scripts/local_cluster.sh env)"` first.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
