"""``raysv demo``: the README's main job.

Today's pipeline (training stages come with the next issues):

1. generate a corpus (or use ``--data DIR``),
2. import it into Parquet manifests,
3. embed every utterance with the training-free baseline on Ray Data,
4. score the dev and test trials: EER and minDCF,
5. log config, metrics and the summary to MLflow (local SQLite by default).

Every step writes under ``out`` and is skipped when its output exists, so a
rerun after a crash continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

from raysv.config import to_dict
from raysv.synth.corpus import SynthConfig

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
    """

    out: str = "runs/demo"
    data: str | None = None
    synth: SynthConfig = field(default_factory=_small_corpus)
    n_mels: int = 40
    tracking_uri: str | None = None
    experiment: str = "raysv-demo"


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
    summary["seconds"] = round(time.monotonic() - t0, 1)
    tracking_uri = cfg.tracking_uri or tracking.default_tracking_uri(out)
    with tracking.run(tracking_uri, cfg.experiment, "demo", params=to_dict(cfg)) as run_id:
        for split, r in results.items():
            tracking.log_metrics(
                {k: r[k] for k in ("eer", "min_dcf_0.01", "min_dcf_0.05")},
                prefix=f"baseline.{split}.",
            )
        tracking.log_dict(summary, "summary.json")
    summary["mlflow"] = {"tracking_uri": tracking_uri, "run_id": run_id}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
