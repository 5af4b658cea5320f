"""Issue #23: an embedding actor killed mid-run (its process SIGKILLed, as when its
node is lost) costs a retry, not the job, a row or a duplicate.

Ray Data starts a lost actor of the pool again and re-runs the batches it held
(its actors have ``max_restarts=-1``, ``max_task_retries=-1``); this checks that
raysv's output is whole and equal to an uninterrupted run's.
"""

import os
import signal
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import ray.cloudpickle

from raysv.data.corpus import prepare_corpus
from raysv.embedding.baseline import BaselineEmbedder
from raysv.evaluation.scoring import embedding_matrix

# The embedder below is defined in this test module: ship it to the actors by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class SlowEmbedder(BaselineEmbedder):
    """The baseline embedder, a quarter second per batch: the run lasts long enough to
    lose an actor in the middle of it."""

    def __call__(self, batch):
        time.sleep(0.25)
        return super().__call__(batch)


def _map_workers() -> list[int]:
    """PIDs of this machine's Ray Data actor processes running SlowEmbedder."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::MapWorker") and "SlowEmbedder" in cmd:
            pids.append(int(p))
    return pids


def test_an_embedding_actor_killed_mid_run_costs_no_row(tiny_corpus, tmp_path, ray_local):
    from raysv.embedding.extract import embed_manifest

    man, _ = prepare_corpus(tiny_corpus, str(tmp_path / "m"))
    n = pq.read_metadata(man.utterances).num_rows
    reference = embed_manifest(
        man.utterances, str(tmp_path / "ref"), BaselineEmbedder, {"n_mels": 24}
    )
    assert reference["rows"] == n

    killed: list[int] = []
    done = threading.Event()

    def kill_one_when_working():
        seen_at = None
        while not done.is_set() and not killed:
            pids = _map_workers()
            if pids and seen_at is None:
                seen_at = time.monotonic()
            # a couple of batches in (the actor is built and has work in flight)
            if pids and time.monotonic() - seen_at > 1.5:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_when_working, daemon=True)
    killer.start()
    try:
        s = embed_manifest(
            man.utterances,
            str(tmp_path / "emb"),
            SlowEmbedder,
            {"n_mels": 24},
            concurrency=1,
            batch_size=2,
        )
    finally:
        done.set()
        killer.join(timeout=10)
    assert killed, "the run ended before an actor could be killed: make it longer"
    assert s["rows"] == n and s.get("unreadable", 0) == 0
    ids, emb = embedding_matrix(pq.read_table(str(tmp_path / "emb")))
    assert len(ids) == len(set(ids)) == n  # every row once: none lost, none written twice
    ref_ids, ref_emb = embedding_matrix(pq.read_table(str(tmp_path / "ref")))
    order = {u: i for i, u in enumerate(ref_ids)}
    np.testing.assert_allclose(emb, ref_emb[[order[u] for u in ids]], rtol=0, atol=1e-6)
