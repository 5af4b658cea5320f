"""``raysv cluster`` as a library call: the k-means spec from the options, clustering
(or the elbow table) with :mod:`raysv.clustering.driver`, and the MLflow run.

The heavy imports are inside the function, so that importing this module stays cheap.
"""

from __future__ import annotations

import os

from raysv.errors import ConfigError, RaysvError


def run_cluster(
    embeddings: str,
    out: str,
    k: int | str | None = None,
    *,
    elbow: list[int] | None = None,
    merge_threshold: float | None = None,
    iterations: int = 20,
    early_stop: float = 0.0,
    seed: int = 1,
    spherical: bool = False,
    shards: int | None = None,
    drop_fraction: float | str = 0.0,
    min_cluster_size: int | str = 1,
    round_: int = 1,
    max_points_per_centroid: int = 256,
    device: str = "auto",
    init: str | None = None,
    manifest: str | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "raysv-cluster",
) -> dict:
    """Cluster ``embeddings`` into ``k`` groups (a number or ``"auto"``) and write the
    pseudo-label table under ``out``; or, given ``elbow`` (a list of k) instead of
    ``k``, the objective for each k. ``init`` defaults to random, k-means++ for the
    elbow. With ``tracking``, the options, metrics and plots go to a new MLflow run
    (``tracking_uri``, default: MLFLOW_TRACKING_URI, else SQLite in the parent of
    ``out``); its URI and id are the summary's ``mlflow``.
    """
    from raysv.clustering import driver
    from raysv.clustering.sharded import KMeansSpec

    if (k is None) == (not elbow):
        raise RaysvError("give k (a number of clusters or auto) or elbow (a list of k), not both")
    check_out_uri(
        out, bool(elbow), tracking and not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    )
    params = {
        "embeddings": embeddings,
        "out": out,
        "k": k,
        "elbow": elbow,
        "merge_threshold": merge_threshold,
        "iterations": iterations,
        "early_stop": early_stop,
        "seed": seed,
        "spherical": spherical,
        "shards": shards,
        "drop_fraction": drop_fraction,
        "min_cluster_size": min_cluster_size,
        "round": round_,
        "max_points_per_centroid": max_points_per_centroid,
        "device": device,
        "init": init,
        "manifest": manifest,
    }
    spec = KMeansSpec(
        iterations=iterations,
        seed=seed,
        spherical=spherical,
        early_stop=early_stop,
        max_points_per_centroid=max_points_per_centroid,
        init=init or ("kmeans++" if elbow else "random"),
    )
    if elbow:
        summary = driver.elbow(embeddings, out, elbow, spec, shards=shards, device=device)
    else:
        summary = driver.cluster(
            embeddings,
            out,
            k,
            spec,
            shards=shards,
            device=device,
            drop_fraction=drop_fraction,
            min_cluster_size=min_cluster_size,
            round_=round_,
            manifest=manifest,
            plots=True,
            merge_threshold=merge_threshold,
        )
    if tracking:
        from raysv.tracking.mlflow_tracking import default_tracking_uri

        uri = tracking_uri or default_tracking_uri(os.path.dirname(os.path.abspath(out)))
        params = {key: v for key, v in params.items() if v is not None}
        name = "elbow" if elbow else f"cluster-k{k}"
        summary["mlflow"] = {
            "tracking_uri": uri,
            "run_id": driver.log_to_mlflow(summary, uri, experiment, name, params),
        }
    return summary


def check_out_uri(out: str, elbow: bool, local_tracking: bool) -> None:
    """Refuse, before any work, what an object-store ``out`` can't hold: the elbow's
    table and plot (written on a local or shared file system) and a local MLflow
    store (kept beside ``out``)."""
    from raysv.data import fs

    if fs.is_local(out):
        return
    if elbow:
        raise ConfigError(f"{out}: --elbow writes its table and plot to a local folder; give one")
    if local_tracking:
        raise ConfigError(
            f"{out}: an object-store --out has no folder beside it for a local MLflow store; "
            "give --tracking-uri (an MLflow server) or --no-tracking"
        )
