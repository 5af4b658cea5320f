import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, roc_curve

from raysv.errors import RaysvError
from raysv.evaluation.metrics import (
    clustering_report,
    det_curve,
    eer,
    min_dcf,
    reliable_share,
    verification_report,
)
from raysv.evaluation.scoring import as_norm, cosine_scores, l2_normalise


def _sk_eer(scores, labels):
    """Independent EER from scikit-learn's ROC: the point where |FNR - FPR| is smallest."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = np.nanargmin(np.abs(fnr - fpr))
    return (fpr[i] + fnr[i]) / 2, np.abs(fnr[i] - fpr[i])


@pytest.mark.parametrize("seed", range(5))
def test_eer_matches_sklearn_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 2000)
    scores = rng.standard_normal(2000) + 1.2 * labels
    ours = eer(scores, labels)
    ref, gap = _sk_eer(scores, labels)
    assert abs(ours - ref) <= gap / 2 + 1e-9
    assert 0.2 < ours < 0.35


@pytest.mark.parametrize("seed", range(3))
def test_eer_with_heavily_tied_scores(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 1000)
    scores = np.round(rng.standard_normal(1000) + labels, 0)  # ~6 distinct values
    ours = eer(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.argmax(fnr <= fpr))
    # The EER lies on the segment between the bracketing ROC points.
    lo, hi = sorted([fpr[i - 1], fpr[i]])
    assert lo - 1e-9 <= ours <= hi + 1e-9
    assert np.unique(scores).size < 10


def test_eer_edge_cases():
    assert eer(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 0.0
    assert eer(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])) == 1.0
    assert eer(np.array([0.5, 0.5, 0.5, 0.5]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)


def test_min_dcf_matches_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.standard_normal(500) + labels
    for p in (0.01, 0.05):
        best = np.inf
        for t in np.r_[np.unique(scores), np.inf]:
            p_miss = np.mean(scores[labels == 1] < t)
            p_fa = np.mean(scores[labels == 0] >= t)
            best = min(best, (p * p_miss + (1 - p) * p_fa) / min(p, 1 - p))
        assert min_dcf(scores, labels, p) == pytest.approx(best)
    assert min_dcf(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0


def test_det_curve_endpoints():
    p_miss, p_fa, thr = det_curve(np.array([0.3, 0.1, 0.3, 0.9]), np.array([1, 0, 0, 1]))
    assert p_miss[0] == 1 and p_fa[0] == 0 and p_miss[-1] == 0 and p_fa[-1] == 1
    assert len(thr) == 4  # inf + 3 distinct scores


def test_metric_input_errors_are_clear():
    with pytest.raises(RaysvError, match="both target and non-target"):
        eer(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(RaysvError, match="differ in length"):
        eer(np.array([0.1]), np.array([1, 0]))
    with pytest.raises(RaysvError, match="NaN"):
        eer(np.array([np.nan, 0.2]), np.array([1, 0]))


def test_verification_report_units():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    r = verification_report(rng.standard_normal(300) + 2 * labels, labels)
    assert 0 < r["eer"] < 50 and r["n_target"] + r["n_nontarget"] == 300


def test_reliable_share_hungarian():
    speakers = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    clusters = np.array([5, 5, 7, 7, 7, 9, 9, 5])
    # best 1:1 map: 5->0 (2), 7->1 (2), 9->2 (2) = 6/8
    assert reliable_share(clusters, speakers) == pytest.approx(6 / 8)
    assert reliable_share(speakers + 10, speakers) == 1.0
    # Two clusters for one speaker: only one of them can map to it.
    assert reliable_share(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])) == 0.5


def test_clustering_report_matches_sklearn():
    rng = np.random.default_rng(0)
    spk = rng.integers(0, 20, 400)
    clu = np.where(rng.random(400) < 0.7, spk, rng.integers(0, 25, 400))
    r = clustering_report(clu, spk)
    assert r["nmi"] == pytest.approx(normalized_mutual_info_score(spk, clu))
    assert r["ari"] == pytest.approx(adjusted_rand_score(spk, clu))
    assert 0.6 < r["reliable_share"] < 0.85


def test_cosine_scores_and_as_norm():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((10, 8)).astype(np.float32)
    ids = [f"u{i}" for i in range(10)]
    s = cosine_scores(ids, emb, ["u0", "u1"], ["u0", "u2"])
    assert s[0] == pytest.approx(1.0, abs=1e-6)
    x = l2_normalise(emb)
    assert s[1] == pytest.approx(float(x[1] @ x[2]), abs=1e-6)
    cohort = rng.standard_normal((50, 8))
    n = as_norm(s, x[[0, 1]], x[[0, 2]], cohort, top_k=10)
    c = l2_normalise(cohort)
    top = np.sort(x[0] @ c.T)[-10:]
    expect0 = (s[0] - top.mean()) / (top.std() + 1e-6)  # enrol == test for trial 0
    assert n[0] == pytest.approx(expect0, rel=1e-5)
    with pytest.raises(Exception, match="no embedding"):
        cosine_scores(ids, emb, ["zz"], ["u0"])
