"""Embed every utterance of a manifest with Ray Data actors, as a Ray job.

    ray job submit --working-dir . -- python jobs/embed.py --manifest s3://bucket/utts.parquet --out /mnt/emb

Arguments are those of `raysv embed`.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
