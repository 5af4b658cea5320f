"""``raysv embed --normalise --average-sessions`` on a local Ray: unit rows, per-session means."""

import sys
import time

import numpy as np
import pyarrow.parquet as pq
import ray.cloudpickle

from raysv.cli import main
from raysv.data.corpus import prepare_corpus
from raysv.embedding.baseline import BaselineEmbedder
from raysv.evaluation.scoring import embedding_matrix
from tests.conftest import cli_json

# FirstBatchLate below is defined in this test module: ship it to the actors by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


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


class FirstBatchLate(BaselineEmbedder):
    """The baseline embedder, with the batch holding the manifest's first row held back
    a second: the other actor's batches finish first."""

    def __init__(self, first: str, **kwargs):
        super().__init__(**kwargs)
        self.first = first

    def __call__(self, batch):
        if self.first in set(batch["utt_id"].tolist()):
            time.sleep(1.0)
        return super().__call__(batch)


def test_embeddings_are_written_in_the_manifests_order_whichever_actor_ends_first(
    tiny_corpus, tmp_path, ray_local
):
    """k-means draws its seeded sample by row position: a pool written in the order batches
    happened to finish clustered differently from run to run (a seed did not reproduce
    Stage II). The rows keep the manifest's order, however the actors' batches end."""
    from raysv.embedding.extract import embed_manifest

    man, _ = prepare_corpus(tiny_corpus, str(tmp_path / "m"))
    ids = pq.read_table(man.utterances, columns=["utt_id"]).column("utt_id").to_pylist()
    s = embed_manifest(
        man.utterances,
        str(tmp_path / "emb"),
        FirstBatchLate,
        {"first": ids[0], "n_mels": 24},
        concurrency=2,
        batch_size=4,
    )
    assert s["rows"] == len(ids)
    assert pq.read_table(str(tmp_path / "emb")).column("utt_id").to_pylist() == ids


def test_unreadable_audio_is_skipped_and_listed_not_fatal(tiny_corpus, tmp_path, ray_local, capsys):
    """A file that went bad after import costs its row, not the job."""
    import shutil

    import pytest

    from raysv.errors import ManifestError

    corpus = str(tmp_path / "corpus")
    shutil.copytree(tiny_corpus, corpus)
    man, _ = prepare_corpus(corpus, str(tmp_path / "m"))
    rows = pq.read_table(man.utterances, columns=["utt_id", "path"]).to_pylist()
    bad = rows[3]
    with open(bad["path"], "wb") as f:
        f.write(b"RIFF not audio")
    argv = ["embed", "--manifest", man.utterances, "--out", str(tmp_path / "emb"), "--json"]
    assert main(argv) == 0
    s = cli_json(capsys.readouterr().out)
    assert s["rows"] == len(rows) - 1 and s["unreadable"] == 1
    assert s["unreadable_examples"][0]["utt_id"] == bad["utt_id"]
    assert s["unreadable_examples"][0]["path"] == bad["path"]
    ids, _ = embedding_matrix(pq.read_table(str(tmp_path / "emb")))  # _skipped-* not read
    assert sorted(ids) == sorted(r["utt_id"] for r in rows if r is not bad)
    # Nothing readable at all is an error that names a file, not an empty success.
    for r in rows:
        with open(r["path"], "wb") as f:
            f.write(b"RIFF not audio")
    with pytest.raises(ManifestError, match="no utterance could be embedded .*unreadable audio"):
        from raysv.embedding.baseline import BaselineEmbedder
        from raysv.embedding.extract import embed_manifest

        embed_manifest(man.utterances, str(tmp_path / "emb2"), BaselineEmbedder, {"n_mels": 24})


def test_embedding_actors_leave_a_cpu_free_wherever_they_land():
    """The actors take all but one CPU per node in total, so wherever Ray places them
    some node keeps Ray Data's one-CPU I/O task room (two 3-CPU nodes: 6 actors of
    5/6 CPU left half a CPU on each node: a job that waited forever)."""
    import itertools

    import pytest

    from raysv.embedding.extract import IO_CPUS, actor_cpus
    from raysv.errors import ConfigError

    for nodes, conc in [([2.0], 2), ([3.0, 3.0], 6), ([4.0, 2.0], 6), ([16.0, 2.0], 18)]:
        cpus = actor_cpus(nodes, conc)
        # every placement of the actors that fits the nodes leaves some node a free CPU
        for counts in itertools.product(range(conc + 1), repeat=len(nodes)):
            fits = all(k * cpus <= n + 1e-9 for k, n in zip(counts, nodes, strict=True))
            if sum(counts) == conc and fits:
                free = [n - k * cpus for k, n in zip(counts, nodes, strict=True)]
                assert max(free) >= IO_CPUS - 1e-9, (nodes, counts, cpus)
    assert actor_cpus([2.0], 2) == 0.5  # one node: as before, all but the I/O CPU
    assert actor_cpus([3.0, 3.0], 6) == 0.6666
    assert actor_cpus([16.0, 2.0], 18) == 0.8888  # not sized by the small node
    with pytest.raises(ConfigError, match="can't keep a CPU free"):
        actor_cpus([1.0, 1.0], 2)
