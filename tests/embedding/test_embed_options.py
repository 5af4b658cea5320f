"""``raysv embed --normalise --average-sessions`` on a local Ray: unit rows, per-session means."""

import numpy as np
import pyarrow.parquet as pq

from raysv.cli import main
from raysv.data.corpus import prepare_corpus
from raysv.evaluation.scoring import embedding_matrix
from tests.conftest import cli_json


def test_normalised_embeddings_and_session_means(tiny_corpus, tmp_path, ray_local, capsys):
    man, _ = prepare_corpus(tiny_corpus, str(tmp_path / "m"))
    argv = ["embed", "--manifest", man.utterances, "--out", str(tmp_path / "emb")]
    argv += ["--normalise", "--average-sessions", str(tmp_path / "sess"), "--json"]
    assert main(argv) == 0
    s = cli_json(capsys.readouterr().out)
    ids, emb = embedding_matrix(pq.read_table(str(tmp_path / "emb")))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    utts = pq.read_table(man.utterances, columns=["utt_id", "session_id"]).to_pylist()
    session_of = {r["utt_id"]: r["session_id"] or r["utt_id"] for r in utts}
    sess = pq.read_table(str(tmp_path / "sess"))
    sess_ids, means = embedding_matrix(sess)
    assert s["sessions"]["sessions"] == len(set(session_of.values())) == len(sess_ids)
    row = {u: i for i, u in enumerate(ids)}
    counts = dict(zip(sess_ids, sess.column("n_utts").to_pylist(), strict=True))
    for sid, mean in zip(sess_ids, means, strict=True):
        members = [u for u, x in session_of.items() if x == sid]
        assert counts[sid] == len(members)
        assert np.allclose(mean, emb[[row[u] for u in members]].mean(axis=0), atol=1e-5)
