"""Stage I (``raysv pretrain``): its inputs, its checks and its summary.

# [1] inputs are checked and prepared before any worker starts (clear errors):
#     the training table of dialogues or utterances, evaluation audio held out;
# [2] the dataset is a Ray Dataset of metadata rows, featurised per epoch.
The TorchTrainer, the run and its MLflow record are the shared driver's
(``raysv.training.driver.train_stage``); the workers run ``pretrain_worker``'s
objective in the shared skeleton.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pyarrow as pa

from raysv.config import to_dict
from raysv.data import fs, ingest
from raysv.data.holdout import training_rows
from raysv.data.outputs import claim_run, write_json_atomic
from raysv.data.problems import Problems
from raysv.data.run_store import on_object_storage
from raysv.errors import ConfigError, ManifestError, one_line
from raysv.models.checkpoint import encoder_spec, save_encoder
from raysv.training import data as tdata
from raysv.training.config import PretrainConfig
from raysv.training.driver import (
    centre_inputs,
    check_encoder,
    evaluate_encoders,
    last_state,
    train_stage,
    trial_inputs,
)

log = logging.getLogger("raysv")


def _manifests(cfg: PretrainConfig, out: str) -> dict:
    d = cfg.data
    if d.data is None and d.utterances is None:
        raise ConfigError(
            "no training data: give --data DIR (a corpus folder) or data.utterances in the config"
        )
    if d.data:
        from raysv.data.corpus import prepare_corpus, refuse_stale

        man, imported = prepare_corpus(
            d.data, os.path.join(out, "manifests"), allow_outside=d.allow_outside_paths
        )
        refuse_stale(
            imported, out, ("ray", "summary.json", "best_model.pt", "mlflow_run_id"), "pretrain"
        )
        truth = os.path.join(d.data, "meta", "dialogues_truth.parquet")
        return {
            "utterances": man.utterances,
            "train": man.train,
            "dialogues": man.dialogues,
            "dev_trials": man.trials.get("dev"),
            "test_trials": man.trials.get("test"),
            "truth": d.dialogue_truth or (truth if os.path.isfile(truth) else None),
        }
    return {
        "utterances": d.utterances,
        "train": None,
        "dialogues": d.dialogues,
        "dev_trials": d.dev_trials,
        "test_trials": d.test_trials,
        "truth": d.dialogue_truth,
    }


def prepare_inputs(cfg: PretrainConfig) -> dict:
    """[1] Read and check manifests, build the training table, write small eval inputs.

    Returns a dict with the training ``table`` and paths of dev/test inputs.
    Raises ManifestError/ConfigError naming the problem before Ray starts.
    """
    out = os.path.abspath(cfg.out)
    folder = os.path.join(out, "inputs")
    os.makedirs(folder, exist_ok=True)
    man = _manifests(cfg, out)
    problems = Problems()
    utts = ingest.check_utterances(fs.read_table(man["utterances"]), man["utterances"], problems)
    problems.log_summary()
    res: dict = {}
    for split in ("dev", "test"):
        if man[f"{split}_trials"]:
            res[split] = trial_inputs(man[f"{split}_trials"], utts, folder, split)
    # Evaluation audio is never trained on: a corpus folder's training rows already
    # leave out the trial speakers; any manifest loses the utterances trials name.
    train_utts = utts
    if man["train"]:
        train_utts = ingest.check_utterances(fs.read_table(man["train"]), man["train"], problems)
    train_utts, _ = training_rows(  # the counts are logged below, once
        train_utts, [res[s]["trials"] for s in res], man["train"] or man["utterances"], what=None
    )
    if cfg.data.mode == "dialogue":
        if not man["dialogues"]:
            raise ManifestError(
                "dialogue mode needs a dialogues table (data.dialogues, or dialogues.jsonl in the corpus folder)"
            )
        table = tdata.dialogue_table(
            train_utts,
            fs.read_table(man["dialogues"]),
            cfg.utterances_drawn,
            cfg.data.short_dialogues,
        )
        unit = "dialogues"
        used = int(pa.compute.sum(pa.compute.list_value_length(table["paths"])).as_py() or 0)
        if used < train_utts.num_rows:
            log.warning(
                "Stage I in dialogue mode trains on the %d utterances of %d dialogues; "
                "%d training utterances belong to no dialogue (Stage II uses them)",
                used,
                table.num_rows,
                train_utts.num_rows - used,
            )
    else:
        table = tdata.utterance_table(train_utts)
        unit = "utterances"
        used = table.num_rows
    log.info(
        "Stage I training on %d utterances; %d held out for evaluation",
        used,
        utts.num_rows - train_utts.num_rows,
    )
    if cfg.train.batch_size > table.num_rows:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) is larger than the data ({table.num_rows} {unit})"
        )
    res["centre"] = centre_inputs(train_utts, folder, cfg.train.seed)
    res.update(
        table=table,
        unit=unit,
        counts={
            "train_utterances": used,
            "held_out_utterances": utts.num_rows - train_utts.num_rows,
        },
    )
    if cfg.data.mode == "dialogue":
        # ANALYSIS ONLY (rejection AUC): which training dialogues mix speakers, from a
        # generator's truth file or, failing that, from the manifest's speakers.
        drawn = dialogue_speakers(table, utts)
        truth = None
        if man["truth"]:
            t = fs.read_table(man["truth"], ["dialogue_id", "multi_speaker"])
            lookup = dict(
                zip(
                    t.column("dialogue_id").to_pylist(),
                    t.column("multi_speaker").to_pylist(),
                    strict=True,
                )
            )
            truth = np.array(
                [bool(lookup.get(d, False)) for d in table.column("dialogue_id").to_pylist()]
            )
        elif drawn is not None:
            flat, offsets = drawn
            truth = np.array(
                [
                    len(np.unique(flat[a:b])) > 1
                    for a, b in zip(offsets[:-1], offsets[1:], strict=True)
                ]
            )
        if truth is not None:
            res["truth"] = os.path.join(folder, "truth.npy")
            np.save(res["truth"], truth)
            if drawn is not None:  # analysis only: which speakers each step's draw mixes
                res["speakers"] = os.path.join(folder, "dialogue_speakers.npz")
                np.savez(res["speakers"], flat=drawn[0], offsets=drawn[1])
    return res


def dialogue_speakers(table: pa.Table, utts: pa.Table) -> tuple[np.ndarray, np.ndarray] | None:
    """ANALYSIS ONLY: the speaker of each utterance of each training dialogue, as codes.

    ``table`` is :func:`~raysv.training.data.dialogue_table`'s (``paths``, ``starts``,
    ``ends`` lists), ``utts`` the manifest; utterances are matched on (path, start,
    end), so segments of one recording keep their own speakers. Returns
    ``(flat (sum n_d,) int32, offsets (D + 1,) int64)``: dialogue d's utterance j has
    speaker ``flat[offsets[d] + j]``. None when the manifest lacks a speaker for any
    of them. Never read by training.
    """
    if "speaker" not in utts.column_names:
        return None
    cols = [utts.column(c).to_pylist() for c in ("path", "start_s", "end_s", "speaker")]
    speaker = {(p, a, b): spk for p, a, b, spk in zip(*cols, strict=True)}
    keys = zip(
        *(pa.compute.list_flatten(table[c]).to_pylist() for c in ("paths", "starts", "ends")),
        strict=True,
    )
    names = [speaker.get(k) for k in keys]
    if any(n is None for n in names):
        return None
    _, codes = np.unique(np.asarray(names), return_inverse=True)
    sizes = pa.compute.list_value_length(table["paths"]).to_numpy()
    return codes.astype(np.int32), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def check_modules(cfg: PretrainConfig) -> None:
    """Stage I's encoder, loss and rejection built once on the driver (see
    :func:`check_encoder`): bad settings fail in one line before Ray starts."""
    from raysv.errors import RaysvError
    from raysv.losses import build_loss
    from raysv.training.pretrain_worker import build_modules

    check_encoder(cfg.model.name, cfg.data.n_mels, cfg.model.kwargs)
    if cfg.loss.name == "dino":
        from raysv.training.dino_worker import build_dino

        try:
            build_dino(cfg)
        except RaysvError:
            raise
        except Exception as exc:
            raise ConfigError(f"dino / loss.rejection: {one_line(exc)}") from exc
        return
    try:
        build_loss(cfg.loss.name, **cfg.loss.kwargs())
    except RaysvError:
        raise
    except Exception as exc:
        raise ConfigError(f"loss {cfg.loss.name!r} {cfg.loss.kwargs()}: {one_line(exc)}") from exc
    try:
        build_modules(cfg)
    except RaysvError:
        raise
    except Exception as exc:
        raise ConfigError(f"loss.rejection: {one_line(exc)}") from exc


def training_dataset(
    cfg: PretrainConfig,
    shards: str,
    epochs: int | None = None,
    ledger=None,
    spare_epochs: int | None = None,
):
    """The Stage I Ray Dataset over ``shards``: every epoch (``cfg.train.epochs`` unless
    ``epochs``) in one stream, featurised as ``cfg.data`` says, with spare passes for
    rows skipped as unreadable (as the limit needs, unless ``spare_epochs``), which
    ``ledger`` counts (see :func:`raysv.training.stream.build_dataset`)."""
    epochs = cfg.train.epochs if epochs is None else epochs
    if spare_epochs is None:
        spare_epochs = tdata.spare_epochs(epochs, cfg.train.max_unreadable_share)
    from raysv.training.stream import build_dataset

    return build_dataset(shards, input_spec(cfg, epochs, spare_epochs), ledger)


def input_spec(cfg: PretrainConfig, epochs: int, spare_epochs: int) -> tdata.InputSpec:
    """Stage I's :class:`~raysv.training.data.InputSpec` from its config."""
    return tdata.InputSpec(
        mode=cfg.data.mode,
        crop_seconds=cfg.data.crop_seconds,
        n_mels=cfg.data.n_mels,
        augment=cfg.data.augment,
        utts_per_dialogue=cfg.data.utts_per_dialogue,
        task_cpus=cfg.train.data_task_cpus,
        epochs=epochs,
        seed=cfg.train.seed,
        spare_epochs=spare_epochs,
        views=cfg.dino.views if cfg.loss.name == "dino" else None,
    )


@on_object_storage("raysv pretrain")  # --out s3://...: a working copy kept in the bucket
def run_pretrain(cfg: PretrainConfig, *, callbacks=()) -> dict:
    """Run Stage I; returns the summary (also ``<out>/summary.json``)."""
    from raysv.training.pretrain_worker import train_loop

    t0 = time.monotonic()
    out = os.path.abspath(cfg.out)
    check_modules(cfg)  # unknown encoder/loss names and bad kwargs fail here, before Ray
    claim_run(out, "raysv pretrain")  # a new folder, or one of ours to resume
    inputs = prepare_inputs(cfg)  # [1]
    summary = train_stage(
        cfg,
        inputs,
        train_loop,
        lambda shards, ledger: training_dataset(cfg, shards, ledger=ledger),
        lambda result: _finish(cfg, inputs, result, out),
        label="Stage I",
        what=f"{cfg.model.name}, loss {cfg.loss.name}",
        run_extra={"truth": inputs.get("truth"), "speakers": inputs.get("speakers")},
        artifacts=("best_model.pt",),
        t0=t0,
        callbacks=callbacks,
    )
    summary.update(inputs["counts"])
    write_json_atomic(os.path.join(out, "summary.json"), summary, default=float)
    return summary


def _finish(cfg: PretrainConfig, inputs: dict, result, out: str) -> dict:
    """Load the last checkpoint, save the best model, evaluate untrained vs best encoders."""
    from raysv.models import build_encoder

    blob = last_state(result)
    st = blob["state"]
    if st["best_model"]:
        best = st["best_model"]
    elif "teacher" in blob:  # DINO without dev trials: the last teacher's encoder
        from raysv.training.dino_worker import final_encoder_state

        best = final_encoder_state(blob)
    else:
        best = blob["model"]
    save_encoder(
        os.path.join(out, "best_model.pt"),
        best,
        encoder_spec(cfg.model.name, cfg.data.n_mels, cfg.model.kwargs),
        to_dict(cfg),
    )
    import torch

    def encoder():
        torch.manual_seed(cfg.train.seed)  # the untrained one is the run's initialisation
        return build_encoder(cfg.model.name, cfg.data.n_mels, **cfg.model.kwargs)

    untrained, trained = encoder(), encoder()
    trained.load_state_dict(best)
    final = evaluate_encoders(
        {"untrained": untrained, "best": trained},
        inputs,
        cfg.data.n_mels,
        cfg.data.eval_max_seconds,
    )
    return {
        "epochs": st["epoch"],
        "steps": st["step"],
        "best_dev_eer": st["best_eer"] if np.isfinite(st["best_eer"]) else None,
        "history": st["history"],
        "final": final,
        "best_model": os.path.join(out, "best_model.pt"),
        "train_seconds": round(float(st.get("seconds", 0.0)), 1),
        **({"out_of_time": True} if st.get("out_of_time") else {}),
        **({"stopped": st["stopped"]} if st.get("stopped") else {}),
    }
