"""``raysv cluster``: sharded k-means over embedding shards, purification, pseudo-label table."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from raysv.clustering import kmeans
from raysv.clustering.sharded import EmbeddingShard, sharded_kmeans, split_files
from raysv.data import fs
from raysv.errors import ManifestError

log = logging.getLogger("raysv")


def embedding_files(uri: str) -> list[str]:
    """Parquet files of an embeddings file or folder (sorted)."""
    if fs.is_dir(uri):
        files = sorted(fs.walk_files(uri, (".parquet",)))
        if not files:
            raise ManifestError(f"{uri}: no .parquet files in this folder")
        return files
    if not fs.exists(uri):
        raise ManifestError(f"{uri}: no such file or folder")
    return [uri]


def start_shards(files: list[str], shards: int, normalise: bool, cpus: float = 0.5) -> list:
    import ray

    from raysv.runtime import ensure_ray

    ensure_ray()
    actor_cls = ray.remote(num_cpus=cpus)(EmbeddingShard)
    groups = split_files(files, shards)
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // len(groups))
    return [actor_cls.remote(group, normalise, threads) for group in groups]


def cluster(
    embeddings: str,
    out: str,
    k: int,
    iterations: int = 20,
    seed: int = 1,
    spherical: bool = False,
    shards: int = 2,
    drop_fraction: float = 0.0,
    min_cluster_size: int = 1,
    round_: int = 1,
    manifest: str | None = None,
    max_points_per_centroid: int = 256,
) -> dict:
    """Cluster ``embeddings`` into ``k`` groups and write the pseudo-label table under ``out``.

    Returns a summary: objective, iterations, wall time, cluster-size statistics,
    kept share, and (if ``manifest`` has speakers: analysis only) NMI/ARI/reliable
    share before and after purification.
    """
    import ray

    t0 = time.monotonic()
    os.makedirs(out, exist_ok=True)
    actors = start_shards(embedding_files(embeddings), shards, normalise=spherical)
    res = sharded_kmeans(actors, k, iterations, seed, spherical, max_points_per_centroid)
    cref = ray.put(res.centroids)
    dists = ray.get([a.final_assign.remote(cref) for a in actors])
    labels = ray.get([a.raw_labels.remote() for a in actors])
    all_lab, all_dist = np.concatenate(labels), np.concatenate(dists)
    kept, ids = kmeans.purify(all_lab, all_dist, drop_fraction, min_cluster_size)
    offsets = np.cumsum([0] + [len(d) for d in dists])
    written = ray.get(
        [
            a.labels_table.remote(
                kept[offsets[i] : offsets[i + 1]],
                ids[offsets[i] : offsets[i + 1]],
                round_,
                os.path.join(out, f"part-{i:05d}.parquet"),
            )
            for i, a in enumerate(actors)
        ]
    )
    for a in actors:
        ray.kill(a)
    sizes = np.bincount(all_lab, minlength=k)
    summary = {
        "out": out,
        "embeddings": int(sum(written)),
        "k": k,
        "iterations": res.iterations,
        "objective": res.objective,
        "objective_all_points": float(all_dist.astype(np.float64).sum()),
        "seconds": round(time.monotonic() - t0, 2),
        "kmeans_seconds": round(res.seconds, 2),
        "cluster_sizes": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "max": int(sizes.max()),
            "empty": int((sizes == 0).sum()),
        },
        "kept_share": float(kept.mean()),
        "clusters_after_purification": int(ids[kept].max() + 1) if kept.any() else 0,
        "history": res.history,
    }
    if manifest:
        summary["analysis"] = _analysis(out, manifest)
    # Files starting with "_" are skipped when the folder is read as a Parquet dataset.
    np.save(os.path.join(out, "_centroids.npy"), res.centroids)
    with open(os.path.join(out, "_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _analysis(out: str, manifest: str) -> dict:
    from raysv.evaluation.evaluate import evaluate_clusters

    try:
        return evaluate_clusters(out, manifest)
    except ManifestError as exc:
        log.warning("no clustering analysis: %s", exc)
        return {}
