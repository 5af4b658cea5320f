"""The worker skeleton every training objective runs in: one Ray Train worker (one DDP rank).

An objective (Stage I's contrastive losses in ``pretrain_worker``, Stage II's
AAM head and gates in ``stage2_worker``) subclasses :class:`Objective` and fills
in its model, one epoch of steps and what to log. This module owns the rest,
the same for every objective, and is one of the few that import Ray (Train):

# [1] ray.train.get_checkpoint(): resume after a restart or a rerun;
# [2] ray.train.torch.prepare_model(): DDP (gloo on CPU, NCCL on GPU), handed to
#     the objective as ``prepare``;
# [3] one data stream for all epochs, cut into epochs by step count;
# [4] ray.train.report(): metrics every epoch, with a checkpoint from rank 0.

Rank 0 also scores the dev trials after every epoch and keeps the encoder with
the lowest dev EER (with ``Objective.score_initial``, the starting encoder is
scored first and is the one to beat), appends the epoch to ``<run>/_progress.jsonl``
and MLflow, and counts rows skipped as unreadable.
"""

from __future__ import annotations

import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from raysv.config import from_dict
from raysv.errors import RaysvError
from raysv.models.checkpoint import load_training_state, plain_values
from raysv.training import unreadable
from raysv.training.distributed import all_reduce_sum, world
from raysv.training.stream import worker_stream


@dataclass
class State:
    """Everything a checkpoint holds besides the modules' and optimiser's tensors."""

    epoch: int = 0  # next epoch to run
    step: int = 0
    best_eer: float = float("inf")
    best_model: dict | None = None  # the best encoder's state dict (dev EER)
    history: list[dict] = field(default_factory=list)
    unreadable: dict | None = None  # the run's unreadable-row counts at this checkpoint
    unreadable_token: str | None = None  # the invocation that counted them
    init_dev_eer: float | None = None  # the starting encoder's, when it is scored
    best_epoch: int = -1  # -1: no trained epoch beat the starting encoder (or none ran)
    stopped: str | None = None  # why the objective stopped the run early (one line)
    seconds: float = 0.0  # wall-clock seconds of the epochs run so far (all invocations)
    out_of_time: bool = False  # train.max_minutes was spent: the run ended early, normally


class TrainingStopped(RaysvError):
    """The objective stopped the run (e.g. DINO's collapse); the driver raises it after
    saving what the run has (best encoder, summary figures), without Ray's retries."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") else model


def encoder_state(encoder: nn.Module) -> dict:
    """A detached CPU copy of ``encoder``'s state dict."""
    return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}


class Objective(ABC):
    """What a training objective fills in; one instance per worker.

    ``__init__(cfg, run, device, prepare)`` builds the modules, wraps the trained
    one with ``prepare`` (DDP) into ``self.model`` and builds the optimiser.
    """

    state_cls: type[State] = State
    score_initial: bool = False  # score the encoder before training; it is the one to beat
    model: nn.Module

    def encoder(self) -> nn.Module:
        """The (unwrapped) encoder that dev trials score and the best model saves."""
        return unwrap(self.model)

    def initial_state(self) -> State:
        """The state of a run that starts (a resumed one restores its checkpoint's)."""
        return self.state_cls()

    @abstractmethod
    def train_epoch(self, stream, st: State, tally: unreadable.Tally) -> dict:
        """One pass over this worker's batches (``stream.epoch()``); advances ``st.step``
        and returns the epoch's statistics."""

    def end_epoch(self, st: State) -> dict:
        """Metrics gathered over the epoch (analysis); called on every rank before
        ``st.epoch`` advances. Setting ``st.stopped`` (the same on every rank) ends the run
        after this epoch is recorded and checkpointed."""
        return {}

    def checkpoint(self) -> dict:
        """Tensors to checkpoint beyond the model's (optimiser, loss, scheduler)."""
        return {}

    def restore(self, blob: dict) -> None:
        """Load what :meth:`checkpoint` saved (the model is loaded already); nothing by
        default."""
        return None

    def after_epoch(self, run: dict) -> None:
        """Rank 0, after the epoch's metrics are recorded (e.g. analysis files); nothing
        by default."""
        return None


def train_worker(config: dict, cfg_cls: type, objective: Callable[..., Objective]) -> None:
    """Ray Train entry point of every stage: ``config = {"cfg": cfg_cls as dict, "run": {..}}``.

    ``run`` holds what the driver prepared: ``out``, ``steps_per_epoch``, the dev
    inputs, the MLflow run, the unreadable-row ledger and the objective's own keys.
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = from_dict(cfg_cls, config["cfg"])
    run = config["run"]
    torch.set_num_threads(max(1, int(run.get("torch_threads", 1))))
    rank, _ = world()
    device = ray.train.torch.get_device()
    obj = objective(cfg, run, device, ray.train.torch.prepare_model)  # [2]
    st = obj.initial_state()
    ckpt = ray.train.get_checkpoint()  # [1]
    if ckpt is not None:
        st = _restore(ckpt, obj)
        # this invocation's budget decides (a rerun with a larger one, or none, goes on)
        st.out_of_time = out_of_time(
            st.seconds, cfg.train.max_minutes, cfg.train.epochs - st.epoch, device
        )
    # [3] one pass of the data for all epochs, cut into epochs by step count
    stream = worker_stream(
        run["steps_per_epoch"],
        cfg.train.per_worker_batch,
        device,
        seed=1000 * cfg.train.seed + rank,
    )
    dev = load_dev(run, cfg) if rank == 0 else None
    if rank == 0:  # a first estimate of the stage's duration, from its first steps
        from raysv.progress import record_estimate

        left = cfg.train.epochs - st.epoch
        token = run.get("token")
        stream.time_steps(
            lambda s: record_estimate(run["out"], s, run["steps_per_epoch"], left, token)
        )
    if rank == 0 and ckpt is None and obj.score_initial and dev is not None:
        # The initial encoder is the candidate to beat: a round never ends worse on dev.
        st.init_dev_eer = st.best_eer = dev_metrics(obj.encoder(), dev, device)["dev_eer"]
        st.best_model = encoder_state(obj.encoder())
    tally = worker_tally(cfg, run, rank, st)
    while st.epoch < cfg.train.epochs and not st.stopped and not st.out_of_time:
        maybe_fail(cfg, st.epoch, run)
        t_epoch = time.monotonic()
        stats = obj.train_epoch(stream, st, tally)
        metrics = {"epoch": st.epoch, "step": st.step, **stats, **obj.end_epoch(st)}
        st.seconds += time.monotonic() - t_epoch
        st.out_of_time = out_of_time(
            st.seconds, cfg.train.max_minutes, cfg.train.epochs - st.epoch - 1, device
        )
        metrics["train_seconds"] = st.seconds
        metrics["out_of_time"] = st.out_of_time  # sweeps: the last report of this run
        seen = tally.flush(check_now=False)
        metrics["unreadable_rows"] = seen["rows"]
        st.unreadable, st.unreadable_token = seen, run.get("token")
        st.epoch += 1
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                metrics.update(dev_metrics(obj.encoder(), dev, device))
                if metrics.get("dev_eer", np.inf) < st.best_eer:
                    st.best_eer = metrics["dev_eer"]
                    st.best_model = encoder_state(obj.encoder())
                    st.best_epoch = metrics["epoch"]
                metrics["best_dev_eer"] = st.best_eer
                st.history.append(metrics)
                obj.after_epoch(run)
                _save(tmp, obj, st)
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)  # [4]
            if rank == 0:  # after report: a kill before the checkpoint lands re-runs the epoch,
                log_epoch(run, metrics)  # and log_epoch logs each epoch once
        if st.epoch < cfg.train.epochs and not (st.stopped or st.out_of_time):  # else the summary
            tally.check(seen)  # too many unreadable rows: stop; this epoch's checkpoint is kept


def out_of_time(seconds: float, max_minutes: float | None, epochs_left: int, device) -> bool:
    """Whether the run should end early: epochs are left and ``seconds`` of training, as
    rank 0 counts them, have spent the budget ``max_minutes`` (None: no budget).

    Every rank must call it (an all-reduce) and gets rank 0's answer: the other ranks'
    clocks also count their wait for rank 0's dev scoring and checkpoint.
    """
    if not max_minutes or epochs_left <= 0:
        return False
    mine = torch.tensor([float(seconds) if world()[0] == 0 else 0.0], device=device)
    return bool(all_reduce_sum(mine).item() >= 60.0 * max_minutes)


def _save(path: str, obj: Objective, st: State) -> None:
    torch.save(
        {
            "model": unwrap(obj.model).state_dict(),
            **obj.checkpoint(),
            "state": plain_values(st.__dict__),
        },
        os.path.join(path, "state.pt"),
    )


def _restore(ckpt, obj: Objective) -> State:
    with ckpt.as_directory() as d:
        blob = load_training_state(os.path.join(d, "state.pt"))
    unwrap(obj.model).load_state_dict(blob["model"])
    obj.restore(blob)
    return obj.state_cls(**blob["state"])


def worker_tally(cfg, run: dict, rank: int, st: State) -> unreadable.Tally:
    """This worker's :class:`~raysv.training.unreadable.Tally` over the run's ledger
    (reporting and checking on rank 0 only), given the counts of an earlier invocation
    from the restored state ``st``, and checked at once: a restart or a resume stops
    here if the limit is already passed."""
    tally = unreadable.Tally(
        run.get("ledger"),
        cfg.train.max_unreadable_share,
        run.get("unit", "rows"),
        active=rank == 0,
    )
    if st.unreadable_token != run.get("token"):  # counted by an earlier invocation
        tally.resume(st.unreadable)
    tally.flush()
    return tally


def load_dev(run: dict, cfg):
    """``(trials, features, centre features or None)`` of the dev trials, or None
    without them (rank 0); the centre's are training utterances' (issue #24)."""
    if not run.get("dev_utts"):
        return None
    import pyarrow.parquet as pq

    from raysv.evaluation.model_eval import readable_features, trial_features

    n_mels, max_s = cfg.data.n_mels, cfg.data.eval_max_seconds
    trials = pq.read_table(run["dev_trials"])
    dev = trial_features(pq.read_table(run["dev_utts"]), n_mels, max_s)
    centre = run.get("centre_utts")
    return trials, dev, readable_features(pq.read_table(centre), n_mels, max_s) if centre else None


def dev_metrics(encoder: nn.Module, dev, device) -> dict:
    """Dev EER and minDCF of ``encoder`` (``{}`` without dev trials)."""
    if dev is None:
        return {}
    from raysv.evaluation.model_eval import evaluate_model

    r = evaluate_model(encoder, dev[0], dev[1], str(device), centre_feats=dev[2])
    return {
        "dev_eer": r["eer"],
        "dev_min_dcf_0.01": r["min_dcf_0.01"],
        "dev_min_dcf_0.05": r["min_dcf_0.05"],
    }


def log_epoch(run: dict, metrics: dict) -> None:
    """Rank 0, once per epoch: MLflow, and the line the driver shows (raysv.progress)."""
    import logging

    from raysv.progress import record_epoch

    if run.get("mlflow_run_id"):
        from raysv.tracking.mlflow_tracking import log_epoch_once

        log_epoch_once(run["tracking_uri"], run["mlflow_run_id"], metrics, int(metrics["epoch"]))
    try:  # the progress line is a convenience: a run folder rank 0 cannot write loses only it
        record_epoch(run["out"], metrics)
    except OSError as exc:
        logging.getLogger("raysv").warning("no progress line for this epoch: %s", exc)


def maybe_fail(cfg, epoch: int, run: dict) -> None:
    """Testing aid: fail once (marker file) at ``train.inject_failure_at_epoch``."""
    if cfg.train.inject_failure_at_epoch != epoch or world()[0] != 0:
        return
    marker = os.path.join(run["out"], f".injected_failure_{epoch}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"injected failure at epoch {epoch} (train.inject_failure_at_epoch)")
