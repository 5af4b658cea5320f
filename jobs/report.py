"""HTML report of an iterate or demo run as a Ray job (it only reads the run folder).

    ray job submit --working-dir . -- python jobs/report.py /mnt/runs/stage2

Ray runs a job once (a job has no retries; Ray Train retries lost workers inside it,
train.max_failures). To retry a failed or stopped (`ray job stop`) job, submit the same line again: it only reads the run folder.
With `scripts/local_cluster.sh` (token auth): `eval "$(bash scripts/local_cluster.sh env)"` first.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
