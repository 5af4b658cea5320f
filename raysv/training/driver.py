"""The driver every training stage shares: inputs common to all stages, the
TorchTrainer, the run, its MLflow record and the final evaluation.

A stage (``pretrain`` for Stage I, ``stage2`` for Stage II) prepares its own
training table and checks its own modules, then calls :func:`train_stage` with
its Ray Train entry point (a ``raysv.training.worker`` objective) and a
``finish`` that turns the last checkpoint into its summary. This module and
``raysv.training.worker`` are the training code that imports Ray (Train):

# [1] inputs are checked and prepared before any worker starts (clear errors);
# [2] the dataset is a Ray Dataset of metadata rows, featurised per epoch;
# [3] ScalingConfig / RunConfig / FailureConfig / CheckpointConfig;
# [4] the same run name under the same storage path resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from raysv.config import to_dict
from raysv.data.outputs import write_json_atomic
from raysv.data.problems import Problems
from raysv.data.trials import parse_trials, resolve_trials
from raysv.errors import ConfigError, ManifestError, one_line
from raysv.training import data as tdata
from raysv.training import unreadable

log = logging.getLogger("raysv")


def trial_inputs(trials_uri: str, utts: pa.Table, folder: str, split: str) -> dict:
    """Resolve a trial list against the manifest ``utts``; write the trials and the
    utterances they name under ``folder`` (``<split>_trials/_utts.parquet``) for rank 0's
    dev scoring and the final evaluation. Bad labels fail here, before Ray."""
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


CENTRE_UTTERANCES = 200  # training utterances whose mean embedding centres dev/test scores


def centre_inputs(train_utts: pa.Table, folder: str, seed: int = 0) -> str:
    """Write a seeded sample of at most :data:`CENTRE_UTTERANCES` of the rows the
    stage trains on (``centre_utts.parquet``; ``train_utts`` has ``utt_id``, ``path``,
    ``start_s``, ``end_s``): the mean of their embeddings is the scoring centre of
    dev scoring and the final evaluation (issue #24; ``raysv export`` takes its
    card's centre the same way, from more rows). Pass only training rows: this
    centre takes part in model selection, so no trial's audio may be in it."""
    n = train_utts.num_rows
    if n == 0:
        raise ManifestError("no training utterances to take a scoring centre from")
    rows = np.arange(n)
    if n > CENTRE_UTTERANCES:
        rows = np.sort(np.random.default_rng(seed).choice(n, CENTRE_UTTERANCES, replace=False))
    path = os.path.join(folder, "centre_utts.parquet")
    pq.write_table(train_utts.take(rows).select(["utt_id", "path", "start_s", "end_s"]), path)
    return path


def worker_resources(train) -> tuple[dict, int]:
    """Ray resources of one training worker and its torch threads, from ``train``
    (a :class:`~raysv.training.config.TrainSpec`) and the cluster's CPUs."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1))
    cpw = train.cpus_per_worker
    if cpw is None:
        # Leave one CPU for Ray Data's featurisation tasks, or the input pipeline starves.
        # A GPU worker needs little CPU (its step runs on the GPU): two each, and every
        # other CPU featurises, which is what a GPU's appetite for batches needs.
        nodes = [
            float(n["Resources"].get("CPU", 0.0))
            for n in ray.nodes()
            if n.get("Alive") and n["Resources"].get("CPU", 0.0) > 0
        ] or [total]
        cpw = (
            worker_cpus(nodes, train.num_workers)
            if not train.use_gpu
            else max(1.0, min(2.0, (total - 1.0) / train.num_workers))
        )
    if cpw * train.num_workers > total - 0.5 and not train.use_gpu:
        raise ConfigError(
            f"{train.num_workers} workers x {cpw} CPUs leave no CPU for data loading on a {total:g}-CPU cluster; "
            "lower train.num_workers or train.cpus_per_worker"
        )
    res = {"CPU": cpw}
    if train.use_gpu:
        res["GPU"] = 1
    return res, max(1, int(cpw))


def worker_cpus(node_cpus: list[float], workers: int) -> float:
    """CPUs per CPU training worker: the most that still places ``workers`` workers on
    nodes with ``node_cpus`` CPUs, each node keeping one CPU for Ray Data's
    featurisation, and at most (total - 1) / workers; at least 0.25.

    One node of 2 CPUs: 1 worker gets 1 CPU, 2 get 0.5 each. Two nodes of 3: 1 worker
    gets 2, not (6 - 1) / 1 = 5, which no node has (the job would wait forever).
    """
    total = sum(node_cpus)
    spare = [max(0.0, c - 1.0) for c in node_cpus]

    def fits(c: float) -> bool:
        return sum(int(s / c + 1e-9) for s in spare) >= workers

    cands = sorted({s / k for s in spare if s > 0 for k in range(1, workers + 1)}, reverse=True)
    best = next((c for c in cands if fits(c)), 0.0)
    return max(0.25, math.floor(min(best, (total - 1.0) / workers) * 1e4) / 1e4)


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
        raise ConfigError(f"{what}: {one_line(exc)}") from exc
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != 2 or y.shape[1] < 1:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ConfigError(
            f"{what}: gives embeddings of shape {shape} for 2 inputs, not (2, D >= 1)"
        )
    return encoder


def storage_folder(train, out: str) -> str:
    """Ray Train's ``storage_path``: ``train.storage_path``, by default ``<out>/ray``, and
    in the bucket when ``out`` is the working copy of a run folder on object storage
    (:mod:`raysv.data.run_store`): a run killed mid-stage resumes from there on any disk."""
    from raysv.data import run_store

    return train.storage_path or run_store.location(os.path.join(out, "ray"))


def checkpoint_folder(train, out: str, name: str) -> str:
    """Where Ray Train keeps run ``name``'s checkpoints: ``<storage_path>/<name>``, by
    default ``<out>/ray/<name>`` (a local path or a URI)."""
    from raysv.data import fs

    return fs.join(storage_folder(train, out), name)


def checkpoints_line(train, out: str, name: str) -> str:
    """One line on where this run's checkpoints go and whether Ray Train will resume from
    those already there ([4]: it does when its checkpoint-manager snapshot,
    ``checkpoint_manager_snapshot.json``, is there), e.g. after a kill, or, with
    ``train.storage_path`` on object storage, from another machine's run of that name."""
    from raysv.data import fs
    from raysv.errors import ManifestError

    where = checkpoint_folder(train, out, name)
    try:
        names = fs.list_names(where)
    except (OSError, ManifestError) as exc:  # Ray Train meets it again, with its own error
        return f"checkpoints go to {where} (cannot list it now: {one_line(exc)})"
    held = [n for n in names if n.startswith("checkpoint_") and n != SNAPSHOT]
    if SNAPSHOT in names:
        return f"resuming from the last of {len(held)} checkpoint(s) at {where}"
    return f"checkpoints go to {where}"


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train v2's record of a run's checkpoints


def build_trainer(
    loop, loop_config: dict, train, resources: dict, name: str, out: str, dataset, callbacks=()
):
    """The TorchTrainer of a training stage (Stage I or II).

    # [3] ScalingConfig / RunConfig / FailureConfig / CheckpointConfig;
    # [4] the same ``name`` under the same storage path resumes from its last checkpoint.
    ``train`` is a :class:`~raysv.training.config.TrainSpec`; ``callbacks``: Ray Train
    callbacks of the run (a sweep's trial reports its epochs to Ray Tune with one).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from raysv.training.stream import data_config

    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_folder(train, out),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train.num_to_keep),
            callbacks=list(callbacks),
        ),
        datasets={"train": dataset},
        dataset_config=data_config(train.num_workers),
    )


def fit(trainer, out: str, label: str, epochs: int, token: str | None = None):
    """``trainer.fit()``, logging a line per epoch as rank 0 records it (``label``
    ``epoch i/epochs`` with the time left, :class:`raysv.progress.EpochFollower`).

    A raysv error raised in a worker (bad input met during training, a diverged
    loss), or in a data task feeding it, is re-raised as itself, so the CLI prints
    one line, not the worker group's traceback. Ray Train has already retried it
    ``max_failures`` times."""
    import ray.train

    from raysv.errors import raysv_cause
    from raysv.progress import EpochFollower

    failed = getattr(ray.train, "WorkerGroupError", ())  # Train V2's
    try:
        with EpochFollower(out, label, epochs, token=token):
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
    from raysv.evaluation.model_eval import evaluate_model, readable_features, trial_features

    if split not in cache:
        cache[split] = (
            pq.read_table(inputs[split]["trials"]),
            trial_features(pq.read_table(inputs[split]["utts"]), n_mels, max_seconds),
        )
    if "centre" not in cache:
        centre = inputs.get("centre")
        cache["centre"] = (
            readable_features(pq.read_table(centre), n_mels, max_seconds) if centre else None
        )
    trials, feats = cache[split]
    r = evaluate_model(encoder, trials, feats, centre_feats=cache["centre"])
    return {k: r[k] for k in ("eer", "min_dcf_0.01", "min_dcf_0.05")}


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


def train_stage(
    cfg,
    inputs: dict,
    loop: Callable[[dict], None],
    dataset: Callable,
    finish: Callable,
    *,
    label: str,
    what: str,
    run_extra: dict,
    artifacts: tuple[str, ...] = (),
    t0: float | None = None,
    callbacks=(),
) -> dict:
    """Train one stage on Ray Train; returns its summary (the caller writes it).

    ``cfg`` is the stage's config (``out``, ``run_name``, ``train``, ``tracking_uri``,
    ``experiment``, ``parent_run_id``), ``inputs`` its prepared inputs (``table``,
    ``unit``, the dev/test trial inputs); ``loop`` the workers' entry point;
    ``dataset(shards, ledger)`` the stage's Ray Dataset [2]; ``finish(result)`` the
    summary from the last checkpoint (best encoder saved, final evaluation);
    ``label`` names the stage on the progress lines, ``what`` on the start line;
    ``run_extra`` adds the objective's own keys to the workers' ``run``; ``artifacts``
    are files under ``out`` logged to MLflow besides ``config.yaml``; ``t0`` the
    ``time.monotonic()`` the stage's command started at (for ``seconds``); ``callbacks``
    Ray Train callbacks (:func:`build_trainer`).
    """
    from raysv.runtime import ensure_ray
    from raysv.tracking import mlflow_tracking as tracking

    t0 = time.monotonic() if t0 is None else t0
    out = os.path.abspath(cfg.out)
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    ensure_ray()
    shards = tdata.write_shards(
        inputs["table"], os.path.join(out, "inputs", "train"), seed=cfg.train.seed
    )
    ledger = unreadable.start_ledger(cfg.train.max_unreadable_share)  # rows skipped as unreadable
    data = dataset(shards, ledger)  # [2]
    resources, threads = worker_resources(cfg.train)
    tracking_uri = cfg.tracking_uri or tracking.default_tracking_uri(out)
    with tracking.resumable_run(
        out, tracking_uri, cfg.experiment, cfg.run_name, to_dict(cfg), cfg.parent_run_id
    ) as run_id:
        run = {
            "out": out,
            "dev_utts": inputs.get("dev", {}).get("utts"),
            "dev_trials": inputs.get("dev", {}).get("trials"),
            "centre_utts": inputs.get("centre"),
            "mlflow_run_id": run_id,
            "tracking_uri": tracking_uri,
            "torch_threads": threads,
            "steps_per_epoch": tdata.steps_per_epoch(
                inputs["table"].num_rows, cfg.train.num_workers, cfg.train.per_worker_batch
            ),
            "ledger": ledger,
            "unit": inputs["unit"],
            "token": uuid.uuid4().hex,  # this invocation (the ledger's counts are its own)
            **run_extra,
        }
        trainer = build_trainer(  # [3] [4]
            loop,
            {"cfg": to_dict(cfg), "run": run},
            cfg.train,
            resources,
            cfg.run_name,
            out,
            data,
            callbacks,
        )
        log.info(
            "%s: %s on %d %s with %d worker(s) x %s: %d epochs of %d steps%s "
            "(a line per epoch, with the time left)",
            label,
            what,
            inputs["table"].num_rows,
            inputs["unit"],
            cfg.train.num_workers,
            resources,
            cfg.train.epochs,
            run["steps_per_epoch"],
            f", or fewer: training ends after the epoch that reaches {cfg.train.max_minutes:g} min"
            if cfg.train.max_minutes
            else "",
        )
        log.info("%s: %s", label, checkpoints_line(cfg.train, out, cfg.run_name))
        result = fit(trainer, out, label, cfg.train.epochs, run["token"])
        summary = finish(result)
        if summary.get("stopped"):  # an objective's early stop: what it has is saved
            from raysv.training.worker import TrainingStopped

            write_json_atomic(os.path.join(out, "summary.json"), summary, default=float)
            raise TrainingStopped(f"{label}: {summary['stopped']}")
        summary.update(unreadable_summary(ledger))
        tracking.log_metrics(
            {f"final.{k}": v for k, v in summary["final"].items()}
            | {"final.unreadable_rows": summary["unreadable_rows"]}
        )
        for name in ("config.yaml", *artifacts):
            tracking.log_artifact(os.path.join(out, name))
    summary.update(
        mlflow={"tracking_uri": tracking_uri, "run_id": run_id},
        seconds=round(time.monotonic() - t0, 1),
        out=out,
    )
    return summary
