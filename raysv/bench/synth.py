"""Corpus generator benchmark: wall time for 100 speakers x 20 utterances, and the
baseline (log-mel mean+std, cosine) EER on its dev and test trials: how hard the
corpus is without learning."""

from __future__ import annotations

import tempfile
import time

import numpy as np


def run(quick: bool = False) -> dict:
    from raysv.data import fs
    from raysv.data.corpus import prepare_corpus
    from raysv.embedding.baseline import BaselineEmbedder
    from raysv.evaluation.evaluate import score_trials
    from raysv.evaluation.metrics import verification_report
    from raysv.synth.corpus import SynthConfig, synthesize

    cfg = SynthConfig(
        train_speakers=80,
        dev_speakers=10,
        test_speakers=10,
        utts_per_speaker=20,
        trials_per_split=2000,
    )
    if quick:
        cfg = SynthConfig(
            train_speakers=4,
            dev_speakers=3,
            test_speakers=3,
            utts_per_speaker=6,
            trials_per_split=60,
        )
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        summary = synthesize(cfg, f"{d}/corpus")
        synth_s = time.perf_counter() - t0
        man, _ = prepare_corpus(f"{d}/corpus", f"{d}/man")
        utts = fs.read_table(man.utterances)
        emb = BaselineEmbedder(n_mels=40)
        t1 = time.perf_counter()
        out = emb(
            {
                c: np.asarray(utts.column(c).to_pylist(), dtype=object)
                for c in ("utt_id", "path", "start_s", "end_s")
            }
        )
        embed_s = time.perf_counter() - t1
        from raysv.evaluation.scoring import embedding_matrix

        ids, matrix = embedding_matrix(out)
        res = {}
        for split, path in man.trials.items():
            trials = fs.read_table(path)
            scores = score_trials(trials, ids, matrix, center=True)
            res[split] = verification_report(scores, trials.column("label").to_numpy())
    return {
        "benchmark": "synth",
        "config": f"{cfg.total_speakers} speakers x {cfg.utts_per_speaker} utterances ({cfg.train_speakers}/{cfg.dev_speakers}/{cfg.test_speakers} train/dev/test)",
        "utterances": summary["utterances"],
        "audio_hours": summary["audio_hours"],
        "synth_seconds": round(synth_s, 1),
        "synth_processes": summary["workers"],
        "baseline_embed_seconds": round(embed_s, 1),
        "baseline_dev_eer": round(res["dev"]["eer"], 2),
        "baseline_test_eer": round(res["test"]["eer"], 2),
        "baseline_dev_min_dcf_0.01": round(res["dev"]["min_dcf_0.01"], 3),
        "baseline_test_min_dcf_0.01": round(res["test"]["min_dcf_0.01"], 3),
    }
