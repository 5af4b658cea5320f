"""Training scores its dev trials on the features ``raysv embed`` uses (same cut, same frames)."""

import numpy as np
import pyarrow as pa
import soundfile as sf

from raysv.embedding.torch_embedder import BUCKET_SECONDS, TorchEmbedder, utterance_fbank
from raysv.evaluation.model_eval import trial_features


def test_dev_features_equal_the_embedders(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate([0.05, 1.0, 2.37, 12.4]):  # short, exact, odd, over the cap
        path = str(tmp_path / f"u{i}.wav")
        sf.write(path, rng.standard_normal(int(seconds * 16000)).astype(np.float32) * 0.1, 16000)
        rows.append((f"u{i}", path, None, None))
    rows.append(("seg", rows[3][1], 1.0, 3.33))  # a segment of a longer file
    names = ["utt_id", "path", "start_s", "end_s"]
    utts = pa.table({name: [r[i] for r in rows] for i, name in enumerate(names)})
    dev = trial_features(utts, 24, 10.0)
    embedder = object.__new__(TorchEmbedder)  # only its feature path, no checkpoint
    embedder.n_mels, embedder.max_seconds, embedder.bucket_seconds = 24, 10.0, BUCKET_SECONDS
    for uid, path, st, en in rows:
        ours = embedder._features(path, st, en)
        np.testing.assert_array_equal(dev[uid], ours)
        np.testing.assert_array_equal(ours, utterance_fbank(path, st, en, 24, 10.0))
    # at most one bucket of audio is cut: 2.37 s keeps 2.3 s (frames at a 10 ms hop)
    assert abs(dev["u2"].shape[0] - 230) <= 2
    assert abs(dev["u3"].shape[0] - 1000) <= 2  # capped at 10 s


def test_dev_scores_are_centred_on_the_training_mean_not_the_trial_set(tmp_path):
    """Issue #24: model selection scores as export and verify do, cos(a - c, b - c) with
    c the mean embedding of training utterances, so a dev threshold means the same for
    any pair; the trial set's own mean (the old rule) gives other scores."""
    import torch

    from raysv.evaluation.metrics import verification_report
    from raysv.evaluation.model_eval import evaluate_model
    from raysv.evaluation.scoring import cosine_scores

    rng = np.random.default_rng(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10 * 4, 6))
    feats = {f"d{i}": rng.standard_normal((10, 4)).astype(np.float32) for i in range(8)}
    train = {f"t{i}": rng.standard_normal((10, 4)).astype(np.float32) + 2 for i in range(5)}
    enroll, test = ["d0", "d1", "d2", "d3", "d4", "d5"], ["d1", "d2", "d3", "d6", "d7", "d0"]
    labels = [1, 1, 0, 0, 1, 0]
    trials = pa.table({"enroll": enroll, "test": test, "label": labels})

    with torch.no_grad():
        emb = {
            u: model(torch.from_numpy(x)[None]).numpy()[0] for u, x in {**feats, **train}.items()
        }
    centre = np.mean([emb[u] for u in train], axis=0)
    ids = sorted(feats)
    matrix = np.stack([emb[u] for u in ids])
    expected = cosine_scores(ids, matrix, enroll, test, center=centre)
    got = evaluate_model(model, trials, feats, centre_feats=train)
    want = verification_report(expected, np.array(labels))
    assert got["eer"] == want["eer"] and got["min_dcf_0.01"] == want["min_dcf_0.01"]
    trial_mean = cosine_scores(ids, matrix, enroll, test, center=matrix.mean(axis=0))
    assert not np.allclose(expected, trial_mean)  # the two rules differ on this data


def test_the_centre_of_an_embeddings_table_takes_the_rows_asked_for(tmp_path):
    import pyarrow.parquet as pq
    import pytest

    from raysv.data.schema import embeddings_table
    from raysv.errors import RaysvError
    from raysv.evaluation.evaluate import centre_of

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    pq.write_table(embeddings_table(np.array(["a", "b", "c", "d"]), x), str(tmp_path / "e.parquet"))
    uri = str(tmp_path / "e.parquet")
    np.testing.assert_allclose(centre_of(uri), x.mean(axis=0))
    np.testing.assert_allclose(centre_of(uri, only={"a", "c"}), x[[0, 2]].mean(axis=0))
    two = centre_of(uri, max_rows=2, seed=3)
    assert any(np.allclose(two, x[[i, j]].mean(axis=0)) for i in range(4) for j in range(i + 1, 4))
    with pytest.raises(RaysvError, match="e.parquet: no embeddings"):
        centre_of(uri, only={"zz"})
