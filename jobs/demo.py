"""Run the raysv demo pipeline as a Ray job.

    ray job submit --working-dir . -- python jobs/demo.py --out /mnt/runs/demo
    ray job submit --working-dir . -- python jobs/demo.py --data /mnt/corpus --out /mnt/runs/demo

Locally (`python jobs/demo.py`) it starts its own Ray. Arguments are those of
`raysv demo` (see `raysv demo --help`).

Ray runs a job once (a job has no retries; Ray Train retries lost workers inside it,
train.max_failures). To retry a failed or stopped (`ray job stop`) job, submit the same line again: finished stages under --out are skipped and training resumes from its last checkpoint.
With `scripts/local_cluster.sh` (token auth): `eval "$(bash scripts/local_cluster.sh env)"` first.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
