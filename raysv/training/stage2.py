"""Driver of Stage II (``raysv train``): AAM-softmax on pseudo labels with a loss gate.

# [1] inputs are read and checked before any worker starts (clear errors);
# [2] the dataset is a Ray Dataset of labelled metadata rows, cropped per epoch;
# [3] the TorchTrainer is Stage I's (same scaling, failure and resume rules).

Speaker labels, where the manifest has them, are read only to write the
analysis table (``true_label.npy``) that rank 0 uses for reporting the
reliable-label share among passed and rejected samples; never for training.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from raysv.config import to_dict
from raysv.data import fs, ingest
from raysv.data.holdout import training_rows
from raysv.data.outputs import claim_run, ensure_folder, write_json_atomic
from raysv.data.problems import Problems
from raysv.data.schema import conform
from raysv.errors import ConfigError, RaysvError
from raysv.training import data as tdata
from raysv.training.config import ModelSpec
from raysv.training.stage2_config import Stage2Config

log = logging.getLogger("raysv")


def adopt_encoder(cfg: Stage2Config, checkpoint: str, weights: bool = True) -> Stage2Config:
    """Take the encoder (name, kwargs, n_mels) of ``checkpoint``; its weights too if ``weights``
    (``False``: the same architecture trained from scratch)."""
    from raysv.models.checkpoint import read_checkpoint

    path = os.path.abspath(checkpoint)
    _, spec = read_checkpoint(path)
    return replace(
        cfg,
        init_checkpoint=path if weights else None,
        model=ModelSpec(name=spec["name"], kwargs=spec["kwargs"]),
        data=replace(cfg.data, n_mels=spec["n_mels"]),
    )


def resolve(cfg: Stage2Config) -> Stage2Config:
    """Fill the encoder and ``n_mels`` from ``init_checkpoint`` (they must come from it)."""
    if not cfg.init_checkpoint:
        return replace(cfg, data=replace(cfg.data, n_mels=cfg.data.n_mels or 40))
    return adopt_encoder(cfg, cfg.init_checkpoint)


def true_labels(table: pa.Table, utts: pa.Table) -> np.ndarray | None:
    """Analysis only: per training row, the pseudo-label id mapped to its true speaker.

    Uses the Hungarian cluster -> speaker mapping over the training rows; rows
    whose speaker has no cluster get -1. None if the manifest has no speakers.
    """
    from raysv.evaluation.metrics import cluster_speaker_mapping

    if "speaker" not in utts.column_names:
        return None
    spk_of = dict(
        zip(utts.column("utt_id").to_pylist(), utts.column("speaker").to_pylist(), strict=True)
    )
    speakers = [spk_of.get(u) for u in table.column("utt_id").to_pylist()]
    if any(s is None for s in speakers):
        return None
    labels = table.column("label").to_numpy()
    mapping = cluster_speaker_mapping(labels, np.asarray(speakers))
    cluster_of = {spk: c for c, spk in mapping.items()}
    return np.array([cluster_of.get(s, -1) for s in speakers], dtype=np.int64)


def prepare_inputs(cfg: Stage2Config) -> dict:
    """[1] Training table, class count, eval inputs and (analysis) truth, under ``<out>/inputs``."""
    from raysv.training.pretrain import _trial_inputs

    d = cfg.data
    if not d.labels or not d.utterances:
        raise ConfigError(
            "Stage II needs data.labels (a pseudo-label table from raysv cluster) "
            "and data.utterances (the manifest)"
        )
    out = os.path.abspath(cfg.out)
    folder = os.path.join(out, "inputs")
    os.makedirs(folder, exist_ok=True)
    problems = Problems()
    utts = ingest.check_utterances(fs.read_table(d.utterances), d.utterances, problems)
    problems.log_summary()
    labels = conform(fs.read_table(d.labels), "pseudo_labels", d.labels)
    res: dict = {}
    for split in ("dev", "test"):
        trials = getattr(d, f"{split}_trials")
        if trials:
            res[split] = _trial_inputs(trials, utts, folder, split)
    # Evaluation audio is never trained on: labelled rows that a trial list names are dropped.
    train_utts, held = training_rows(utts, [res[s]["trials"] for s in res], d.utterances, None)
    in_trials = pc.is_in(labels["utt_id"], held["utt_id"])
    dropped = int(pc.sum(pc.and_(in_trials, labels["kept"])).as_py() or 0)
    if dropped:
        log.warning(
            "%s: %d labelled utterances are named by the dev/test trials; not trained on",
            d.labels,
            dropped,
        )
    table = tdata.labelled_table(labels.filter(pc.invert(in_trials)), train_utts, d.labels)
    log.info(
        "Stage II training on %d labelled utterances; %d named by trials held out",
        table.num_rows,
        held.num_rows,
    )
    n_classes = int(table.column("label").to_numpy().max()) + 1
    if n_classes < 2:
        raise ConfigError(f"{d.labels}: the kept pseudo labels form {n_classes} class; need >= 2")
    if cfg.train.batch_size > table.num_rows:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) is larger than the data "
            f"({table.num_rows} labelled utterances)"
        )
    res.update(
        table=table,
        n_classes=n_classes,
        counts={"train_utterances": table.num_rows, "held_out_utterances": held.num_rows},
    )
    if d.analysis:
        truth = true_labels(table, utts)
        if truth is not None:
            res["true_label"] = os.path.join(folder, "true_label.npy")
            np.save(res["true_label"], truth)
    return res


def run_train(cfg: Stage2Config) -> dict:
    """Run Stage II training; returns the summary (also ``<out>/summary.json``)."""
    from raysv.runtime import ensure_ray
    from raysv.tracking import mlflow_tracking as tracking
    from raysv.training import unreadable
    from raysv.training.pretrain import (
        _resources,
        build_trainer,
        check_encoder,
        fit,
        unreadable_summary,
    )
    from raysv.training.stage2_worker import build_classifier, train_loop

    t0 = time.monotonic()
    cfg = resolve(cfg)
    # bad encoder settings (model.kwargs, n_mels) fail here in one line, before any folder or Ray
    check_encoder(cfg.model.name, cfg.data.n_mels, cfg.model.kwargs)
    out = os.path.abspath(cfg.out)
    claim_run(out, "raysv train")  # a new folder, or one of ours to resume
    inputs = prepare_inputs(cfg)  # [1]
    try:  # the AAM head on the encoder's output, built once before Ray
        build_classifier(cfg, inputs["n_classes"])
    except RaysvError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"model {cfg.model.name!r} + head (margin {cfg.head.margin}, scale {cfg.head.scale}, "
            f"{inputs['n_classes']} classes): {' '.join(str(exc).split())}"
        ) from exc
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    ensure_ray()
    shards = tdata.write_shards(
        inputs["table"], os.path.join(out, "inputs", "train"), seed=cfg.train.seed
    )
    ledger = unreadable.start_ledger(cfg.train.max_unreadable_share)  # rows skipped as unreadable
    dataset = tdata.build_dataset(  # [2]
        shards,
        "labelled",
        1,
        cfg.data.crop_seconds,
        cfg.data.n_mels,
        cfg.data.augment,
        task_cpus=cfg.train.data_task_cpus,
        epochs=cfg.train.epochs,
        seed=cfg.train.seed,
        spare_epochs=tdata.spare_epochs(cfg.train.epochs, cfg.train.max_unreadable_share),
        ledger=ledger,
    )
    resources, threads = _resources(cfg)
    tracking_uri = cfg.tracking_uri or tracking.default_tracking_uri(out)
    with tracking.resumable_run(
        out, tracking_uri, cfg.experiment, cfg.run_name, to_dict(cfg), cfg.parent_run_id
    ) as run_id:
        run = {
            "out": out,
            "n_classes": inputs["n_classes"],
            "dev_utts": inputs.get("dev", {}).get("utts"),
            "dev_trials": inputs.get("dev", {}).get("trials"),
            "true_label": inputs.get("true_label"),
            "mlflow_run_id": run_id,
            "tracking_uri": tracking_uri,
            "torch_threads": threads,
            "steps_per_epoch": tdata.steps_per_epoch(
                inputs["table"].num_rows, cfg.train.num_workers, cfg.train.per_worker_batch
            ),
            "ledger": ledger,
            "unit": "utterances",
            "token": uuid.uuid4().hex,  # this invocation (the ledger's counts are its own)
        }
        trainer = build_trainer(  # [3]
            train_loop,
            {"cfg": to_dict(cfg), "run": run},
            cfg.train,
            resources,
            cfg.run_name,
            out,
            dataset,
        )
        log.info(
            "Stage II: %s + AAM head (%d classes) on %d utterances, gate %s, %d worker(s) x %s",
            cfg.model.name,
            inputs["n_classes"],
            inputs["table"].num_rows,
            cfg.gate.name,
            cfg.train.num_workers,
            resources,
        )
        result = fit(trainer)
        summary = _finish(cfg, inputs, result, out)
        summary.update(unreadable_summary(ledger))
        tracking.log_metrics(
            {f"final.{k}": v for k, v in summary["final"].items()}
            | {"final.unreadable_rows": summary["unreadable_rows"]}
        )
        tracking.log_artifact(os.path.join(out, "config.yaml"))
    summary.update(
        mlflow={"tracking_uri": tracking_uri, "run_id": run_id},
        seconds=round(time.monotonic() - t0, 1),
        out=out,
        n_classes=inputs["n_classes"],
        train_utterances=inputs["table"].num_rows,
    )
    write_json_atomic(os.path.join(out, "summary.json"), summary, default=float)
    return summary


def _finish(cfg: Stage2Config, inputs: dict, result, out: str) -> dict:
    """Save the best encoder; evaluate the initial encoder and the best one on dev/test."""
    from raysv.models import build_encoder
    from raysv.models.checkpoint import encoder_spec, save_encoder
    from raysv.training.pretrain import evaluate_encoders, last_state

    blob = last_state(result)
    st = blob["state"]
    last_encoder = {
        k[len("encoder.") :]: v for k, v in blob["model"].items() if k.startswith("encoder.")
    }
    best = st["best_model"] or last_encoder
    spec = encoder_spec(cfg.model.name, cfg.data.n_mels, cfg.model.kwargs)
    best_path = save_encoder(os.path.join(out, "best_model.pt"), best, spec, to_dict(cfg))
    trained = build_encoder(cfg.model.name, cfg.data.n_mels, **cfg.model.kwargs)
    trained.load_state_dict(best)
    models = {"best": trained}
    if cfg.init_checkpoint:
        from raysv.models.checkpoint import load_encoder

        models["init"] = load_encoder(cfg.init_checkpoint)[0]
    final = evaluate_encoders(models, inputs, cfg.data.n_mels, cfg.data.eval_max_seconds)
    return {
        "epochs": st["epoch"],
        "steps": st["step"],
        "best_dev_eer": st["best_eer"] if np.isfinite(st["best_eer"]) else None,
        "best_epoch": st.get("best_epoch", -1),
        "init_dev_eer": st.get("init_dev_eer"),
        "history": st["history"],
        "final": final,
        "best_model": best_path,
    }


def speaker_label_table(manifest: str, out: str) -> str:
    """REFERENCE ONLY: a pseudo-label-format table whose clusters are the TRUE speakers.

    For the supervised reference that shows how close the label-free pipeline
    comes; never used by the self-supervised stages. Returns the file written.
    """
    utts = fs.read_table(manifest, ["utt_id", "speaker"])
    spk = utts.column("speaker").to_pylist()
    if any(s is None for s in spk):
        raise ConfigError(f"{manifest}: the supervised reference needs a speaker for every row")
    names, ids = np.unique(np.asarray(spk), return_inverse=True)
    table = pa.table(
        {
            "utt_id": utts.column("utt_id"),
            "cluster": ids.astype(np.int64),
            "distance": np.zeros(len(ids), np.float32),
            "kept": np.ones(len(ids), bool),
            "round": np.zeros(len(ids), np.int32),
        }
    )
    ensure_folder(out, "raysv train")
    path = os.path.join(out, "speaker_labels.parquet")
    pq.write_table(conform(table, "pseudo_labels", path), path)
    return path
