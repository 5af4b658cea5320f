"""``raysv evaluate``: score a trial list from an embeddings table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raysv.data import fs
from raysv.data.problems import Problems
from raysv.data.trials import PathMatcher, parse_trials, resolve_trials
from raysv.errors import RaysvError
from raysv.evaluation.metrics import check_trial_labels, verification_report
from raysv.evaluation.scoring import as_norm, cosine_scores, embedding_matrix, l2_normalise


def score_trials(
    trials: pa.Table,
    ids: list[str],
    emb: np.ndarray,
    center: bool = False,
    cohort: np.ndarray | None = None,
    top_k: int = 300,
    centre: np.ndarray | None = None,
) -> np.ndarray:
    """Scores ``(n_trials,)`` for resolved trials (entries are utt_ids).

    ``center`` subtracts the mean embedding of the scored utterances (an
    unsupervised mean, no labels). ``centre`` ``(d,)`` subtracts a fixed vector
    instead (an exported model's: the mean training embedding, so a threshold
    holds for any trial set). ``cohort`` ``(c, d)`` turns on AS-norm.
    """
    if center and centre is not None:
        raise RaysvError(
            "centre on the scored trials (--center) or on the model's (--model), not both"
        )
    enroll = trials.column("enroll").to_pylist()
    test = trials.column("test").to_pylist()
    mean = None
    if centre is not None:
        if centre.shape != (emb.shape[1],):
            raise RaysvError(
                f"the model's centre has {centre.shape[0]} dimensions, the embeddings "
                f"{emb.shape[1]}: score embeddings of the same model"
            )
        mean = centre.astype(np.float32)
    elif center:
        index = {u: i for i, u in enumerate(ids)}
        used = sorted({index[u] for u in (*enroll, *test) if u in index})
        mean = emb[used].mean(axis=0)
    scores = cosine_scores(ids, emb, enroll, test, center=mean)
    if cohort is not None:
        index = {u: i for i, u in enumerate(ids)}
        x = emb - mean if mean is not None else emb
        c = cohort - mean if mean is not None else cohort
        scores = as_norm(
            scores,
            l2_normalise(x[[index[u] for u in enroll]]),
            l2_normalise(x[[index[u] for u in test]]),
            c,
            top_k,
        )
    return scores


def evaluate(
    trials_uri: str,
    embeddings_uri: str,
    manifest_uri: str | None = None,
    strict: bool = False,
    center: bool = False,
    cohort_uri: str | None = None,
    top_k: int = 300,
    keep_scores: bool = False,
    model: str | None = None,
    centre: np.ndarray | None = None,
) -> dict:
    """Score ``trials_uri`` with embeddings; returns EER/minDCF and skipped counts.

    ``keep_scores`` adds ``scores`` and ``labels`` arrays ``(n_trials,)`` (for plots).

    Trial entries are matched to the manifest's paths (or to utt_ids when no
    manifest is given). The AS-norm cohort is another embeddings table.
    ``model``: an exported model folder whose card's centre is subtracted (embeddings
    of that model: ``raysv embed --model``), the rule of ``raysv verify``. ``centre``
    ``(d,)``: a centre given directly (the pipeline's: the mean embedding of the
    training utterances, :func:`centre_of`), the same rule.
    """
    if model is not None:
        if centre is not None:
            raise RaysvError("a model's centre or a given one, not both")
        from raysv.export.card import read_card

        centre = np.asarray(read_card(model)["scoring"]["centre"], dtype=np.float32)
    problems = Problems(strict=strict)
    trials = parse_trials(trials_uri, problems)
    ids, emb = embedding_matrix(fs.read_table(embeddings_uri), embeddings_uri)
    if manifest_uri is not None:
        trials = resolve_trials(
            trials, fs.read_table(manifest_uri, ["utt_id", "path"]), trials_uri, problems
        )
    else:
        emb_table = pa.table({"utt_id": ids, "path": ids})
        trials = resolve_trials(trials, emb_table, trials_uri, problems)
    matcher_ok = set(ids)
    keep = [
        i
        for i, (a, b) in enumerate(
            zip(trials.column("enroll").to_pylist(), trials.column("test").to_pylist(), strict=True)
        )
        if a in matcher_ok and b in matcher_ok
    ]
    if len(keep) < trials.num_rows:
        for i in sorted(set(range(trials.num_rows)) - set(keep))[:1000]:
            problems.add(
                "unknown_trial_file",
                f"{trials_uri} trial {i + 1}",
                "an utterance of this trial has no embedding",
            )
        trials = trials.take(keep)
    check_trial_labels(trials.column("label").to_numpy(), trials_uri)
    cohort = None
    if cohort_uri:
        _, cohort = embedding_matrix(fs.read_table(cohort_uri), cohort_uri)
    scores = score_trials(
        trials, ids, emb, center=center, cohort=cohort, top_k=top_k, centre=centre
    )
    report = verification_report(scores, trials.column("label").to_numpy())
    if (
        not center and centre is None and cohort is None
    ):  # plain cosine, as the clustering compares embeddings
        from raysv.clustering.auto_k import FALSE_ACCEPTS, merge_threshold

        # for `raysv cluster --k auto --merge-threshold` (from dev trials)
        report["merge_threshold"] = merge_threshold(scores, trials.column("label").to_numpy())
        report["merge_false_accepts"] = FALSE_ACCEPTS
    if keep_scores:
        report["scores"], report["labels"] = scores, trials.column("label").to_numpy()
    report["skipped"] = problems.counts()
    report["skipped_examples"] = problems.summary_lines()
    return report


__all__ = ["evaluate", "score_trials", "PathMatcher"]


def evaluate_clusters(labels_uri: str, manifest_uri: str) -> dict:
    """NMI, ARI and reliable-label share of a pseudo-label table against the manifest's
    speakers (analysis only), for all utterances and for the ``kept`` ones."""
    from raysv.data.schema import conform
    from raysv.errors import ManifestError
    from raysv.evaluation.metrics import clustering_report

    labels = conform(fs.read_table(labels_uri), "pseudo_labels", labels_uri)
    man = fs.read_table(manifest_uri, ["utt_id", "speaker"])
    speaker = dict(
        zip(man.column("utt_id").to_pylist(), man.column("speaker").to_pylist(), strict=True)
    )
    ids = labels.column("utt_id").to_pylist()
    known = [i for i, u in enumerate(ids) if speaker.get(u) is not None]
    if not known:
        raise ManifestError(f"{manifest_uri}: no speaker labels for the utterances of {labels_uri}")
    clusters = np.asarray(labels.column("cluster").to_pylist())[known]
    spk = np.asarray([speaker[ids[i]] for i in known])
    kept = np.asarray(labels.column("kept").to_pylist())[known]
    out = {"all": clustering_report(clusters, spk), "without_speaker_label": len(ids) - len(known)}
    if kept.any() and not kept.all():
        out["kept"] = clustering_report(clusters[kept], spk[kept])
    return out


def centre_of(embeddings_uri: str, only: set[str] | None = None, count: bool = False):
    """``(d,) float32``: the mean embedding of a table or folder of parts (its rows
    whose utt_id is in ``only``, where given): the scoring centre of the pipeline,
    taken over training utterances, so that a threshold learnt on dev holds for any
    pair (issue #24). Streamed a batch at a time: memory O(d), not O(rows).
    ``count``: return ``(centre, rows averaged)``."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    keep = pa.array(sorted(only), pa.string()) if only is not None else None
    total, n = None, 0
    files = fs.parquet_files(embeddings_uri)
    for f in files:
        store, path = fs.resolve(f)
        try:
            batches = pq.ParquetFile(store.open_input_file(path)).iter_batches(
                columns=["utt_id", "embedding"], batch_size=65536
            )
            for b in batches:
                if keep is not None:
                    b = b.filter(pc.is_in(b.column("utt_id"), keep))
                if b.num_rows == 0:
                    continue
                _, x = embedding_matrix(pa.Table.from_batches([b]), f)
                part = x.astype(np.float64).sum(axis=0)
                total = part if total is None else total + part
                n += x.shape[0]
        except (pa.ArrowInvalid, OSError) as exc:
            raise RaysvError(f"{f}: cannot read as Parquet embeddings: {exc}") from exc
    if n == 0:
        raise RaysvError(f"{embeddings_uri}: no embeddings to take a scoring centre from")
    centre = (total / n).astype(np.float32)
    return (centre, n) if count else centre
