"""``raysv demo``: the README's main job.

Today's pipeline (Stage II rounds come with issue #5):

1. generate a corpus (or use ``--data DIR``),
2. import it into Parquet manifests,
3. embed every utterance with the training-free baseline on Ray Data and
   score the dev and test trials (the reference a trained encoder must beat),
4. Stage I: contrastive pretraining on the dialogues (``raysv pretrain``),
5. embed every utterance with the Stage I encoder, score the trials, and
   cluster the embeddings with sharded k-means + purification (pseudo labels;
   NMI against the true speakers where the corpus has them, analysis only),
6. log config, metrics and the summary to MLflow (local SQLite by default).

Every step writes under ``out`` and is skipped when its output exists, so a
rerun after a crash continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace

from raysv.config import to_dict
from raysv.synth.corpus import SynthConfig
from raysv.training.config import (
    LossSpec,
    ModelSpec,
    OptimSpec,
    PretrainConfig,
    PretrainData,
    RejectionSpec,
    TrainSpec,
)

log = logging.getLogger("raysv")


def _small_corpus() -> SynthConfig:
    # Small enough for a 2-core laptop in well under a minute, large enough
    # for a few thousand trials: 40 training speakers with dialogues, and
    # 10 dev / 10 test speakers with 12 utterances over 3 sessions each.
    return SynthConfig(
        train_speakers=40,
        dev_speakers=10,
        test_speakers=10,
        utts_per_speaker=12,
        trials_per_split=1000,
    )


def _small_pretrain() -> PretrainConfig:
    # A few minutes on 2 CPU cores: a small ECAPA-TDNN, 1.5 s crops, AvA
    # with rejection, 20 epochs of ~6 steps over the demo corpus's ~100 dialogues.
    return PretrainConfig(
        run_name="stage1",
        data=PretrainData(crop_seconds=1.5, n_mels=40),
        model=ModelSpec(name="ecapa", kwargs={"channels": 48, "embed_dim": 96}),
        loss=LossSpec(name="ava", rejection=RejectionSpec(enabled=True)),
        optim=OptimSpec(lr=0.002),
        train=TrainSpec(epochs=20, batch_size=16),
    )


@dataclass
class DemoConfig:
    """Settings of ``raysv demo``.

    Args:
        out: run folder; every stage writes below it.
        data: a corpus folder to use instead of generating one.
        synth: generator settings when ``data`` is None.
        n_mels: log-mel bins of the baseline embedding.
        tracking_uri: MLflow URI; None = ``MLFLOW_TRACKING_URI`` or SQLite under ``out``.
        experiment: MLflow experiment name.
        stage1: run Stage I pretraining, embedding and clustering after the baseline.
        pretrain: Stage I settings (``out`` and ``data.data`` are set by the demo).
        cluster_k: clusters for the pseudo labels (a choice, like the papers' 6000; no labels used).
        cluster_drop_fraction / cluster_min_size: purification p and S.
    """

    out: str = "runs/demo"
    data: str | None = None
    synth: SynthConfig = field(default_factory=_small_corpus)
    n_mels: int = 40
    tracking_uri: str | None = None
    experiment: str = "raysv-demo"
    stage1: bool = True
    pretrain: PretrainConfig = field(default_factory=_small_pretrain)
    cluster_k: int = 60
    cluster_drop_fraction: float = 0.1
    cluster_min_size: int = 3


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo pipeline; returns the summary (also written to ``out/summary.json``)."""
    from raysv.data.corpus import prepare_corpus
    from raysv.embedding.baseline import BaselineEmbedder
    from raysv.embedding.extract import embed_manifest
    from raysv.evaluation.evaluate import evaluate
    from raysv.synth.corpus import synthesize
    from raysv.tracking import mlflow_tracking as tracking

    t0 = time.monotonic()
    out = os.path.abspath(cfg.out)
    os.makedirs(out, exist_ok=True)
    summary: dict = {"out": out}
    data = cfg.data
    if data is None:
        data = os.path.join(out, "corpus")
        if os.path.isfile(os.path.join(data, "meta", "synth.yaml")):
            log.info("[1/4] corpus already generated in %s", data)
        else:
            log.info("[1/4] generating a corpus in %s", data)
            summary["synth"] = synthesize(cfg.synth, data)
    log.info("[2/4] importing %s", data)
    manifests, ingest_summary = prepare_corpus(data, os.path.join(out, "manifests"))
    summary["ingest"] = ingest_summary
    if not manifests.trials:
        from raysv.errors import ManifestError

        raise ManifestError(f"{data}: no trials/dev.txt or trials/test.txt to evaluate on")
    log.info("[3/4] embedding utterances with the log-mel statistics baseline")
    summary["embed"] = embed_manifest(
        manifests.utterances,
        os.path.join(out, "embeddings", "baseline"),
        BaselineEmbedder,
        {"n_mels": cfg.n_mels},
    )
    log.info("[4/4] scoring trials")
    results = {}
    for split, trials in manifests.trials.items():
        results[split] = evaluate(
            trials, summary["embed"]["out"], manifests.utterances, center=True
        )
    summary["baseline"] = {
        s: {k: v for k, v in r.items() if k != "skipped_examples"} for s, r in results.items()
    }
    tracking_uri = cfg.tracking_uri or tracking.default_tracking_uri(out)
    if cfg.stage1:
        summary.update(_stage1(cfg, data, manifests, out, tracking_uri))
    summary["seconds"] = round(time.monotonic() - t0, 1)
    with tracking.run(tracking_uri, cfg.experiment, "demo", params=to_dict(cfg)) as run_id:
        for split, r in results.items():
            tracking.log_metrics(
                {k: r[k] for k in ("eer", "min_dcf_0.01", "min_dcf_0.05")},
                prefix=f"baseline.{split}.",
            )
        for split, r in summary.get("stage1_eval", {}).items():
            tracking.log_metrics(
                {k: r[k] for k in ("eer", "min_dcf_0.01", "min_dcf_0.05")},
                prefix=f"stage1.{split}.",
            )
        for part, r in summary.get("pseudo_labels", {}).get("analysis", {}).items():
            if isinstance(r, dict):
                tracking.log_metrics(
                    {k: r[k] for k in ("nmi", "ari", "reliable_share")},
                    prefix=f"pseudo_labels.{part}.",
                )
        tracking.log_dict(summary, "summary.json")
    summary["mlflow"] = {"tracking_uri": tracking_uri, "run_id": run_id}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _stage1(cfg: DemoConfig, data: str, manifests, out: str, tracking_uri: str) -> dict:
    """Stage I, then embeddings of every utterance with its best encoder, trials and k-means.

    Each step is skipped when its output is complete (rerun after a crash).
    """
    from raysv.clustering.driver import cluster
    from raysv.embedding.extract import embed_manifest
    from raysv.embedding.torch_embedder import TorchEmbedder
    from raysv.evaluation.evaluate import evaluate
    from raysv.training.pretrain import run_pretrain

    res: dict = {}
    stage1_out = os.path.join(out, "stage1")
    done = os.path.join(stage1_out, "summary.json")
    if os.path.isfile(done):
        log.info("[stage I] already trained in %s", stage1_out)
        with open(done) as f:
            s1 = json.load(f)
    else:
        log.info(
            "[stage I] contrastive pretraining (%s, %d epochs)",
            cfg.pretrain.loss.name,
            cfg.pretrain.train.epochs,
        )
        pcfg = replace(
            cfg.pretrain,
            out=stage1_out,
            data=replace(cfg.pretrain.data, data=data),
            tracking_uri=tracking_uri,
            experiment=cfg.experiment,
        )
        s1 = run_pretrain(pcfg)
    last = s1["history"][-1] if s1["history"] else {}
    res["stage1"] = {
        "epochs": s1["epochs"],
        "steps": s1["steps"],
        "final": s1["final"],
        "rejection_auc": last.get("rejection_auc"),
    }
    log.info("[stage I] embedding every utterance with the best encoder")
    emb = embed_manifest(
        manifests.utterances,
        os.path.join(out, "embeddings", "stage1"),
        TorchEmbedder,
        {"checkpoint": s1["best_model"]},
    )
    res["stage1_eval"] = {}
    for split, trials in manifests.trials.items():
        r = evaluate(trials, emb["out"], manifests.utterances, center=True)
        res["stage1_eval"][split] = {k: v for k, v in r.items() if k != "skipped_examples"}
    labels = os.path.join(out, "pseudo_labels", "round0")
    if os.path.isfile(os.path.join(labels, "_summary.json")):
        with open(os.path.join(labels, "_summary.json")) as f:
            cl = json.load(f)
    else:
        log.info(
            "[stage I] k-means pseudo labels (k=%d, p=%.2f, S=%d)",
            cfg.cluster_k,
            cfg.cluster_drop_fraction,
            cfg.cluster_min_size,
        )
        cl = cluster(
            emb["out"],
            labels,
            cfg.cluster_k,
            spherical=True,
            drop_fraction=cfg.cluster_drop_fraction,
            min_cluster_size=cfg.cluster_min_size,
            round_=0,
            manifest=manifests.utterances,
        )
    res["pseudo_labels"] = {
        k: cl[k] for k in ("out", "k", "kept_share", "clusters_after_purification") if k in cl
    }
    res["pseudo_labels"]["analysis"] = cl.get("analysis", {})
    return res
