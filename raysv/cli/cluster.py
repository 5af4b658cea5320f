"""Options of ``raysv cluster`` and the argparse types they parse with."""

from __future__ import annotations

import argparse

from raysv.cli.common import options
from raysv.clustering.command import run_cluster


def cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embeddings", required=True, help="embeddings Parquet file or folder of shards"
    )
    p.add_argument(
        "--out",
        required=True,
        help="folder for the pseudo-label table (Parquet parts), or for the elbow table and plot",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--k",
        type=_auto_or(int, "a number of clusters"),
        help="number of clusters, or auto: chosen from the embeddings (merging down to "
        "--merge-threshold, else by the silhouette; evidence in OUT/_auto_k.json and .png)",
    )
    which.add_argument(
        "--elbow",
        type=_int_list,
        metavar="K1,K2,...",
        help="instead of clustering: the objective for each k (table, plot, suggested k)",
    )
    p.add_argument(
        "--merge-threshold",
        type=float,
        metavar="COSINE",
        help="with --k auto: merge groups while their mean cosine similarity is at least this "
        "(raysv evaluate on the dev trials, plain cosine, prints it); without it, k is the "
        "silhouette rule's, which under-clusters weak embeddings",
    )
    p.add_argument("--iterations", type=int, default=20, help="at most this many (default 20)")
    p.add_argument(
        "--early-stop",
        type=_early_stop,
        default=0.0,
        metavar="FRACTION",
        help="stop once the objective falls by at most this fraction of its last value "
        "(faiss's early_stop_threshold and default, 0: once it stops falling; -1: never)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--spherical",
        action="store_true",
        help="cosine k-means: unit-length embeddings and centroids",
    )
    p.add_argument(
        "--shards",
        type=int,
        help="Ray actors holding the embeddings (default: two per node, one per GPU on GPUs; "
        "each searches with its share of the cores)",
    )
    p.add_argument(
        "--drop-fraction",
        type=_auto_or(float),
        default=0.0,
        help="purification p: share farthest from centroids dropped; auto: from the mean "
        "cluster size (raysv.clustering.auto_schedule)",
    )
    p.add_argument(
        "--min-cluster-size",
        type=_auto_or(int),
        default=1,
        help="purification S: smaller clusters dropped; auto: from the mean cluster size",
    )
    p.add_argument("--round", type=int, default=1, help="round number written into the table")
    p.add_argument(
        "--max-points-per-centroid",
        type=int,
        default=256,
        help="iterate on a sample of this many points per centroid (faiss's default); all points get a final assignment",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="where the shards search: GPU where the Ray cluster has one (auto), or force cpu/gpu",
    )
    p.add_argument(
        "--init",
        choices=["random", "kmeans++"],
        help="initial centroids: random sample (faiss's) or k-means++ on a sample "
        "(default: random; kmeans++ with --elbow)",
    )
    p.add_argument(
        "--manifest",
        help="utterances manifest with speakers: NMI/ARI before/after purification (analysis only)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in the parent of --out)",
    )
    p.add_argument("--experiment", default="raysv-cluster", help="MLflow experiment name")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def _int_list(text: str) -> list[int]:
    try:
        ks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 20,40,80; got {text!r}"
        ) from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return ks


def _early_stop(text: str) -> float:
    """``--early-stop``: a fraction in [0, 1), or -1 (never stop early)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction such as 0.001, got {text!r}"
        ) from None
    if v != -1 and not 0 <= v < 1:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"expected a fraction in [0, 1), or -1 (never), got {text!r}"
        )
    return v


def _auto_or(kind, what: str | None = None):
    """An argparse type: ``auto`` or a value of ``kind`` (``what``, in its message)."""

    def parse(text: str):
        if text == "auto":
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what or 'a ' + kind.__name__} or auto, got {text!r}"
            ) from None

    return parse


def cluster(a: argparse.Namespace) -> dict:
    opts = options(a, "round", "no_tracking")
    return run_cluster(**opts, round_=a.round, tracking=not a.no_tracking)
