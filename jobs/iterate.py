"""Stage II in rounds (embed -> k-means -> purify -> train -> evaluate) as a Ray job.

    ray job submit --working-dir . -- python jobs/iterate.py --config configs/iterate_lgl.yaml \\
        --data /mnt/corpus --init /mnt/runs/stage1/best_model.pt --out /mnt/runs/stage2

Rerunning with the same --out skips finished stages and resumes training
from its last checkpoint. Arguments are those of `raysv iterate`.

Ray runs a job once (a job has no retries; Ray Train retries lost workers inside it,
train.max_failures). To retry a failed or stopped (`ray job stop`) job, submit the same line again: finished stages are skipped and training resumes from its last checkpoint.
With `scripts/local_cluster.sh` (token auth): `eval "$(bash scripts/local_cluster.sh env)"` first.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["iterate", *sys.argv[1:]]))
