"""PNG plots of clustering statistics (matplotlib, Agg backend: no display needed).

Plots are written next to the pseudo-label table with names starting with
``_`` so that readers of the folder as a Parquet dataset skip them.
"""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cluster_sizes(sizes: np.ndarray, path: str, title: str = "") -> str:
    """Histogram of cluster sizes ``sizes (k,) int`` (members per cluster) to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(sizes, bins=min(50, max(5, int(np.sqrt(sizes.shape[0])))), color="tab:blue")
    ax.set_xlabel("cluster size (embeddings)")
    ax.set_ylabel("clusters")
    ax.set_title(title or f"{sizes.shape[0]} clusters, median size {np.median(sizes):g}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def objective_per_iteration(history: list[dict], path: str) -> str:
    """The k-means objective per iteration (``history``: dicts with ``objective``) to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["iteration"] + 1 for h in history], [h["objective"] for h in history], "o-")
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective (sum of squared distances)")
    ax.set_title("k-means objective per iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def elbow(rows: list[dict], suggested: int | None, path: str) -> str:
    """Objective over k (``rows``: dicts with ``k`` and ``objective``), log-scaled k axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [r["k"] for r in rows]
    ax.plot(ks, [r["objective"] for r in rows], "o-")
    if suggested is not None:
        ax.axvline(suggested, color="tab:red", linestyle="--", label=f"suggested k = {suggested}")
        ax.legend()
    ax.set_xscale("log")
    ax.minorticks_off()  # log-axis minor labels would overlap the tried k values
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (clusters)")
    ax.set_ylabel("objective over all embeddings")
    ax.set_title("elbow: k-means objective vs k")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
