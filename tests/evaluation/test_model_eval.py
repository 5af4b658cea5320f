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
