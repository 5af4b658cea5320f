"""``raysv demo``: the README's main job.

1. generate a corpus (or use ``--data DIR``),
2. import it into Parquet manifests,
3. embed every utterance with the training-free baseline on Ray Data and
   score the dev and test trials (the reference a trained encoder must beat),
4. Stage I: contrastive pretraining on the dialogues, or on utterances
   (SimCLR) when the corpus has none (``raysv pretrain``),
5. Stage II: rounds of embed -> k-means -> purify -> AAM-softmax with a loss
   gate -> evaluate (``raysv iterate``), optionally with a supervised
   reference trained on the true speakers (comparison only),
6. a report (HTML + PNG plots) and MLflow runs for every stage.

Every step writes under ``out`` and is skipped when its output exists, so a
rerun after a crash continues where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace

from raysv.config import changed_keys, check_run_folder, config, setting, to_dict
from raysv.data import run_store
from raysv.data.outputs import claim_run, read_json, write_json_atomic
from raysv.data.run_store import on_object_storage
from raysv.pipeline.iterate import ClusterSpec, IterateConfig, Schedule
from raysv.synth.corpus import SynthConfig
from raysv.training.config import (
    DinoSpec,
    LossSpec,
    ModelSpec,
    OptimSpec,
    PretrainConfig,
    PretrainData,
    RejectionSpec,
    TrainSpec,
)
from raysv.training.stage2_config import GateSpec, Stage2Config, Stage2Data

log = logging.getLogger("raysv")


def _small_corpus() -> SynthConfig:
    # Small enough for a 2-core laptop in well under a minute: 40 training
    # speakers with dialogues, and 25 dev / 25 test speakers with 12 utterances
    # over 3 sessions each, 3000 trials per split. With 10 evaluation speakers
    # (1000 trials) the test EER of one stage spread over 8 points across seeds,
    # more than a round's gain (bench/results/demo_eval10spk.json).
    return SynthConfig(
        train_speakers=40,
        dev_speakers=25,
        test_speakers=25,
        utts_per_speaker=12,
        trials_per_split=3000,
    )


def _small_pretrain() -> PretrainConfig:
    # A few minutes on 2 CPU cores: a small ECAPA-TDNN, 1.5 s crops, AvA
    # with rejection, 40 epochs of ~8 steps over the demo corpus's ~140 dialogues
    # (at 20 the best dev EER came in the last four epochs of every seed, 2026-12-02).
    return PretrainConfig(
        run_name="stage1",
        data=PretrainData(crop_seconds=1.5, n_mels=40),
        model=ModelSpec(name="ecapa", kwargs={"channels": 48, "embed_dim": 96}),
        loss=LossSpec(name="ava", rejection=RejectionSpec(enabled=True)),
        # used with --set pretrain.loss.name=dino: a head and crops for 2 CPU cores
        dino=DinoSpec(
            out_dim=1024,
            hidden_dim=256,
            bottleneck_dim=64,
            global_seconds=1.5,
            local_crops=2,
            local_seconds=1.0,
        ),
        optim=OptimSpec(lr=0.002),
        train=TrainSpec(epochs=40, batch_size=16),
    )


def _small_stage2() -> IterateConfig:
    # Two rounds of a few minutes each on 2 CPU cores: k-means with k chosen from
    # each round's embeddings (a user's corpus has no known speaker count),
    # purification p and S from the mean cluster size (0.1 and 3 on the generated
    # corpus), then the Stage I encoder + a new AAM head: 1 head-only epoch,
    # 2 ordinary epochs, 3 epochs with the LGL gate letting 50 % (round 1), 60 %
    # (round 2) of the samples through; then the same training on the true
    # speakers as a supervised reference (comparison only). All of it derived
    # from the corpus, nothing copied from a recipe (raysv.clustering.auto_schedule).
    return IterateConfig(
        rounds=2,
        schedule=Schedule(
            k=["auto"], drop_fraction=["auto"], min_cluster_size=["auto"], tau=["auto"]
        ),
        cluster=ClusterSpec(iterations=20, shards=1),
        train=Stage2Config(
            data=Stage2Data(crop_seconds=1.5),
            gate=GateSpec(name="lgl", warmup_epochs=2),  # closes at epoch 1 + 2
            head_warmup_epochs=1,
            optim=OptimSpec(lr=1e-3, decay=1.0),
            train=TrainSpec(epochs=6, batch_size=32),
        ),
        reference=True,
    )


# keys of the stages' configs that the demo sets itself, and from what
SET_BY_DEMO = {
    "pretrain.out": "out (<out>/stage1)",
    "pretrain.data.data": "data, or the corpus it generates",
    "pretrain.data.allow_outside_paths": "allow_outside_paths",
    "pretrain.tracking_uri": "tracking_uri",
    "pretrain.experiment": "experiment",
    "stage2.out": "out (<out>/stage2)",
    "stage2.data": "data, or the corpus it generates",
    "stage2.allow_outside_paths": "allow_outside_paths",
    "stage2.init_checkpoint": "Stage I's best_model.pt",
    "stage2.tracking_uri": "tracking_uri",
    "stage2.experiment": "experiment",
}


@config
class DemoConfig:
    """Settings of ``raysv demo``.

    Args:
        out: run folder; every stage writes below it.
        data: a corpus folder to use instead of generating one.
        synth: generator settings when ``data`` is None.
        n_mels: log-mel bins of the baseline embedding.
        tracking_uri: MLflow URI; None = ``MLFLOW_TRACKING_URI`` or SQLite under ``out``.
        experiment: MLflow experiment name.
        stage1: run Stage I pretraining and Stage II rounds after the baseline.
        pretrain: Stage I settings (``out`` and ``data.data`` are set by the demo).
        stage2: Stage II settings (``out``, ``data`` and ``init_checkpoint`` are set by the demo).
        report: write ``<out>/report/report.html`` at the end.
        allow_outside_paths: import audio that the corpus folder's files name outside it.
    """

    out: str = setting(
        "runs/demo", why="convenience: a run folder under ./runs (README quick start)"
    )
    data: str | None = setting(
        None, why="null: generate a corpus (synth), so the demo needs no data of yours"
    )
    synth: SynthConfig = setting(
        factory=_small_corpus,
        why="under a minute on 2 cores; 25 dev/test speakers, as 10 spread test EER 8 points "
        "across seeds (bench/results/demo_eval10spk.json)",
    )
    n_mels: int = setting(
        40,
        ge=1,
        why="the smaller of DESIGN.md's 40 or 80 log-mel bins, as in docs/benchmarks.md's baseline figures",
    )
    tracking_uri: str | None = setting(
        None, why="null: MLFLOW_TRACKING_URI, else a SQLite store under out (no server needed)"
    )
    experiment: str = setting("raysv-demo", why="one MLflow experiment per command, named so")
    stage1: bool = setting(
        True, why="the trained stages are the demo's point; false stops after the baseline"
    )
    pretrain: PretrainConfig = setting(
        factory=_small_pretrain,
        why="a few minutes on 2 CPU cores: a small ECAPA-TDNN, 1.5 s crops, AvA with "
        "rejection, 40 epochs; its dino.* are a small head and crops for "
        "--set pretrain.loss.name=dino",
    )
    stage2: IterateConfig = setting(
        factory=_small_stage2,
        why="two rounds of a few minutes each on 2 CPU cores, k, p, S and tau from the corpus "
        "(auto), with the supervised reference",
    )
    report: bool = setting(
        True, why="the demo ends with the HTML report of every stage (README quick start)"
    )
    allow_outside_paths: bool = setting(
        False,
        why="a corpus folder's text files may not name audio outside it unless you say so "
        "(safety: the files' text decides what is read)",
    )

    def __post_init__(self):
        check_run_folder(self.out)
        # a stage key the demo sets itself would be silently replaced: refused instead
        default = {"pretrain": _small_pretrain(), "stage2": _small_stage2()}
        for key, by in SET_BY_DEMO.items():
            stage, rest = key.split(".", 1)
            if changed_keys(getattr(self, stage), default[stage], [rest]):
                raise ValueError(f"{key} is set by the demo from {by}; remove it")


@on_object_storage("raysv demo")  # --out s3://...: a working copy kept in the bucket
def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo pipeline; returns the summary (also written to ``out/summary.json``)."""
    from raysv.data import fs
    from raysv.data.corpus import prepare_corpus, refuse_stale
    from raysv.embedding.baseline import BaselineEmbedder
    from raysv.embedding.extract import embed_manifest
    from raysv.evaluation.evaluate import centre_of, evaluate
    from raysv.synth.corpus import synthesize_replacing
    from raysv.tracking import mlflow_tracking as tracking

    t0 = time.monotonic()
    out = os.path.abspath(cfg.out)
    claim_run(out, "raysv demo")
    summary: dict = {"out": out}
    data = cfg.data
    if data is None:
        data = os.path.join(out, "corpus")
        if os.path.isfile(os.path.join(data, "meta", "synth.yaml")):
            log.info("[1/6] corpus already generated in %s", data)
        else:
            log.info("[1/6] generating a corpus in %s", data)
            summary["synth"] = synthesize_replacing(cfg.synth, data)
    log.info("[2/6] importing %s", data)
    manifests, ingest_summary = prepare_corpus(
        data, os.path.join(out, "manifests"), allow_outside=cfg.allow_outside_paths
    )
    refuse_stale(ingest_summary, out, ("embeddings", "stage1", "stage2", "summary.json"), "demo")
    summary["ingest"] = ingest_summary
    if not manifests.trials:
        from raysv.errors import ManifestError

        raise ManifestError(f"{data}: no trials/dev.txt or trials/test.txt to evaluate on")
    log.info("[3/6] baseline: embedding utterances with log-mel statistics")
    summary["embed"] = embed_manifest(
        manifests.utterances,
        os.path.join(out, "embeddings", "baseline"),
        BaselineEmbedder,
        {"n_mels": cfg.n_mels},
        device="cpu",  # numpy features: nothing for a GPU to do
    )
    run_store.sync()
    log.info("[4/6] baseline: scoring trials")
    results = {}
    # centred on the mean of the training utterances' embeddings, as every raysv score
    train_ids = set(fs.read_table(manifests.train, ["utt_id"]).column("utt_id").to_pylist())
    centre = centre_of(summary["embed"]["out"], only=train_ids)
    for split, trials in manifests.trials.items():
        results[split] = evaluate(
            trials, summary["embed"]["out"], manifests.utterances, centre=centre
        )
    summary["baseline"] = {
        s: {k: v for k, v in r.items() if k != "skipped_examples"} for s, r in results.items()
    }
    tracking_uri = cfg.tracking_uri or tracking.default_tracking_uri(out)
    if cfg.stage1:
        dialogues = ingest_summary.get("dialogues", 0) > 0  # usable ones, not just the file
        summary.update(_stages(cfg, data, out, tracking_uri, dialogues))
    summary["results"] = results_table(summary)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    with tracking.run(tracking_uri, cfg.experiment, "demo", params=to_dict(cfg)) as run_id:
        for stage, splits in summary["results"].items():
            for split, r in splits.items():
                if isinstance(r, dict):
                    tracking.log_metrics(
                        {k: r[k] for k in ("eer", "min_dcf_0.01", "min_dcf_0.05") if k in r},
                        prefix=f"{stage}.{split}.",
                    )
                elif split == "nmi":
                    tracking.log_metrics({f"{stage}.nmi": r})
        tracking.log_dict(summary, "summary.json")
    summary["mlflow"] = {"tracking_uri": tracking_uri, "run_id": run_id}
    write_json_atomic(os.path.join(out, "summary.json"), summary, default=float)
    if cfg.stage1 and cfg.report:
        from raysv.reporting.report import write_report

        summary["report"] = write_report(out)["report"]
        write_json_atomic(os.path.join(out, "summary.json"), summary, default=float)
    log.info("demo finished in %.0fs", time.monotonic() - t0)
    return summary


def _metrics(r: dict) -> dict:
    return {k: r[k] for k in ("eer", "min_dcf_0.01", "min_dcf_0.05") if k in r}


def results_table(summary: dict) -> dict:
    """``{stage: {split: {eer, min_dcf_0.01, min_dcf_0.05}, "nmi": ..}}`` in pipeline order."""
    table: dict = {"baseline": {s: _metrics(r) for s, r in summary["baseline"].items()}}
    st2 = summary.get("stage2")
    if not st2:
        return table
    table["stage1"] = {s: _metrics(r) for s, r in st2["initial"].items()}
    for r in st2["rounds"]:
        row: dict = {}
        for key, v in r.items():
            split, _, metric = key.partition(".")
            if split in ("dev", "test"):
                row.setdefault(split, {})[metric] = v
        if "all.nmi" in r:
            row["nmi"] = r["all.nmi"]  # NMI of this round's pseudo labels (previous encoder)
        table[f"round{r['round']}"] = row
    final = st2.get("final_clustering", {}).get("analysis", {}).get("all")
    if final:
        table[f"round{st2['rounds'][-1]['round']}"]["nmi_after"] = final["nmi"]
    if st2.get("reference"):
        table["supervised_reference"] = {
            s: _metrics(r) for s, r in st2["reference"]["scores"].items()
        }
    return table


def _stages(
    cfg: DemoConfig, data: str, out: str, tracking_uri: str, dialogues: bool = True
) -> dict:
    """Stage I, then Stage II rounds from its best encoder.

    Without dialogues, Stage I in dialogue mode has nothing to train on: it
    switches to utterance mode (SimCLR: two segments of one utterance, NT-Xent
    at temperature 0.1, as ``configs/pretrain_simclr.yaml``). Each step is
    skipped when its output is complete (rerun after a crash).
    """
    from raysv.pipeline.iterate import run_iterate
    from raysv.training.pretrain import run_pretrain

    res: dict = {}
    stage1_out = os.path.join(out, "stage1")
    done = os.path.join(stage1_out, "summary.json")
    if os.path.isfile(done):
        log.info("[5/6] Stage I already trained in %s", stage1_out)
        s1 = read_json(done)
    else:
        log.info(
            "[5/6] Stage I: contrastive pretraining (%s, %d epochs)",
            cfg.pretrain.loss.name,
            cfg.pretrain.train.epochs,
        )
        pdata = replace(cfg.pretrain.data, data=data, allow_outside_paths=cfg.allow_outside_paths)
        ploss = cfg.pretrain.loss
        if not dialogues and pdata.mode == "dialogue":
            log.info("[5/6] no usable dialogues in %s: Stage I trains on utterances (SimCLR)", data)
            pdata = replace(pdata, mode="utterance")
            ploss = LossSpec(name="ntxent", temperature=0.1)
        pcfg = replace(
            cfg.pretrain,
            out=stage1_out,
            data=pdata,
            loss=ploss,
            tracking_uri=tracking_uri,
            experiment=cfg.experiment,
        )
        s1 = run_pretrain(pcfg)
        run_store.sync()  # a run folder on object storage: Stage I is in the bucket
    last = s1["history"][-1] if s1["history"] else {}
    res["stage1"] = {
        "epochs": s1["epochs"],
        "steps": s1["steps"],
        "final": s1["final"],
        "rejection_auc": last.get("rejection_auc"),
        "rejection_auc_ceiling": last.get("rejection_auc_ceiling"),
        "rejection_auc_drawn": last.get("rejection_auc_drawn"),
        "best_model": s1["best_model"],
    }
    log.info("[6/6] Stage II: %d rounds from the Stage I encoder", cfg.stage2.rounds)
    icfg = replace(
        cfg.stage2,
        out=os.path.join(out, "stage2"),
        data=data,
        allow_outside_paths=cfg.allow_outside_paths,
        init_checkpoint=s1["best_model"],
        tracking_uri=tracking_uri,
        experiment=cfg.experiment,
    )
    res["stage2"] = run_iterate(icfg)
    return res
