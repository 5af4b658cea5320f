"""Stage II (``raysv train``): AAM-softmax on pseudo labels with a loss gate.

# [1] inputs are read and checked before any worker starts (clear errors);
# [2] the dataset is a Ray Dataset of labelled metadata rows, cropped per epoch.
The TorchTrainer, the run and its MLflow record are the shared driver's
(``raysv.training.driver.train_stage``, the same scaling, failure and resume rules
as Stage I); the workers run ``stage2_worker``'s objective in the shared skeleton.

Speaker labels, where the manifest has them, are read only to write the
analysis table (``true_label.npy``) that rank 0 uses for reporting the
reliable-label share among passed and rejected samples; never for training.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysv.config import to_dict
from raysv.data import fs, ingest
from raysv.data.holdout import training_rows
from raysv.data.outputs import claim_run, ensure_folder, write_json_atomic
from raysv.data.problems import Problems
from raysv.data.run_store import on_object_storage
from raysv.data.schema import conform
from raysv.errors import ConfigError, RaysvError, one_line
from raysv.training import data as tdata
from raysv.training.config import ModelSpec
from raysv.training.driver import (
    centre_inputs,
    check_encoder,
    evaluate_encoders,
    last_state,
    train_stage,
    trial_inputs,
)
from raysv.training.stage2_config import Stage2Config

log = logging.getLogger("raysv")


def _same(a, b) -> bool:
    """Equal as YAML would write them (a tuple and a list are the same setting)."""
    dump = lambda x: json.dumps(to_dict(x), sort_keys=True, default=str)  # noqa: E731
    return dump(a) == dump(b)


def adopt_encoder(cfg: Stage2Config, checkpoint: str, weights: bool = True) -> Stage2Config:
    """Take the encoder (name, kwargs, n_mels) of ``checkpoint``; its weights too if ``weights``
    (``False``: the same architecture trained from scratch)."""
    from raysv.models.checkpoint import read_checkpoint

    path = os.path.abspath(checkpoint)
    _, spec = read_checkpoint(path)
    model = ModelSpec(name=spec["name"], kwargs=spec["kwargs"])
    # the default ModelSpec stands for "not given" (a config cannot tell it from the
    # default given): that one, and only that one, is replaced without a word
    if not _same(cfg.model, ModelSpec()) and not _same(cfg.model, model):
        raise ConfigError(
            f"model {to_dict(cfg.model)} differs from the encoder of {checkpoint} "
            f"({to_dict(model)}), which is the one trained; remove model from the config"
        )
    if cfg.data.n_mels is not None and cfg.data.n_mels != spec["n_mels"]:
        raise ConfigError(
            f"data.n_mels {cfg.data.n_mels} differs from the {spec['n_mels']} of {checkpoint}'s "
            "encoder, which is the one trained; remove data.n_mels from the config"
        )
    return replace(
        cfg,
        init_checkpoint=path if weights else None,
        model=model,
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


def class_directions(
    labels: np.ndarray, n_classes: int, rows: np.ndarray, emb: np.ndarray
) -> tuple[np.ndarray, int]:
    """Mean direction of each class's embeddings: the AAM head's starting weights.

    ``labels (n,)`` class of each training row; ``rows (n,)`` that row's index into
    ``emb (m, D)`` or -1 when it has no embedding. Returns ``(weights (C, D) float32,
    classes without any embedding)``; such classes (and only they) get a zero row,
    which the caller replaces with its random initialisation.
    """
    have = rows >= 0
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sums = np.zeros((n_classes, emb.shape[1]), np.float64)
    np.add.at(sums, labels[have], unit[rows[have]])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    empty = norms[:, 0] < 1e-12
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32), int(empty.sum())


def head_weights(table: pa.Table, n_classes: int, embeddings: str, out: str) -> str:
    """``data.head_init``: class directions from an embeddings table, saved to ``out`` (.npy)."""
    from raysv.evaluation.scoring import embedding_matrix

    ids, emb = embedding_matrix(fs.read_table(embeddings), embeddings)
    index = {u: i for i, u in enumerate(ids)}
    rows = np.array([index.get(u, -1) for u in table.column("utt_id").to_pylist()], np.int64)
    if not (rows >= 0).any():
        raise ConfigError(
            f"data.head_init: {embeddings} holds none of the {table.num_rows} training utterances"
        )
    weights, empty = class_directions(table.column("label").to_numpy(), n_classes, rows, emb)
    log.info(
        "AAM head starts at the class mean directions of %s (%d of %d rows embedded%s)",
        embeddings,
        int((rows >= 0).sum()),
        table.num_rows,
        f"; {empty} classes random" if empty else "",
    )
    np.save(out, weights)
    return out


def prepare_inputs(cfg: Stage2Config) -> dict:
    """[1] Training table, class count, eval inputs and (analysis) truth, under ``<out>/inputs``."""
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
            res[split] = trial_inputs(trials, utts, folder, split)
    # Evaluation audio is never trained on: labelled rows that a trial list names are dropped.
    train_utts, held = training_rows(  # the counts are logged below, once
        utts, [res[s]["trials"] for s in res], d.utterances, what=None
    )
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
    # the rows trained on: data.utterances may hold test-trial audio that only the
    # dev trials' hold-out above leaves in (iterate passes its whole manifest)
    res["centre"] = centre_inputs(table, folder, cfg.train.seed)
    res.update(
        table=table,
        unit="utterances",
        n_classes=n_classes,
        counts={"train_utterances": table.num_rows, "held_out_utterances": held.num_rows},
    )
    if d.head_init:
        res["head_init"] = head_weights(
            table, n_classes, d.head_init, os.path.join(folder, "head_init.npy")
        )
    if d.analysis:
        truth = true_labels(table, utts)
        if truth is not None:
            res["true_label"] = os.path.join(folder, "true_label.npy")
            np.save(res["true_label"], truth)
    return res


def input_spec(cfg: Stage2Config) -> tdata.InputSpec:
    """Stage II's :class:`~raysv.training.data.InputSpec`: one labelled crop per row."""
    return tdata.InputSpec(
        mode="labelled",
        crop_seconds=cfg.data.crop_seconds,
        n_mels=cfg.data.n_mels,
        augment=cfg.data.augment,
        task_cpus=cfg.train.data_task_cpus,
        epochs=cfg.train.epochs,
        seed=cfg.train.seed,
        spare_epochs=tdata.spare_epochs(cfg.train.epochs, cfg.train.max_unreadable_share),
    )


@on_object_storage("raysv train")  # --out s3://...: a working copy kept in the bucket
def run_train(cfg: Stage2Config, *, callbacks=()) -> dict:
    """Run Stage II training; returns the summary (also ``<out>/summary.json``)."""
    from raysv.training.stage2_worker import build_classifier, train_loop
    from raysv.training.stream import build_dataset

    t0 = time.monotonic()
    cfg = resolve(cfg)
    # bad encoder settings (model.kwargs, n_mels) fail here in one line, before any folder or Ray
    check_encoder(cfg.model.name, cfg.data.n_mels, cfg.model.kwargs)
    out = os.path.abspath(cfg.out)
    claim_run(out, "raysv train")  # a new folder, or one of ours to resume
    inputs = prepare_inputs(cfg)  # [1]
    try:  # the AAM head on the encoder's output (and its start, data.head_init), once before Ray
        build_classifier(cfg, inputs["n_classes"], inputs.get("head_init"))
    except RaysvError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"model {cfg.model.name!r} + head (margin {cfg.head.margin}, scale {cfg.head.scale}, "
            f"{inputs['n_classes']} classes): {one_line(exc)}"
        ) from exc
    summary = train_stage(
        cfg,
        inputs,
        train_loop,
        lambda shards, ledger: build_dataset(shards, input_spec(cfg), ledger),  # [2]
        lambda result: _finish(cfg, inputs, result, out),
        label=f"Stage II ({cfg.run_name})",
        what=f"{cfg.model.name} + AAM head ({inputs['n_classes']} classes), gate {cfg.gate.name}",
        run_extra={
            "n_classes": inputs["n_classes"],
            "true_label": inputs.get("true_label"),
            "head_init": inputs.get("head_init"),
        },
        t0=t0,
        callbacks=callbacks,
    )
    summary.update(n_classes=inputs["n_classes"], train_utterances=inputs["table"].num_rows)
    write_json_atomic(os.path.join(out, "summary.json"), summary, default=float)
    return summary


def _finish(cfg: Stage2Config, inputs: dict, result, out: str) -> dict:
    """Save the best encoder; evaluate the initial encoder and the best one on dev/test."""
    from raysv.models import build_encoder
    from raysv.models.checkpoint import encoder_spec, save_encoder

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
        "train_seconds": round(float(st.get("seconds", 0.0)), 1),
        **({"out_of_time": True} if st.get("out_of_time") else {}),
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
