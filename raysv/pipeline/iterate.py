"""``raysv iterate``: Stage II in rounds, one resumable pipeline.

Round r = 1..R, starting from an encoder (Stage I's best model):

1. cluster the training pool's embeddings (made by the previous encoder)
   with sharded k-means and purify them (p_r, S_r) -> pseudo labels;
2. train on the kept pseudo labels (AAM-softmax + gate, tau_r) from the
   previous encoder with a new head (``restart=continue``) or from scratch;
3. embed the training pool and the trial utterances with the new encoder
   and score the test (and dev) trials.

The training pool is every utterance of the manifest (of a corpus folder's
training rows, which also leave out the trial speakers' other audio) that no
trial list names, so evaluation audio is never trained or clustered on.

Every step writes under ``<out>/round<r>/`` and is skipped when its output is
complete; training resumes from its last Ray Train checkpoint. MLflow: one
parent run for the pipeline, a nested run per round (the round's training
run, which also gets the round's clustering metrics).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import fields, replace
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysv.clustering.auto_schedule import lgl_share
from raysv.clustering.sharded import KMeansSpec
from raysv.config import changed_keys, check_run_folder, config, setting, to_dict
from raysv.data import fs, run_store
from raysv.data.holdout import training_rows, trial_utt_ids
from raysv.data.outputs import claim_run, write_json_atomic
from raysv.data.run_store import on_object_storage
from raysv.errors import ConfigError
from raysv.training.stage2_config import GateSpec, Stage2Config

log = logging.getLogger("raysv")


@config
class Schedule:
    """Per-round settings; round r uses entry r-1, the last entry repeats.

    ``k``: clusters, or ``auto``: chosen from that round's embeddings
    (:mod:`raysv.clustering.auto_k`: merging down to a threshold calibrated on
    the dev trials, see ``cluster.auto_k_false_accepts``; table and plot in
    the round's ``labels/_auto_k.*``); ``drop_fraction`` / ``min_cluster_size``:
    purification p and S, or ``auto``: from the mean cluster size N / k
    (:mod:`raysv.clustering.auto_schedule`, written to ``labels/_summary.json``);
    ``tau``: the LGL threshold (the LGL paper's 1, 3, 3, 5, 6), or ``auto``:
    in each gated epoch the previous epoch's loss quantile that lets through
    0.5 + 0.1 (r - 1) of the samples (at most 0.9; the paper's aim of >= 10 %
    more selected data per round, stated directly).
    """

    k: list[int | Literal["auto"]] = setting(
        factory=lambda: [60],
        ge=2,
        why="of the order of the generated corpus's 80 training speakers; give your "
        "corpus's speaker count, or auto when it is unknown",
    )
    drop_fraction: list[float | Literal["auto"]] = setting(
        factory=lambda: [0.1],
        ge=0,
        lt=1,
        why="light purification for small corpora; the purification paper drops "
        "p = 0.6, 0.4, 0.3 by round on VoxCeleb2; auto scales p with the cluster size",
    )
    min_cluster_size: list[int | Literal["auto"]] = setting(
        factory=lambda: [3],
        ge=1,
        why="the purification paper keeps clusters of S = 6-10 on VoxCeleb2; small "
        "corpora have small clusters; auto scales S with the cluster size",
    )
    tau: list[float | Literal["auto"]] = setting(
        factory=lambda: [1.0, 3.0, 3.0, 5.0, 6.0],
        gt=0,
        why="the LGL paper's thresholds for rounds 1-5 (its Table: 1, 3, 3, 5, 6)",
    )

    def __post_init__(self):
        # every round's values are checked when the config is read (ranges: the fields'),
        # before round 1 trains
        for name in ("k", "drop_fraction", "min_cluster_size", "tau"):
            if not getattr(self, name):
                raise ValueError(f"schedule.{name} needs at least one value")

    def at(self, r: int) -> dict:
        """Settings of round ``r`` (1-based)."""
        pick = lambda xs: xs[min(r, len(xs)) - 1]  # noqa: E731
        return {
            "k": pick(self.k),
            "drop_fraction": pick(self.drop_fraction),
            "min_cluster_size": pick(self.min_cluster_size),
            "tau": pick(self.tau),
        }


@config
class ClusterSpec(KMeansSpec):
    """Sharded k-means settings of every round: :class:`KMeansSpec`'s fields (iterations,
    seed, spherical, early_stop, max_points_per_centroid, init, init_points_per_centroid;
    defined and checked there, once) and where the search runs. ``spherical`` defaults
    to True here (cosine k-means on speaker embeddings, as they are scored); ``device``:
    ``auto`` searches on GPUs where the Ray cluster has them."""

    spherical: bool = setting(
        True, why="speaker embeddings are compared by cosine; cosine k-means clusters them so"
    )
    shards: int | None = setting(
        None,
        ge=1,
        hint="or null: automatic",
        why="null: two per node (one per GPU on GPUs), measured in `raysv bench cluster`",
    )
    device: Literal["auto", "cpu", "gpu"] = setting(
        "auto", why="GPUs where the Ray cluster has them, else CPUs"
    )
    auto_k_false_accepts: float = setting(
        0.02,
        gt=0,
        lt=0.5,
        why="k: auto merges groups while they are as similar as the dev-trial score this "
        "share of non-target trials reaches: a strict 2 % leans to more clusters, as a "
        "split speaker costs pseudo labels less than merged ones (raysv.clustering.auto_k)",
    )

    def kmeans(self) -> KMeansSpec:
        """The k-means settings alone, as a :class:`KMeansSpec`."""
        return KMeansSpec(**{f.name: getattr(self, f.name) for f in fields(KMeansSpec)})


@config
class IterateConfig:
    """``raysv iterate`` configuration.

    Args:
        out: run folder; each round writes ``round<r>/{labels,train,embeddings}``.
        data: a corpus folder (imported to manifests under ``out``), or give
            ``utterances`` and trial lists.
        allow_outside_paths: import audio the corpus folder's files name outside it.
        init_checkpoint: the encoder round 1 starts from (Stage I's ``best_model.pt``).
        rounds: R.
        restart: ``continue`` (each round from the previous encoder, new head) or
            ``scratch`` (the iterative paper: a fresh encoder of the same architecture).
        schedule: per-round k, p, S, tau.
        train: Stage II settings of every round (labels, init and out are set per round).
        reference: also train the same encoder on the TRUE speakers (supervised reference,
            for comparison only; needs speakers in the manifest).
        final_clustering: cluster once more with the last encoder, for the NMI after the
            last round (analysis).
        head_init: start each round's AAM head at the class mean directions of the
            round's clustering input (``train.data.head_init``); false: a random head.
    """

    out: str = setting("runs/iterate", why="convenience: a run folder under ./runs")
    data: str | None = setting(
        None, why="null: no default corpus; give a corpus folder (--data) or utterances"
    )
    allow_outside_paths: bool = setting(
        False,
        why="a corpus folder's text files may not name audio outside it unless you say so "
        "(safety: the files' text decides what is read)",
    )
    utterances: str | None = setting(
        None, why="null: the manifest imported from data; give one when data is not a folder"
    )
    dev_trials: str | None = setting(
        None, why="null: the corpus folder's trials/dev.txt; with utterances, give dev and/or test"
    )
    test_trials: str | None = setting(
        None, why="null: the corpus folder's trials/test.txt; with utterances, give dev and/or test"
    )
    init_checkpoint: str | None = setting(
        None, why="null: there is no default encoder; give Stage I's best_model.pt (--init)"
    )
    rounds: int = setting(
        2,
        ge=1,
        why="small enough for CPUs: two rounds (as the demo) show whether another round helps; "
        "the LGL paper runs 5 (configs/iterate_lgl.yaml)",
    )
    restart: Literal["continue", "scratch"] = setting(
        "continue",
        why="DESIGN.md's default: keep the previous encoder, new head (cluster ids change); "
        "scratch is the iterative paper's",
    )
    schedule: Schedule = setting(
        factory=Schedule, why="Schedule's defaults; each schedule.* setting says why its own"
    )
    cluster: ClusterSpec = setting(
        factory=ClusterSpec, why="ClusterSpec's defaults; each cluster.* setting says why its own"
    )
    train: Stage2Config = setting(
        factory=lambda: Stage2Config(gate=GateSpec(name="lgl", warmup_epochs=1)),
        why="Stage II's defaults with the LGL paper's gate, closing after one ordinary epoch "
        "on all pseudo labels",
    )
    reference: bool = setting(
        False,
        why="comparison only: needs the true speakers, which an unlabelled corpus lacks, and "
        "costs one more training run",
    )
    final_clustering: bool = setting(
        True, why="the NMI after the last round needs it (analysis); one more k-means run"
    )
    head_init: bool = setting(
        True,
        why="first loss ~4.8 instead of ~12.7, train accuracy 65 % instead of 1 % after "
        "epoch 1 (docs/stage2.md, one 40-speaker run)",
    )
    tracking_uri: str | None = setting(
        None, why="null: MLFLOW_TRACKING_URI, else a SQLite store under out (no server needed)"
    )
    experiment: str = setting("raysv-iterate", why="one MLflow experiment per command, named so")
    run_name: str = setting(
        "iterate", why="the command's name: the parent run of the rounds' nested runs"
    )
    parent_run_id: str | None = setting(
        None, why="null: a top-level MLflow run; raysv tune nests its round trials under its own"
    )

    def __post_init__(self):
        check_run_folder(self.out)
        # keys of train that each round sets itself: a value given there would be ignored
        set_train = set_by_rounds(self.train)
        if set_train:
            key, by = set_train[0]
            raise ValueError(f"train.{key} is set by each round from {by}; remove it")


# train.<key> -> what each round of raysv iterate sets it from
SET_BY_ROUNDS = {
    "out": "out (<out>/round<r>/train)",
    "run_name": "the round (round<r>)",
    "init_checkpoint": "init_checkpoint, then the previous round's best_model.pt",
    "model": "the checkpoint it starts from",
    "data.n_mels": "the checkpoint it starts from",
    "data.labels": "the round's clustering",
    "data.utterances": "the training pool",
    "data.dev_trials": "dev_trials (or the corpus folder)",
    "data.test_trials": "nothing (rounds score test trials after training)",
    "data.head_init": "the round's embeddings (head_init: false turns it off)",
    "gate.tau": "schedule.tau",
    "gate.share": "schedule.tau: auto",
    "tracking_uri": "tracking_uri",
    "experiment": "experiment",
    "parent_run_id": "the iterate run",
}


def set_by_rounds(train: Stage2Config) -> list[tuple[str, str]]:
    """``(key, source)`` of each key in :data:`SET_BY_ROUNDS` whose value in ``train``
    differs from :class:`Stage2Config`'s default (it would be silently replaced)."""
    return [(k, SET_BY_ROUNDS[k]) for k in changed_keys(train, Stage2Config(), SET_BY_ROUNDS)]


def split_manifest(
    utterances: str, trials: dict[str, str], folder: str, train: str | None = None
) -> dict:
    """Write ``pool.parquet`` (the training pool) and ``eval.parquet`` (utterances trials name).

    The pool is ``train`` (a corpus folder's training rows, which already leave
    out the trial speakers) or ``utterances``, less every utterance a trial list
    names (:func:`raysv.data.holdout.training_rows`). Returns their paths (and
    ``manifest``: the full one) and the counts ``train_utterances`` (the pool)
    and ``held_out_utterances`` (all others). Raises ManifestError if the pool is empty.
    """
    os.makedirs(folder, exist_ok=True)
    utts = fs.read_table(utterances)
    pool, _ = training_rows(
        fs.read_table(train) if train else utts,
        trials.values(),
        train or utterances,
        what=None,  # logged below with what the trials hold out of the whole manifest
    )
    named = trial_utt_ids(trials.values())
    held = utts.filter(pc.is_in(utts["utt_id"], pa.array(sorted(named), pa.string())))
    log.info(
        "Stage II: a pool of %d training utterances; %d named by the trials held out",
        pool.num_rows,
        held.num_rows,
    )
    paths = {
        "manifest": utterances,
        "pool": os.path.join(folder, "pool.parquet"),
        "eval": os.path.join(folder, "eval.parquet"),
    }
    pq.write_table(pool, paths["pool"])
    pq.write_table(held, paths["eval"])
    paths["train_utterances"] = pool.num_rows
    paths["held_out_utterances"] = utts.num_rows - pool.num_rows
    return paths


def _manifests(cfg: IterateConfig, out: str) -> tuple[str, dict[str, str], str | None]:
    """(all utterances, trials by split, training rows or None) of the run's data."""
    if cfg.data:
        from raysv.data.corpus import prepare_corpus, refuse_stale

        man, imported = prepare_corpus(
            cfg.data, os.path.join(out, "manifests"), allow_outside=cfg.allow_outside_paths
        )
        # every round's folder, also of an earlier run with more rounds (inputs/ is
        # written again at each start)
        rounds = {f"round{r}" for r in range(cfg.rounds + 1)}
        if os.path.isdir(out):
            rounds |= {e for e in os.listdir(out) if re.fullmatch(r"round[0-9]+", e)}
        results = ("reference", "final_labels", "summary.json", "mlflow_run_id")
        refuse_stale(imported, out, (*sorted(rounds), *results), "iterate")
        return man.utterances, dict(man.trials), man.train
    if not cfg.utterances:
        raise ConfigError("give data (a corpus folder) or utterances (a manifest) to iterate on")
    trials = {
        s: getattr(cfg, f"{s}_trials") for s in ("dev", "test") if getattr(cfg, f"{s}_trials")
    }
    return cfg.utterances, trials, None


def _json(path: str) -> dict | None:
    from raysv.data.outputs import read_json

    return read_json(path)


def _embed_and_score(
    checkpoint: str,
    split: dict[str, str],
    trials: dict[str, str],
    folder: str,
    false_accepts: float = 0.02,
) -> dict:
    """Embed pool and held-out utterances with ``checkpoint``; score the trials.

    The dev split's entry also holds ``merge_threshold``: automatic k's merge
    threshold for clustering these embeddings
    (:func:`raysv.clustering.auto_k.merge_threshold` of the dev trials' plain
    cosine scores, uncentred like the clustering).
    """
    from raysv.clustering.auto_k import merge_threshold
    from raysv.embedding.extract import embed_manifest
    from raysv.embedding.torch_embedder import TorchEmbedder
    from raysv.evaluation.evaluate import centre_of, evaluate

    done = _json(os.path.join(folder, "_scores.json"))
    for part in ("pool", "eval"):
        embed_manifest(
            split[part], os.path.join(folder, part), TorchEmbedder, {"checkpoint": checkpoint}
        )
    if (
        done is not None
        and ("dev" not in trials or done.get("dev", {}).get("merge_false_accepts") == false_accepts)
        and all("centre_rows" in done.get(s, {}) for s in trials)  # scored on today's rule
    ):
        return done
    scores = {}
    # The centre of every score: the mean embedding of the training pool (issue #24).
    centre, rows = centre_of(os.path.join(folder, "pool"), count=True)
    for s, uri in trials.items():
        r = evaluate(uri, os.path.join(folder, "eval"), split["eval"], centre=centre)
        scores[s] = {k: v for k, v in r.items() if k != "skipped_examples"}
        scores[s]["centre_rows"] = rows  # pool embeddings averaged into the centre
        if s == "dev":  # calibrates automatic k; test trials never do
            # plain cosine, as the clustering compares the pool's embeddings (not centred)
            plain = evaluate(uri, os.path.join(folder, "eval"), split["eval"], keep_scores=True)
            scores[s]["merge_threshold"] = merge_threshold(
                plain["scores"], plain["labels"], false_accepts
            )
            scores[s]["merge_false_accepts"] = false_accepts
    write_json_atomic(os.path.join(folder, "_scores.json"), scores)
    return scores


def _cluster(
    cfg: IterateConfig, emb: str, folder: str, r: int, sched: dict, pool: str, scores: dict
) -> dict:
    from raysv.clustering.driver import cluster

    done = _json(os.path.join(folder, "_summary.json"))
    if done is not None:
        return done
    threshold = scores.get("dev", {}).get("merge_threshold")
    if sched["k"] == "auto" and threshold is None:
        log.warning("[round %d] no dev trials: k is chosen by the silhouette rule", r)
    return cluster(
        emb,
        folder,
        sched["k"],
        cfg.cluster.kmeans(),
        shards=cfg.cluster.shards,
        device=cfg.cluster.device,
        drop_fraction=sched["drop_fraction"],
        min_cluster_size=sched["min_cluster_size"],
        round_=r,
        manifest=pool,
        plots=True,
        merge_threshold=threshold,
    )


def _train(
    cfg: IterateConfig,
    r: int,
    init: str,
    labels: str,
    manifest: str,
    trials,
    tau,
    parent,
    uri,
    embeddings: str,
    callbacks=(),
):
    """Round ``r``'s Stage II run; its AAM head starts at the class directions of
    ``embeddings`` (the clustering input, made by ``init``: see ``data.head_init``).
    ``callbacks``: Ray Train callbacks of the run (a sweep's round trial reports its
    epochs to Ray Tune with one)."""
    from raysv.training.stage2 import run_train

    folder = os.path.join(os.path.abspath(cfg.out), f"round{r}", "train")
    done = _json(os.path.join(folder, "summary.json"))
    if done is not None:
        log.info("[round %d] training already complete in %s", r, folder)
        return done
    tcfg = replace(
        cfg.train,
        out=folder,
        run_name=f"round{r}",
        data=replace(
            cfg.train.data,
            labels=labels,
            utterances=manifest,  # labels pick the pool's rows; trials resolve against all
            dev_trials=trials.get("dev"),
            test_trials=None,
            head_init=embeddings if cfg.head_init else None,
        ),
        gate=_round_gate(cfg.train.gate, r, tau),
        tracking_uri=uri,
        experiment=cfg.experiment,
        parent_run_id=parent,
    )
    tcfg = _with_init(tcfg, init, cfg.restart)
    return run_train(tcfg, callbacks=callbacks)


def _round_gate(gate: GateSpec, r: int, tau) -> GateSpec:
    """Round ``r``'s gate: LGL's fixed ``tau``, or (``auto``) the share it lets through."""
    if tau == "auto":
        return replace(gate, share=lgl_share(r))
    return replace(gate, tau=tau, share=None)


def _with_init(tcfg: Stage2Config, init: str, restart: str) -> Stage2Config:
    """``continue``: start from ``init``'s weights; ``scratch``: same architecture, fresh weights."""
    from raysv.training.stage2 import adopt_encoder

    tcfg = adopt_encoder(tcfg, init, weights=restart == "continue")
    if restart != "continue":  # fresh weights: the old encoder's class directions don't apply
        tcfg = replace(tcfg, data=replace(tcfg.data, head_init=None))
    return tcfg


def _round_metrics(r: int, cl: dict, tr: dict, scores: dict) -> dict:
    """Flat metrics of one round for MLflow and the summary."""
    m: dict = {
        "round": r,
        "k": cl["k"],
        "k_auto": "auto_k" in cl,
        "kept_share": cl["kept_share"],
        "clusters": cl["clusters_after_purification"],
        "cluster_objective": cl["objective"],
        "train_epochs": tr["epochs"],
    }
    # which encoder the round kept: -1 = no epoch beat the incoming one on dev (kept)
    for key in ("best_epoch", "init_dev_eer", "best_dev_eer"):
        if tr.get(key) is not None:
            m[f"train.{key}"] = tr[key]
    epoch_eers = [h["dev_eer"] for h in tr.get("history") or [] if h.get("dev_eer") is not None]
    if epoch_eers:  # the best any trained epoch reached (kept or not)
        m["train.best_epoch_dev_eer"] = min(epoch_eers)
    if "purification" in cl:  # the p and S used (given, or derived: auto)
        m["purification.p"] = cl["purification"]["p"]
        m["purification.S"] = cl["purification"]["S"]
    an = cl.get("analysis") or {}
    for part in ("all", "kept"):
        if isinstance(an.get(part), dict):
            for key in ("nmi", "ari", "reliable_share"):
                m[f"{part}.{key}"] = an[part][key]
    hist = tr.get("history") or []
    gated = [h for h in hist if "gate_tau" in h]  # epochs with a closed gate
    last = (gated or hist or [{}])[-1]
    for key in (
        "gate_pass_share",
        "gate_relabel_share",
        "reliable_share_passed",
        "reliable_share_rejected",
        "reliable_share_all",
        "gate_tau",
    ):
        if key in last:
            m[f"gate.{key}"] = last[key]
    for s, v in scores.items():
        for key in ("eer", "min_dcf_0.01", "min_dcf_0.05"):
            m[f"{s}.{key}"] = v[key]
    return m


@on_object_storage("raysv iterate")  # --out s3://...: a working copy kept in the bucket
def run_iterate(cfg: IterateConfig, *, callbacks=()) -> dict:
    """Run R rounds; returns the summary (also ``<out>/summary.json``). ``callbacks``:
    Ray Train callbacks of every round's training run (``raysv tune``'s round trials)."""
    from raysv.tracking import mlflow_tracking as tracking

    t0 = time.monotonic()
    out = os.path.abspath(cfg.out)
    claim_run(out, "raysv iterate")
    if not cfg.init_checkpoint:
        raise ConfigError("iterate needs init_checkpoint: the Stage I encoder (best_model.pt)")
    from raysv.models.checkpoint import read_checkpoint

    read_checkpoint(cfg.init_checkpoint)  # a bad path fails here, before any work
    cfg.cluster.kmeans()
    from raysv.clustering.driver import check_auto_purification

    for r in range(1, cfg.rounds + 1):  # and each round's purification p and S
        sched = cfg.schedule.at(r)
        check_auto_purification(sched["drop_fraction"], sched["min_cluster_size"])
    utterances, trials, train = _manifests(cfg, out)
    if "test" not in trials and "dev" not in trials:
        raise ConfigError("iterate needs trial lists (dev and/or test) to evaluate each round")
    split = split_manifest(utterances, trials, os.path.join(out, "inputs"), train)
    uri = cfg.tracking_uri or tracking.default_tracking_uri(out)
    reference_skipped = None
    if cfg.reference:  # comparison only: needs the true speaker of every training row
        spk = pq.read_table(split["pool"], columns=["speaker"]).column("speaker")
        if spk.null_count:
            reference_skipped = (
                f"{spk.null_count} of {len(spk)} training utterances have no speaker label"
            )
            log.warning("no supervised reference: %s (it is a comparison only)", reference_skipped)
    summary: dict = {
        "out": out,
        "rounds": [],
        "trials": trials,
        "eval_manifest": split["eval"],
        "train_utterances": split["train_utterances"],
        "held_out_utterances": split["held_out_utterances"],
        "init_checkpoint": os.path.abspath(cfg.init_checkpoint),
    }
    with tracking.resumable_run(
        out, uri, cfg.experiment, cfg.run_name, to_dict(cfg), cfg.parent_run_id
    ) as parent:
        log.info("[round 0] embedding with the initial encoder and scoring trials")
        encoder = os.path.abspath(cfg.init_checkpoint)
        emb_folder = os.path.join(out, "round0", "embeddings")
        scores = _embed_and_score(
            encoder, split, trials, emb_folder, cfg.cluster.auto_k_false_accepts
        )
        summary["initial"] = scores
        tracking.log_metrics(_flat_scores(scores), step=0)
        run_store.sync()
        for r in range(1, cfg.rounds + 1):
            sched = cfg.schedule.at(r)
            rdir = os.path.join(out, f"round{r}")
            log.info(
                "[round %d/%d] k-means (k=%s) + purification (p=%s, S=%s)",
                r,
                cfg.rounds,
                sched["k"],
                sched["drop_fraction"],
                sched["min_cluster_size"],
            )
            cl = _cluster(
                cfg,
                os.path.join(emb_folder, "pool"),
                os.path.join(rdir, "labels"),
                r,
                sched,
                split["pool"],
                scores,
            )
            log.info(
                "[round %d/%d] training on pseudo labels (gate %s, tau=%s)",
                r,
                cfg.rounds,
                cfg.train.gate.name,
                sched["tau"] if sched["tau"] != "auto" else f"auto: share {lgl_share(r)}",
            )
            tr = _train(
                cfg,
                r,
                encoder,
                os.path.join(rdir, "labels"),
                split["manifest"],
                trials,
                sched["tau"],
                parent,
                uri,
                os.path.join(emb_folder, "pool"),
                callbacks,
            )
            encoder = tr["best_model"]
            emb_folder = os.path.join(rdir, "embeddings")
            log.info(
                "[round %d/%d] embedding with the new encoder and scoring trials", r, cfg.rounds
            )
            scores = _embed_and_score(
                encoder, split, trials, emb_folder, cfg.cluster.auto_k_false_accepts
            )
            m = _round_metrics(r, cl, tr, scores)
            tracking.log_metrics_to(uri, tr["mlflow"]["run_id"], m)
            labels_dir = os.path.join(rdir, "labels")
            tracking.log_files_to(
                uri,
                tr["mlflow"]["run_id"],
                [
                    os.path.join(labels_dir, f)
                    for f in (
                        "_sizes.png",
                        "_objective.png",
                        "_summary.json",
                        "_auto_k.json",
                        "_auto_k.png",
                    )
                ],
                "clustering",
            )
            if "auto_k" in cl:  # the evidence for k: the rule's table
                from raysv.clustering.driver import auto_k_columns

                x, ys = auto_k_columns(cl["auto_k"])
                tracking.log_history(cl["auto_k"]["table"], x, ys, f"round{r}.auto_k.")
            tracking.log_metrics({k: v for k, v in m.items() if k != "round"}, step=r)
            summary["rounds"].append(
                {
                    **m,
                    "labels": os.path.join(rdir, "labels"),
                    "encoder": encoder,
                    "train_seconds": tr.get("seconds"),
                }
            )
            run_store.sync()  # a run folder on object storage: this round is in the bucket
        if cfg.final_clustering:
            sched = cfg.schedule.at(cfg.rounds + 1)
            cl = _cluster(
                cfg,
                os.path.join(emb_folder, "pool"),
                os.path.join(out, "final_labels"),
                cfg.rounds + 1,
                sched,
                split["pool"],
                scores,
            )
            summary["final_clustering"] = {
                k: cl[k] for k in ("k", "kept_share", "analysis") if k in cl
            }
            an = cl.get("analysis") or {}
            if isinstance(an.get("all"), dict):
                tracking.log_metrics({"final.nmi": an["all"]["nmi"], "final.ari": an["all"]["ari"]})
        if cfg.reference and reference_skipped is None:
            summary["reference"] = _reference(cfg, split, trials, parent, uri)
        elif cfg.reference:
            summary["reference_skipped"] = reference_skipped
        summary["final_encoder"] = encoder
        summary["seconds"] = round(time.monotonic() - t0, 1)
        tracking.log_dict(summary, "summary.json")
    summary["mlflow"] = {"tracking_uri": uri, "run_id": parent}
    write_json_atomic(os.path.join(out, "summary.json"), summary, default=float)
    return summary


def _flat_scores(scores: dict) -> dict:
    return {
        f"{s}.{k}": v[k] for s, v in scores.items() for k in ("eer", "min_dcf_0.01", "min_dcf_0.05")
    }


def _reference(cfg: IterateConfig, split: dict, trials: dict, parent: str, uri: str) -> dict:
    """Supervised reference: the same training on the TRUE speakers (comparison only)."""
    from raysv.training.stage2 import run_train, speaker_label_table

    folder = os.path.join(os.path.abspath(cfg.out), "reference")
    done = _json(os.path.join(folder, "_result.json"))
    if done is not None:
        return done
    labels = speaker_label_table(split["pool"], os.path.join(folder, "labels"))
    tcfg = replace(
        cfg.train,
        out=os.path.join(folder, "train"),
        run_name="reference",
        data=replace(
            cfg.train.data,
            labels=labels,
            utterances=split["manifest"],
            dev_trials=trials.get("dev"),
            test_trials=None,
            # the initial encoder's embeddings (round 0), as round 1 starts from
            head_init=os.path.join(os.path.abspath(cfg.out), "round0", "embeddings", "pool")
            if cfg.head_init
            else None,
        ),
        gate=GateSpec(name="none"),
        tracking_uri=uri,
        experiment=cfg.experiment,
        parent_run_id=parent,
    )
    tcfg = _with_init(tcfg, os.path.abspath(cfg.init_checkpoint), cfg.restart)
    tr = run_train(tcfg)
    scores = _embed_and_score(tr["best_model"], split, trials, os.path.join(folder, "embeddings"))
    res = {"scores": scores, "epochs": tr["epochs"], "encoder": tr["best_model"]}
    write_json_atomic(os.path.join(folder, "_result.json"), res)
    return res
