"""Embed every utterance of a manifest with Ray Data actors, as a Ray job.

    ray job submit --working-dir . -- python jobs/embed.py --manifest s3://bucket/utts.parquet --out /mnt/emb

Arguments are those of `raysv embed`.

Ray runs a job once (a job has no retries; Ray Train retries lost workers inside it,
train.max_failures). To retry a failed or stopped (`ray job stop`) job, submit the same line again: embeddings already complete under --out are not redone.
With `scripts/local_cluster.sh` (token auth): `eval "$(bash scripts/local_cluster.sh env)"` first.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
