"""Driver of Stage I: prepares inputs, builds the TorchTrainer, reports the result.

# [1] inputs are checked and prepared before any worker starts (clear errors);
# [2] the dataset is a Ray Dataset of metadata rows, featurised per epoch;
# [3] ScalingConfig / RunConfig / FailureConfig / CheckpointConfig;
# [4] the same run name under the same storage path resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from raysv.config import to_dict
from raysv.data import fs, ingest
from raysv.data.holdout import training_rows
from raysv.data.outputs import claim_run, write_json_atomic
from raysv.data.problems import Problems
from raysv.data.trials import parse_trials, resolve_trials
from raysv.errors import ConfigError, ManifestError
from raysv.models.checkpoint import encoder_spec, save_encoder
from raysv.training import data as tdata
from raysv.training import unreadable
from raysv.training.config import PretrainConfig

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
        refuse_stale(imported, out, ("ray", "summary.json", "best_model.pt"))
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


def _trial_inputs(trials_uri: str, utts: pa.Table, folder: str, split: str) -> dict:
    problems = Problems()
    trials = resolve_trials(parse_trials(trials_uri, problems), utts, trials_uri, problems)
    problems.log_summary()
    from raysv.evaluation.metrics import check_trial_labels

    check_trial_labels(trials.column("label").to_numpy(), trials_uri)  # before Ray, not in a worker
    needed = pa.array(
        sorted(set(trials.column("enroll").to_pylist()) | set(trials.column("test").to_pylist()))
    )
    sub = utts.filter(pa.compute.is_in(utts["utt_id"], needed))
    paths = {
        "trials": os.path.join(folder, f"{split}_trials.parquet"),
        "utts": os.path.join(folder, f"{split}_utts.parquet"),
    }
    pq.write_table(trials, paths["trials"])
    pq.write_table(sub.select(["utt_id", "path", "start_s", "end_s"]), paths["utts"])
    return paths


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
            res[split] = _trial_inputs(man[f"{split}_trials"], utts, folder, split)
    # Evaluation audio is never trained on: a corpus folder's training rows already
    # leave out the trial speakers; any manifest loses the utterances trials name.
    train_utts = utts
    if man["train"]:
        train_utts = ingest.check_utterances(fs.read_table(man["train"]), man["train"], problems)
    train_utts, _ = training_rows(
        train_utts, [res[s]["trials"] for s in res], man["train"] or man["utterances"], None
    )
    if cfg.data.mode == "dialogue":
        if not man["dialogues"]:
            raise ManifestError(
                "dialogue mode needs a dialogues table (data.dialogues, or dialogues.jsonl in the corpus folder)"
            )
        table = tdata.dialogue_table(
            train_utts,
            fs.read_table(man["dialogues"]),
            cfg.data.utts_per_dialogue,
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


def _resources(cfg: PretrainConfig) -> tuple[dict, int]:
    import ray

    total = float(ray.cluster_resources().get("CPU", 1))
    cpw = cfg.train.cpus_per_worker
    if cpw is None:
        # Leave one CPU for Ray Data's featurisation tasks, or the input pipeline starves.
        # A GPU worker needs little CPU (its step runs on the GPU): two each, and every
        # other CPU featurises, which is what a GPU's appetite for batches needs.
        cpw = (
            max(0.25, (total - 1.0) / cfg.train.num_workers)
            if not cfg.train.use_gpu
            else max(1.0, min(2.0, (total - 1.0) / cfg.train.num_workers))
        )
    if cpw * cfg.train.num_workers > total - 0.5 and not cfg.train.use_gpu:
        raise ConfigError(
            f"{cfg.train.num_workers} workers x {cpw} CPUs leave no CPU for data loading on a {total:g}-CPU cluster; "
            "lower train.num_workers or train.cpus_per_worker"
        )
    res = {"CPU": cpw}
    if cfg.train.use_gpu:
        res["GPU"] = 1
    return res, max(1, int(cpw))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def check_encoder(name: str, n_mels: int, kwargs: dict):
    """Build encoder ``name`` with ``model.kwargs`` and embed two inputs of silence, on the
    driver: a constructor argument it refuses (a negative width, an unknown keyword) or a
    network that gives no embeddings raises ConfigError naming them, not a traceback from
    the Ray Train workers. Returns the encoder."""
    import torch

    from raysv.errors import RaysvError
    from raysv.models import build_encoder

    what = f"model.kwargs {dict(kwargs)} of encoder {name!r} (n_mels {n_mels})"
    try:
        encoder = build_encoder(name, n_mels, **kwargs)
        was = encoder.training
        encoder.eval()
        with torch.no_grad():
            y = encoder(torch.zeros(2, 100, n_mels))
        encoder.train(was)
    except RaysvError:
        raise
    except Exception as exc:  # whatever the constructor or its first forward pass raise
        raise ConfigError(f"{what}: {_one_line(exc)}") from exc
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != 2 or y.shape[1] < 1:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ConfigError(
            f"{what}: gives embeddings of shape {shape} for 2 inputs, not (2, D >= 1)"
        )
    return encoder


def check_modules(cfg: PretrainConfig) -> None:
    """Stage I's encoder, loss and rejection built once on the driver (see
    :func:`check_encoder`): bad settings fail in one line before Ray starts."""
    from raysv.errors import RaysvError
    from raysv.losses import build_loss
    from raysv.training.pretrain_worker import build_modules

    check_encoder(cfg.model.name, cfg.data.n_mels, cfg.model.kwargs)
    try:
        build_loss(cfg.loss.name, **cfg.loss.kwargs())
    except RaysvError:
        raise
    except Exception as exc:
        raise ConfigError(f"loss {cfg.loss.name!r} {cfg.loss.kwargs()}: {_one_line(exc)}") from exc
    try:
        build_modules(cfg)
    except RaysvError:
        raise
    except Exception as exc:
        raise ConfigError(f"loss.rejection: {_one_line(exc)}") from exc


def build_trainer(loop, loop_config: dict, train, resources: dict, name: str, out: str, dataset):
    """The TorchTrainer of a training stage (Stage I or II).

    # [3] ScalingConfig / RunConfig / FailureConfig / CheckpointConfig;
    # [4] the same ``name`` under the same storage path resumes from its last checkpoint.
    ``train`` is a :class:`~raysv.training.config.TrainSpec`.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=train.storage_path or os.path.join(out, "ray"),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train.num_to_keep),
        ),
        datasets={"train": dataset},
    )


def raysv_cause(exc: BaseException):
    """The first :class:`RaysvError` in ``exc``'s chain (causes, contexts, and the
    ``cause`` of Ray's wrapped task errors), or None."""
    from raysv.errors import RaysvError

    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RaysvError) and not hasattr(e, "cause"):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def fit(trainer):
    """``trainer.fit()``; a raysv error raised in a worker (bad input met during training,
    a diverged loss), or in a data task feeding it, is re-raised as itself, so the CLI
    prints one line, not the worker group's traceback. Ray Train has already retried
    it ``max_failures`` times."""
    import ray.train

    failed = getattr(ray.train, "WorkerGroupError", ())  # Train V2's
    try:
        return trainer.fit()
    except failed as exc:
        for err in exc.worker_failures.values():
            cause = raysv_cause(err)
            if cause is not None:
                raise cause from exc
        raise


def _evaluate(
    encoder, inputs: dict, split: str, n_mels: int, max_seconds: float, cache: dict
) -> dict:
    from raysv.evaluation.model_eval import evaluate_model, trial_features

    if split not in cache:
        cache[split] = (
            pq.read_table(inputs[split]["trials"]),
            trial_features(pq.read_table(inputs[split]["utts"]), n_mels, max_seconds),
        )
    trials, feats = cache[split]
    r = evaluate_model(encoder, trials, feats)
    return {k: r[k] for k in ("eer", "min_dcf_0.01", "min_dcf_0.05")}


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
    ``ledger`` counts (see ``build_dataset``)."""
    epochs = cfg.train.epochs if epochs is None else epochs
    if spare_epochs is None:
        spare_epochs = tdata.spare_epochs(epochs, cfg.train.max_unreadable_share)
    return tdata.build_dataset(
        shards,
        cfg.data.mode,
        cfg.data.utts_per_dialogue,
        cfg.data.crop_seconds,
        cfg.data.n_mels,
        cfg.data.augment,
        task_cpus=cfg.train.data_task_cpus,
        epochs=epochs,
        seed=cfg.train.seed,
        spare_epochs=spare_epochs,
        ledger=ledger,
    )


def run_pretrain(cfg: PretrainConfig) -> dict:
    """Run Stage I; returns the summary (also ``<out>/summary.json``)."""
    from raysv.runtime import ensure_ray
    from raysv.tracking import mlflow_tracking as tracking
    from raysv.training.pretrain_worker import train_loop

    t0 = time.monotonic()
    out = os.path.abspath(cfg.out)
    check_modules(cfg)  # unknown encoder/loss names and bad kwargs fail here, before Ray
    claim_run(out, "raysv pretrain")  # a new folder, or one of ours to resume
    inputs = prepare_inputs(cfg)  # [1]
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    ensure_ray()
    shards = tdata.write_shards(
        inputs["table"], os.path.join(out, "inputs", "train"), seed=cfg.train.seed
    )
    ledger = unreadable.start_ledger(cfg.train.max_unreadable_share)  # rows skipped as unreadable
    dataset = training_dataset(cfg, shards, ledger=ledger)  # [2]
    resources, threads = _resources(cfg)
    tracking_uri = cfg.tracking_uri or tracking.default_tracking_uri(out)
    with tracking.resumable_run(
        out, tracking_uri, cfg.experiment, cfg.run_name, to_dict(cfg), cfg.parent_run_id
    ) as run_id:
        run = {
            "out": out,
            "dev_utts": inputs.get("dev", {}).get("utts"),
            "dev_trials": inputs.get("dev", {}).get("trials"),
            "truth": inputs.get("truth"),
            "speakers": inputs.get("speakers"),
            "mlflow_run_id": run_id,
            "tracking_uri": tracking_uri,
            "torch_threads": threads,
            "steps_per_epoch": tdata.steps_per_epoch(
                inputs["table"].num_rows, cfg.train.num_workers, cfg.train.per_worker_batch
            ),
            "ledger": ledger,
            "unit": inputs["unit"],
            "token": uuid.uuid4().hex,  # this invocation (the ledger's counts are its own)
        }
        trainer = build_trainer(  # [3] [4]
            train_loop,
            {"cfg": to_dict(cfg), "run": run},
            cfg.train,
            resources,
            cfg.run_name,
            out,
            dataset,
        )
        log.info(
            "training %s on %d %s with %d worker(s) x %s",
            cfg.model.name,
            inputs["table"].num_rows,
            inputs["unit"],
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
        tracking.log_artifact(os.path.join(out, "best_model.pt"))
    summary.update(
        mlflow={"tracking_uri": tracking_uri, "run_id": run_id},
        seconds=round(time.monotonic() - t0, 1),
        out=out,
        **inputs["counts"],
    )
    write_json_atomic(os.path.join(out, "summary.json"), summary, default=float)
    return summary


def unreadable_summary(ledger) -> dict:
    """Summary entries for training row reads skipped as unreadable during the run
    (earlier invocations' counts included)."""
    snap = unreadable.snapshot(ledger) or {"rows": 0}
    if not snap["rows"]:
        return {"unreadable_rows": 0}
    return {
        "unreadable_rows": snap["rows"],
        "unreadable_files": snap["files"],
        "unreadable_share": round(unreadable.share(snap), 4),
        "unreadable_examples": snap["examples"],
    }


def last_state(result) -> dict:
    """The ``state.pt`` dict of a Ray Train result's last checkpoint."""
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        from raysv.models.checkpoint import load_training_state

        return load_training_state(os.path.join(d, "state.pt"))


def evaluate_encoders(models: dict, inputs: dict, n_mels: int, max_seconds: float) -> dict:
    """``{"<name>.<split>.<metric>": value}`` for each encoder on the dev/test inputs."""
    final: dict = {}
    cache: dict = {}
    for split in ("dev", "test"):
        if split in inputs:
            for name, model in models.items():
                for k, v in _evaluate(model, inputs, split, n_mels, max_seconds, cache).items():
                    final[f"{name}.{split}.{k}"] = v
    return final


def _finish(cfg: PretrainConfig, inputs: dict, result, out: str) -> dict:
    """Load the last checkpoint, save the best model, evaluate untrained vs best encoders."""
    from raysv.training.pretrain_worker import build_modules

    blob = last_state(result)
    st = blob["state"]
    best = st["best_model"] or blob["model"]
    save_encoder(
        os.path.join(out, "best_model.pt"),
        best,
        encoder_spec(cfg.model.name, cfg.data.n_mels, cfg.model.kwargs),
        to_dict(cfg),
    )
    untrained, _, _ = build_modules(cfg)
    trained, _, _ = build_modules(cfg)
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
    }
