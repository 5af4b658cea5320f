"""``raysv cluster``: sharded k-means over embedding shards, purification, pseudo-label table.

The Ray actors (starting, stopping shards) live in ``ray_shards``, the k-means
and purification over any shards in ``sharded``; this module reads and writes
files and composes them."""

from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
import pyarrow as pa

from raysv.clustering import kmeans
from raysv.clustering.ray_shards import resolve_device, start_shards
from raysv.clustering.sharded import KMeansSpec, elbow_table, purify_shards, sharded_kmeans
from raysv.data import fs, outputs
from raysv.data.outputs import write_json_atomic
from raysv.errors import ConfigError, ManifestError

log = logging.getLogger("raysv")


def embedding_files(uri: str) -> list[str]:
    """Parquet files of an embeddings file or folder (a folder's: those its completion
    marker lists, see :func:`raysv.data.fs.parquet_files`)."""
    return fs.parquet_files(uri)


def choose_k_from(
    embeddings: str,
    out: str,
    seed: int = 1,
    threshold: float | None = None,
    sample: int | None = None,
    final: str | None = None,
) -> dict:
    """Choose k from the embeddings in ``embeddings`` (:mod:`raysv.clustering.auto_k`).

    ``final``: where ``out`` will be moved when its command completes (the
    evidence names its plot there, and an earlier output there is reused).

    ``threshold`` (a cosine similarity, e.g. from dev trials): the merging
    rule; ``None``: the silhouette rule. Reads a seeded sample of at most
    ``sample`` rows (default: 20000 for merging, 8000 for the silhouette) on
    the driver (each file contributes in proportion to its rows; only the
    sampled rows are kept in memory); writes the evidence ``_auto_k.json``
    (the rule's table) and ``_auto_k.png`` under ``out``. A rerun reuses the
    JSON only when it was made from the same embeddings (path and row count),
    seed and threshold.
    """
    import pyarrow.parquet as pq

    from raysv.clustering import auto_k
    from raysv.evaluation.scoring import embedding_matrix

    out = os.path.abspath(out)
    final = final or out
    final = os.path.abspath(final) if fs.is_local(final) else final
    outputs.ensure_folder(out, "raysv cluster")
    path = os.path.join(out, "_auto_k.json")
    earlier = fs.join(final, "_auto_k.json")
    files = embedding_files(embeddings)
    counts = [
        pq.ParquetFile(fs.resolve(f)[1]).metadata.num_rows
        if fs.is_local(f)
        else fs.read_table(f, ["utt_id"]).num_rows
        for f in files
    ]
    n = int(sum(counts))
    source = {
        "embeddings": os.path.abspath(embeddings) if fs.is_local(embeddings) else embeddings,
        "rows": n,
        "seed": seed,
        "threshold": threshold,
    }
    sample = sample or (20000 if threshold is not None else 8000)
    done = outputs.read_json(earlier) if outputs.complete(final) else None
    if done is not None and done.get("source") == source:
        outputs.write_json_atomic(path, done)
        if fs.exists(fs.join(final, "_auto_k.png")):
            with open(os.path.join(out, "_auto_k.png"), "wb") as f:
                f.write(fs.read_bytes(fs.join(final, "_auto_k.png")))
        return done
    if n == 0:
        raise ManifestError(f"{embeddings}: no embeddings to choose k from")
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(n, min(n, sample), replace=False))
    parts, start = [], 0
    for f, c in zip(files, counts, strict=True):
        rows = take[(take >= start) & (take < start + c)] - start
        start += c
        if rows.size:
            # embedding_matrix names the file and the first utt_id with NaN/inf or no vector
            sampled = fs.read_table(f, ["utt_id", "embedding"]).take(pa.array(rows))
            parts.append(embedding_matrix(sampled, f, ids_as_list=False)[1])
    x = np.concatenate(parts)
    res, fallback = None, None
    if threshold is not None:
        try:
            res = auto_k.choose_k_by_merging(x, threshold, seed=seed, sample=sample)
        except ConfigError as e:  # e.g. an encoder that maps every utterance alike
            if "too few to cluster" not in str(e):
                raise
            log.warning("%s; falling back to the silhouette rule", e)
            fallback = str(e)
    if fallback is not None:
        res = auto_k.choose_k(x, seed=seed, sample=min(sample, 8000))
        res["fallback_from_merging"] = fallback
    elif res is None:
        log.warning(
            "choosing k by the silhouette rule (no merge threshold from dev trials): it "
            "under-clusters weak embeddings; give k or a threshold where you can"
        )
        res = auto_k.choose_k(x, seed=seed, sample=sample)
    res["source"] = source
    auto_k.plot(res, os.path.join(out, "_auto_k.png"))
    res["plot"] = fs.join(final, "_auto_k.png")
    log.info("k chosen from the data: %d (%s)", res["k"], res["rule"])
    outputs.write_json_atomic(path, res)
    return res


def cluster(
    embeddings: str,
    out: str,
    k: int | str,
    spec: KMeansSpec | None = None,
    *,
    shards: int | None = None,
    device: str = "auto",
    drop_fraction: float | str = 0.0,
    min_cluster_size: int | str = 1,
    round_: int = 1,
    manifest: str | None = None,
    plots: bool = False,
    merge_threshold: float | None = None,
    initial: np.ndarray | None = None,
) -> dict:
    """Cluster ``embeddings`` into ``k`` groups and write the pseudo-label table under ``out``.

    ``k="auto"`` chooses k from the embeddings first (:func:`choose_k_from`,
    merging down to ``merge_threshold`` where given, else by the silhouette;
    the summary's ``auto_k`` holds the evidence). Returns a summary: objective,
    iterations, wall time, cluster-size statistics,
    kept share, and (if ``manifest`` has speakers: analysis only) NMI/ARI/reliable
    share before and after purification. ``spec``: how the iterations run
    (:class:`~raysv.clustering.sharded.KMeansSpec`; default: faiss's settings,
    at most 20 iterations, random init). ``plots``: also write ``_sizes.png``
    (cluster-size histogram) and ``_objective.png`` (objective per iteration)
    under ``out``. ``device``: where the shards search (see
    :func:`start_shards`; ``"auto"`` uses GPUs where the Ray cluster has them).
    ``initial (k, d)``: start the iterations from these centroids instead of
    ``spec.init``'s pick (faiss's ``Clustering.centroids`` given before ``train``;
    the benchmark compares both sides from the same start with it); ``spec.init``
    is then unused and the summary's ``init`` says ``given``.
    """
    check_auto_purification(drop_fraction, min_cluster_size)  # before any work
    t0 = time.monotonic()
    spec = spec or KMeansSpec()
    if k != "auto" and not isinstance(k, int):
        raise ConfigError(f"k must be a number of clusters or auto, got {k!r}")
    if initial is not None:
        initial = check_initial(initial, k)
    files = embedding_files(embeddings)  # a complete embeddings output, before any work
    with outputs.staged(out, "raysv cluster") as tmp:
        summary = _cluster_into(
            files,
            embeddings,
            tmp,
            out,
            k,
            spec,
            shards,
            device,
            drop_fraction,
            min_cluster_size,
            round_,
            plots,
            merge_threshold,
            initial,
        )
        outputs.commit(tmp, out, "raysv cluster", summary["embeddings"], {"k": summary["k"]})
    if manifest:  # analysis only: reads the committed table
        summary["analysis"] = _analysis(out, manifest)
    summary["seconds"] = round(time.monotonic() - t0, 2)
    outputs.write_json_atomic(fs.join(out, "_summary.json"), summary)
    return summary


def check_initial(initial, k) -> np.ndarray:
    """``initial`` as ``(k, d) float32`` centroids, or a ConfigError saying what is wrong
    (before any shard reads its files; d is checked against the data later)."""
    if k == "auto":
        raise ConfigError("initial centroids need a given k, not k = auto")
    cent = np.array(initial, dtype=np.float32)
    if cent.ndim != 2 or cent.shape[0] != k:
        raise ConfigError(f"initial centroids of shape {cent.shape}; need (k, d) = ({k}, d)")
    if not np.isfinite(cent).all():
        raise ConfigError("initial centroids hold NaN or infinite values")
    return cent


def check_auto_purification(drop_fraction, min_cluster_size) -> None:
    """Refuse bad purification settings before any work; ``auto`` is resolved later."""
    kmeans.check_purification(
        0.0 if drop_fraction == "auto" else drop_fraction,
        1 if min_cluster_size == "auto" else min_cluster_size,
    )


def purification_rule(rows: int, k: int, round_: int, drop_fraction, min_cluster_size) -> dict:
    """The round's p and S: as given, or where ``auto`` derived from the mean cluster
    size rows / k (:func:`raysv.clustering.auto_schedule.auto_purification`)."""
    from raysv.clustering.auto_schedule import auto_purification

    p_auto, s_auto = auto_purification(rows, k, round_)
    return {
        "p": p_auto if drop_fraction == "auto" else float(drop_fraction),
        "S": s_auto if min_cluster_size == "auto" else int(min_cluster_size),
        "auto": [n for n, v in (("p", drop_fraction), ("S", min_cluster_size)) if v == "auto"],
        "mean_cluster_size": round(rows / k, 2),
    }


def _cluster_into(files, embeddings, tmp, out, *args) -> dict:
    """:func:`cluster`'s work: the table's parts, centroids and plots into ``tmp``;
    paths in the summary name ``out``, where ``tmp`` is moved when complete.

    On an object store the shards write their parts straight into ``tmp`` (a
    writer prefix) and the driver's own files (centroids, plots, the automatic-k
    evidence) are made in a local folder and uploaded there.
    """
    if fs.is_local(tmp):
        return _cluster_work(files, embeddings, tmp, tmp, out, *args)
    with tempfile.TemporaryDirectory(prefix="raysv-cluster-") as records:
        summary = _cluster_work(files, embeddings, tmp, records, out, *args)
        fs.upload_folder(records, tmp)
    return summary


def _cluster_work(
    files,
    embeddings,
    tmp,
    records,
    out,
    k,
    spec,
    shards,
    device,
    drop_fraction,
    min_cluster_size,
    round_,
    plots,
    merge_threshold,
    initial=None,
) -> dict:
    """:func:`_cluster_into`: the parts into ``tmp``, the ``_*`` files into the local
    folder ``records``."""
    auto = None
    if k == "auto":
        auto = choose_k_from(embeddings, records, spec.seed, merge_threshold, final=out)
        k = auto["k"]
    with start_shards(files, shards, normalise=spec.spherical, device=device) as held:
        res = sharded_kmeans(held, k, spec, initial=initial)
        assigned = held.final_assign(res.centroids)
        sizes = np.sum([c for c, _ in assigned], axis=0)
        rule = purification_rule(int(sizes.sum()), k, round_, drop_fraction, min_cluster_size)
        drop_fraction, min_cluster_size = rule["p"], rule["S"]
        pur = purify_shards(held, sizes, drop_fraction, min_cluster_size, round_, tmp)
        n_shards = len(held)
    summary = {
        "out": out,
        "embeddings": pur["rows"],
        "k": k,
        "warnings": [w for w in [kmeans.check_k(k, pur["rows"])] if w],
        "init": spec.init if initial is None else "given",
        "device": resolve_device(device),
        "shards": n_shards,
        "iterations": res.iterations,
        "max_iterations": spec.iterations,
        "objective": res.objective,
        "objective_all_points": float(sum(o for _, o in assigned)),
        "kmeans_seconds": round(res.seconds, 2),
        "shard_load_seconds": round(res.load_seconds, 2),
        "cluster_sizes": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "max": int(sizes.max()),
            "empty": int((sizes == 0).sum()),
        },
        "purification": rule,
        "kept_share": pur["kept"] / pur["rows"],
        "clusters_after_purification": pur["clusters_after_purification"],
        "history": res.history,
    }
    if auto is not None:
        summary["auto_k"] = auto
    # Files starting with "_" are not parts: only the marker's list is read.
    np.save(os.path.join(records, "_centroids.npy"), res.centroids)
    if plots:
        from raysv.clustering import plots as plot

        plot.cluster_sizes(sizes, os.path.join(records, "_sizes.png"))
        plot.objective_per_iteration(res.history, os.path.join(records, "_objective.png"))
        summary["plots"] = {
            "sizes": fs.join(out, "_sizes.png"),
            "objective": fs.join(out, "_objective.png"),
        }
    return summary


def auto_k_columns(auto: dict) -> tuple[str, list[str]]:
    """The x column and y columns of an automatic-k evidence table (for MLflow histories)."""
    if auto.get("method") == "merge":
        return "index", ["threshold", "k", "groups"]  # MLflow steps are integers
    return "k", ["silhouette", "objective"]


def log_to_mlflow(
    summary: dict, tracking_uri: str, experiment: str, run_name: str, params: dict
) -> str:
    """Log a :func:`cluster` or :func:`elbow` summary to a new MLflow run; returns its id.

    ``cluster``: summary metrics (objective, iterations, seconds, cluster-size
    statistics, kept share, NMI/ARI/reliable share where analysed), the
    per-iteration objective, imbalance and re-seeded count as metrics with
    step = iteration, and the plots and ``_summary.json`` as artifacts.
    ``elbow``: the objective with step = k, the suggested k, table and plot.
    """
    from raysv.tracking import mlflow_tracking as tracking

    with tracking.run(tracking_uri, experiment, run_name, params=params) as run_id:
        if "elbow" in summary:
            tracking.log_history(summary["elbow"], "k", ["objective", "objective_per_point"])
            if summary["suggested_k"] is not None:
                tracking.log_metrics({"suggested_k": summary["suggested_k"]})
            for path in summary["files"].values():
                tracking.log_artifact(path)
            return run_id
        tracking.log_metrics(
            {
                k: summary[k]
                for k in (
                    "embeddings",
                    "objective",
                    "objective_all_points",
                    "iterations",
                    "seconds",
                    "kmeans_seconds",
                    "kept_share",
                    "clusters_after_purification",
                    "cluster_sizes",
                )
            }
        )
        tracking.log_history(
            summary["history"],
            "iteration",
            ["objective", "imbalance", "empty_reseeded"],
            prefix="iteration.",
        )
        for part, r in summary.get("analysis", {}).items():
            if isinstance(r, dict):
                tracking.log_metrics(
                    {k: r[k] for k in ("nmi", "ari", "reliable_share") if k in r},
                    prefix=f"analysis.{part}.",
                )
        for path in summary.get("plots", {}).values():
            tracking.log_artifact(path)
        tracking.log_artifact(os.path.join(summary["out"], "_summary.json"))
        if summary.get("auto_k"):  # the evidence for a k chosen from the data
            tracking.log_metrics({"auto_k": summary["k"]})
            auto = summary["auto_k"]
            x, ys = auto_k_columns(auto)
            tracking.log_history(auto["table"], x, ys, "auto_k.")
            tracking.log_artifact(os.path.join(summary["out"], "_auto_k.json"))
            tracking.log_artifact(summary["auto_k"]["plot"])
    return run_id


ELBOW_RULE = (
    "k farthest below the chord joining the first and last points, "
    "with log(k) and the objective each scaled to [0, 1]"
)


def elbow(
    embeddings: str,
    out: str,
    ks: list[int],
    spec: KMeansSpec | None = None,
    *,
    shards: int | None = None,
    device: str = "auto",
) -> dict:
    """The objective over a range of k, to choose k by the elbow (the LGL paper's rule).

    The shards are read once and reused for every k. Writes ``_elbow.csv``,
    ``_elbow.json`` and ``_elbow.png`` under ``out``. Returns ``{"elbow": rows,
    "suggested_k": k or None, "rule": ..., "files": {...}}``; rows as in
    :func:`raysv.clustering.sharded.elbow_table`. ``spec`` defaults to
    k-means++ init, so that one unlucky random init does not put a kink in the
    curve.
    """
    from raysv.clustering import plots

    t0 = time.monotonic()
    outputs.ensure_folder(out, "raysv cluster")
    spec = spec or KMeansSpec(init="kmeans++")
    with start_shards(
        embedding_files(embeddings), shards, normalise=spec.spherical, device=device
    ) as held:
        rows = elbow_table(held, ks, spec)
    suggested = kmeans.suggest_k([r["k"] for r in rows], [r["objective"] for r in rows])
    files = {
        "csv": os.path.join(out, "_elbow.csv"),
        "json": os.path.join(out, "_elbow.json"),
        "png": os.path.join(out, "_elbow.png"),
    }
    with open(files["csv"], "w") as f:
        cols = list(rows[0])
        f.write(",".join(cols) + "\n")
        f.writelines(",".join(str(r[c]) for c in cols) + "\n" for r in rows)
    summary = {
        "out": out,
        "embeddings": embeddings,
        "init": spec.init,
        "iterations": spec.iterations,
        "elbow": rows,
        "suggested_k": suggested,
        "rule": ELBOW_RULE,
        "seconds": round(time.monotonic() - t0, 2),
        "files": files,
    }
    write_json_atomic(files["json"], summary)
    plots.elbow(rows, suggested, files["png"])
    return summary


def _analysis(out: str, manifest: str) -> dict:
    from raysv.evaluation.evaluate import evaluate_clusters

    try:
        return evaluate_clusters(out, manifest)
    except ManifestError as exc:
        log.warning("no clustering analysis: %s", exc)
        return {}
