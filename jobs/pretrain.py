"""Stage I contrastive pretraining as a Ray job.

    ray job submit --working-dir . -- python jobs/pretrain.py --config configs/pretrain_ava_rejection.yaml \\
        --data /mnt/corpus --out /mnt/runs/stage1 --set train.num_workers=8 --set train.use_gpu=true

Rerunning with the same --out and --run-name resumes from the last checkpoint.
Arguments are those of `raysv pretrain`.

Ray runs a job once (a job has no retries; Ray Train retries lost workers inside it,
train.max_failures). To retry a failed or stopped (`ray job stop`) job, submit the same line again: it resumes from the last checkpoint.
With `scripts/local_cluster.sh` (token auth): `eval "$(bash scripts/local_cluster.sh env)"` first.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
