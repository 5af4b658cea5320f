"""Verification and clustering metrics.

Verification: scores ``(n,)`` float, labels ``(n,)`` in {0, 1} (1 = target).
EER and minDCF are computed from the DET curve over distinct score
thresholds, so tied scores are handled as one threshold.
Clustering (analysis only, needs true speakers): NMI, ARI, and the share of
reliable pseudo labels after a one-to-one Hungarian mapping of clusters to
speakers.
"""

from __future__ import annotations

import numpy as np

from raysv.errors import ManifestError, RaysvError


def check_trial_labels(labels, source: str) -> None:
    """Raise ManifestError naming ``source`` (the trial list) unless ``labels`` hold both
    target (1) and non-target (0) trials: EER and minDCF need both."""
    labels = np.asarray(labels).ravel()
    n_tar = int((labels == 1).sum())
    if n_tar == 0 or n_tar == labels.shape[0]:
        raise ManifestError(
            f"{source}: {n_tar} target and {labels.shape[0] - n_tar} non-target trials "
            "(of those scored); EER/minDCF need both"
        )


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise RaysvError(
            f"scores ({scores.shape[0]}) and labels ({labels.shape[0]}) differ in length"
        )
    if not np.isin(labels, (0, 1)).all():
        raise RaysvError("labels must be 0 (non-target) or 1 (target)")
    n_tar = int(labels.sum())
    if n_tar == 0 or n_tar == labels.shape[0]:
        raise RaysvError(
            f"need both target and non-target trials to compute EER/minDCF, got {n_tar} target and "
            f"{labels.shape[0] - n_tar} non-target"
        )
    if not np.isfinite(scores).all():
        raise RaysvError(f"{int((~np.isfinite(scores)).sum())} trial scores are NaN/inf")
    return scores, labels.astype(np.int64)


def det_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates when accepting scores >= each threshold.

    Returns ``(p_miss, p_fa, thresholds)``, each ``(m + 1,)`` for m distinct
    scores; the first point (threshold +inf) accepts nothing.
    """
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], labels[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(lab)[last_of_tie]
    fp = np.cumsum(1 - lab)[last_of_tie]
    n_tar, n_non = lab.sum(), lab.shape[0] - lab.sum()
    p_miss = np.r_[1.0, 1.0 - tp / n_tar]
    p_fa = np.r_[0.0, fp / n_non]
    return p_miss, p_fa, np.r_[np.inf, s[last_of_tie]]


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate in [0, 1]: where the miss and false-alarm rates cross.

    Linear interpolation between the two DET points that bracket the crossing.
    """
    p_miss, p_fa, _ = det_curve(scores, labels)
    diff = p_miss - p_fa  # starts at 1, ends at -1, non-increasing
    i = int(np.argmax(diff <= 0))
    if diff[i] == 0:
        return float(p_fa[i])
    a, b = diff[i - 1], diff[i]
    t = a / (a - b)
    return float(p_fa[i - 1] + t * (p_fa[i] - p_fa[i - 1]))


def min_dcf(
    scores: np.ndarray,
    labels: np.ndarray,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> float:
    """Normalised minimum detection cost (NIST SRE definition)."""
    if not 0.0 < p_target < 1.0:
        raise RaysvError(f"p_target must be in (0, 1), got {p_target}")
    p_miss, p_fa, _ = det_curve(scores, labels)
    dcf = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return float(dcf.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def verification_report(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """EER (in %) and minDCF at P_target 0.01 and 0.05, plus trial counts."""
    labels = np.asarray(labels)
    return {
        "eer": 100.0 * eer(scores, labels),
        "min_dcf_0.01": min_dcf(scores, labels, 0.01),
        "min_dcf_0.05": min_dcf(scores, labels, 0.05),
        "n_target": int(labels.sum()),
        "n_nontarget": int((labels == 0).sum()),
    }


def cluster_speaker_mapping(clusters: np.ndarray, speakers: np.ndarray) -> dict:
    """The one-to-one cluster -> speaker mapping that maximises matched samples.

    Builds the clusters x speakers contingency table and solves the assignment
    (Hungarian). Shapes: ``(n,)`` each. Returns ``{cluster: speaker}``; clusters
    left without a speaker (more clusters than speakers) are absent.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix

    clusters = np.asarray(clusters)
    speakers = np.asarray(speakers)
    if clusters.shape[0] == 0:
        raise RaysvError("no samples to score")
    cu, ci = np.unique(clusters, return_inverse=True)
    su, si = np.unique(speakers, return_inverse=True)
    table = coo_matrix((np.ones_like(ci), (ci, si)), shape=(cu.shape[0], su.shape[0])).toarray()
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {cu[r].item(): su[c].item() for r, c in zip(rows, cols, strict=True)}


def reliable_share(clusters: np.ndarray, speakers: np.ndarray) -> float:
    """Share of samples whose cluster maps to their speaker under the best 1:1 mapping
    (:func:`cluster_speaker_mapping`). Shapes: ``(n,)`` each."""
    mapping = cluster_speaker_mapping(clusters, speakers)
    clusters = np.asarray(clusters)
    speakers = np.asarray(speakers)
    mapped = np.array([mapping.get(c.item(), None) for c in clusters], dtype=object)
    return float(np.mean(mapped == speakers.astype(object)))


def clustering_report(clusters: np.ndarray, speakers: np.ndarray) -> dict[str, float]:
    """NMI, ARI and reliable-label share of pseudo labels against true speakers."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "nmi": float(normalized_mutual_info_score(speakers, clusters)),
        "ari": float(adjusted_rand_score(speakers, clusters)),
        "reliable_share": reliable_share(clusters, speakers),
        "n_samples": int(len(clusters)),
        "n_clusters": int(len(np.unique(clusters))),
    }
