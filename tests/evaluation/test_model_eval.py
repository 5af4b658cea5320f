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
    import pytest
    import torch

    from raysv.evaluation.metrics import verification_report
    from raysv.evaluation.model_eval import evaluate_model
    from raysv.evaluation.scoring import cosine_scores

    rng = np.random.default_rng(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10 * 4, 6))
    feats = {f"d{i:02d}": rng.standard_normal((10, 4)).astype(np.float32) for i in range(16)}
    train = {f"t{i}": rng.standard_normal((10, 4)).astype(np.float32) + 2 for i in range(5)}
    pairs = [(a, b) for a in range(16) for b in range(a + 1, 16)][::3]
    enroll, test = [f"d{a:02d}" for a, _ in pairs], [f"d{b:02d}" for _, b in pairs]
    labels = rng.integers(0, 2, len(pairs))
    trials = pa.table({"enroll": enroll, "test": test, "label": labels})

    with torch.no_grad():
        emb = {
            u: model(torch.from_numpy(x)[None]).numpy()[0] for u, x in {**feats, **train}.items()
        }
    centre = np.mean([emb[u] for u in train], axis=0)
    ids = sorted(feats)
    matrix = np.stack([emb[u] for u in ids])
    expected = verification_report(cosine_scores(ids, matrix, enroll, test, center=centre), labels)
    got = evaluate_model(model, trials, feats, centre_feats=train)
    metrics = ("eer", "min_dcf_0.01", "min_dcf_0.05")
    assert [got[m] for m in metrics] == pytest.approx([expected[m] for m in metrics], abs=1e-9)
    # the old rule (the scored utterances' own mean) gives other figures on this data,
    # and is what evaluate_model falls back to without a training sample
    old = evaluate_model(model, trials, feats)
    used = [ids.index(u) for u in sorted(set(enroll) | set(test))]
    trial_mean = cosine_scores(ids, matrix, enroll, test, center=matrix[used].mean(axis=0))
    assert old["eer"] == pytest.approx(verification_report(trial_mean, labels)["eer"])
    assert old["eer"] != pytest.approx(got["eer"]), (old["eer"], got["eer"])


def test_an_unreadable_file_in_the_centre_sample_costs_its_row_only(tmp_path):
    import pytest

    from raysv.errors import ManifestError
    from raysv.evaluation.model_eval import readable_features

    rng = np.random.default_rng(0)
    good = str(tmp_path / "good.wav")
    sf.write(good, rng.standard_normal(16000).astype(np.float32) * 0.1, 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not audio")
    names = ["utt_id", "path", "start_s", "end_s"]
    rows = [("g", good, None, None), ("b", str(bad), None, None)]
    utts = pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})
    assert list(readable_features(utts, 24, 10.0)) == ["g"]
    with pytest.raises(ManifestError, match="scoring centre"):
        readable_features(utts.slice(1, 1), 24, 10.0)


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
    folder = tmp_path / "parts"  # a folder of parts, as raysv embed writes them
    folder.mkdir()
    pq.write_table(embeddings_table(np.array(["a", "b"]), x[:2]), str(folder / "p0.parquet"))
    pq.write_table(embeddings_table(np.array(["c", "d"]), x[2:]), str(folder / "p1.parquet"))
    (folder / "_SUCCESS").write_text("")
    np.testing.assert_allclose(centre_of(str(folder)), x.mean(axis=0))
    np.testing.assert_allclose(centre_of(str(folder), only={"b", "d"}), x[[1, 3]].mean(axis=0))
    with pytest.raises(RaysvError, match="e.parquet: no embeddings"):
        centre_of(uri, only={"zz"})
