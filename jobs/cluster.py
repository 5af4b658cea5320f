"""Sharded faiss k-means with purification as a Ray job.

    ray job submit --working-dir . -- python jobs/cluster.py --embeddings /mnt/emb --k 6000 \\
        --iterations 20 --seed 1 --spherical --shards 16 --drop-fraction 0.1 --min-cluster-size 5 --out /mnt/labels/r1

    # choose k first: objective over a range of k (table, plot, suggested k)
    ray job submit --working-dir . -- python jobs/cluster.py --embeddings /mnt/emb --spherical \\
        --elbow 1000,2000,4000,8000,16000 --shards 16 --out /mnt/labels/elbow

Arguments are those of `raysv cluster` (``--init kmeans++``, ``--tracking-uri``, ...).

Ray runs a job once (a job has no retries; Ray Train retries lost workers inside it,
train.max_failures). To retry a failed or stopped (`ray job stop`) job, submit the same line again: it rewrites the labels from the embeddings (k-means restarts from its first iteration).
With `scripts/local_cluster.sh` (token auth): `eval "$(bash scripts/local_cluster.sh env)"` first.
"""

import sys

from raysv.cli import main

if __name__ == "__main__":
    sys.exit(main(["cluster", *sys.argv[1:]]))
