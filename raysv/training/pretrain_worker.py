"""Stage I training loop: runs inside each Ray Train worker (one DDP rank).

Takes a plain dict (``{"cfg": ..., "run": ...}``); nothing here builds a
trainer. Points where Ray plugs in are numbered:

# [1] ray.train.get_checkpoint(): resume after a restart or a rerun;
# [2] ray.train.torch.prepare_model(): DDP (gloo on CPU, NCCL on GPU);
# [3] ray.train.get_dataset_shard(): this worker's stream of batches;
# [4] ray.train.report(): metrics every epoch, with a checkpoint from rank 0.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from raysv.config import from_dict
from raysv.errors import DivergedError
from raysv.models.checkpoint import load_training_state, plain_values
from raysv.training import unreadable
from raysv.training.config import PretrainConfig
from raysv.training.data import worker_stream
from raysv.training.distributed import gather_no_grad, gather_with_grad, where, world


@dataclass
class State:
    """Everything a checkpoint holds besides tensors' owners."""

    epoch: int = 0  # next epoch to run
    step: int = 0
    best_eer: float = float("inf")
    best_model: dict | None = None
    history: list[dict] = field(default_factory=list)
    unreadable: dict | None = None  # the run's unreadable-row counts at this checkpoint
    unreadable_token: str | None = None  # the invocation that counted them


def build_modules(cfg: PretrainConfig):
    """Encoder, loss and rejection modules, identically initialised on every rank."""
    from raysv.losses import build_loss
    from raysv.losses.rejection import Rejection
    from raysv.models import build_encoder

    torch.manual_seed(cfg.train.seed)
    encoder = build_encoder(cfg.model.name, cfg.data.n_mels, **cfg.model.kwargs)
    loss = build_loss(cfg.loss.name, **cfg.loss.kwargs())
    r = cfg.loss.rejection
    rejection = (
        Rejection(r.threshold, r.temperature, r.max_temperature, r.learn_temperature, r.normalise)
        if cfg.rejection_active
        else None
    )
    return encoder, loss, rejection


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _save(path: str, model, loss, rejection, opt, sched, st: State) -> None:
    torch.save(
        {
            "model": _unwrap(model).state_dict(),
            "loss": loss.state_dict(),
            "rejection": rejection.state_dict() if rejection is not None else None,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "state": plain_values(st.__dict__),
        },
        os.path.join(path, "state.pt"),
    )


def _restore(ckpt, model, loss, rejection, opt, sched) -> State:
    with ckpt.as_directory() as d:
        blob = load_training_state(os.path.join(d, "state.pt"))
    _unwrap(model).load_state_dict(blob["model"])
    loss.load_state_dict(blob["loss"])
    if rejection is not None and blob["rejection"] is not None:
        rejection.load_state_dict(blob["rejection"])
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    return State(**blob["state"])


def drawn_mixed(
    flat: np.ndarray, offsets: np.ndarray, idx: np.ndarray, pick: np.ndarray
) -> np.ndarray:
    """``(B,)`` bool: whether the M utterances drawn for each item come from more than one
    speaker. ``idx (B,)`` dialogue rows, ``pick (B, M)`` positions in those dialogues,
    ``flat``/``offsets`` from :func:`~raysv.training.pretrain.dialogue_speakers`."""
    spk = flat[offsets[idx][:, None] + pick]  # (B, M)
    return (spk != spk[:, :1]).any(axis=1)


class Analysis:
    """Rank 0's per-epoch record of rejection weights, for analysis only.

    With a ground-truth table (generated corpora), reports the ROC AUC of
    ``1 - w`` for detecting multi-speaker dialogues (``rejection_auc``). A
    multi-speaker dialogue's M drawn utterances often come from one of its
    speakers, and then nothing in the batch can tell it from a single-speaker
    one, so that AUC has a ceiling below 1. With the speakers of the dialogues'
    utterances (``speakers = (flat, offsets)``), it also reports the AUC for
    detecting *draws* that mix speakers (``rejection_auc_drawn``), which is
    what the weights can see, and the dialogue-level AUC that weights detecting
    exactly the mixed draws would get (``rejection_auc_ceiling``). Never feeds
    training.
    """

    def __init__(
        self, truth: np.ndarray | None, speakers: tuple | None = None, draws: bool | None = None
    ):
        self.truth = truth  # (n_dialogues,) bool by idx, or None
        self.speakers = speakers
        # whether steps gather the drawn positions: the same on every rank (a collective)
        self.draws = speakers is not None if draws is None else draws
        self.reset()

    def reset(self):
        self.idx: list[np.ndarray] = []
        self.w: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.pick: list[np.ndarray] = []

    def add(
        self, idx: torch.Tensor, w: torch.Tensor, c: torch.Tensor, pick: torch.Tensor | None = None
    ):
        self.idx.append(idx.cpu().numpy())
        self.w.append(w.detach().float().cpu().numpy())
        self.c.append(c.float().cpu().numpy())
        if pick is not None:
            self.pick.append(pick.cpu().numpy())

    def _mixed(self, idx: np.ndarray) -> np.ndarray | None:
        if self.speakers is None or len(self.pick) != len(self.idx):
            return None
        return drawn_mixed(*self.speakers, idx, np.concatenate(self.pick))

    def save(self, path: str) -> None:
        """Write this epoch's per-dialogue weights (and truth if known) to ``path`` (.npz)."""
        if not self.w:
            return
        idx = np.concatenate(self.idx)
        extra = {"multi_speaker": self.truth[idx]} if self.truth is not None else {}
        mixed = self._mixed(idx)
        if mixed is not None:
            extra["drawn_mixed"] = mixed
        np.savez(
            path,
            idx=idx,
            weight=np.concatenate(self.w),
            compactness=np.concatenate(self.c),
            **extra,
        )

    def summary(self) -> dict:
        if not self.w:
            return {}
        from sklearn.metrics import roc_auc_score

        w, c = np.concatenate(self.w), np.concatenate(self.c)
        idx = np.concatenate(self.idx)
        out = {
            "rej_w_mean": float(w.mean()),
            "rej_w_std": float(w.std()),
            "compactness_mean": float(c.mean()),
        }
        if self.truth is not None:
            y = self.truth[idx]
            if 0 < y.sum() < y.size:
                out["rejection_auc"] = float(roc_auc_score(y, -w))
                out["compactness_auc"] = float(roc_auc_score(y, -c))
        mixed = self._mixed(idx)
        if mixed is not None:
            out["mixed_draw_share"] = float(mixed.mean())
            if 0 < mixed.sum() < mixed.size:
                out["rejection_auc_drawn"] = float(roc_auc_score(mixed, -w))
            if "rejection_auc" in out:
                # the dialogue-level AUC of weights that detect every mixed draw: the
                # multi-speaker dialogues' unmixed draws can only tie with the singles
                out["rejection_auc_ceiling"] = float(1 - 0.5 * (~mixed[self.truth[idx]]).mean())
        return out


def run_epoch(
    cfg,
    model,
    loss_fn,
    rejection,
    opt,
    sched,
    stream,
    device,
    st: State,
    analysis: Analysis,
    tally: unreadable.Tally | None = None,
) -> dict:
    """One pass over this worker's shard; returns epoch statistics (rank-local timing).

    ``tally``: checks the share of rows skipped as unreadable (rank 0).
    """
    tally = tally or unreadable.Tally()
    model.train()
    g = cfg.group_size
    amp = cfg.train.use_gpu and cfg.train.amp
    losses, n_samples, wait, busy, cpu, skipped = [], 0, 0.0, 0.0, 0.0, 0
    analysis.reset()
    it = tally.guard(stream.epoch())  # this epoch's batches of the worker's one data stream
    t_mark = time.perf_counter()
    for batch in it:
        t_got = time.perf_counter()
        c_got = time.thread_time()  # this thread's CPU: not inflated by other processes
        wait += t_got - t_mark
        feats, idx = batch["feats"], batch["idx"]  # (B, G, F, n_mels), (B,)
        b = feats.shape[0]
        tally.step()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            emb = model(feats.reshape(b * g, *feats.shape[2:])).float().reshape(b, g, -1)
        emb = gather_with_grad(emb)  # global batch: negatives from every worker
        per = loss_fn(emb)
        loss, w, c = rejection(per, emb) if rejection is not None else (per.mean(), None, None)
        opt.zero_grad(set_to_none=True)
        # Backward is queued before the step's first host sync (the statistics copy and
        # the finite check below), so a GPU never idles while the host waits.
        loss.backward()
        if rejection is not None:
            ids = gather_no_grad(idx)  # collectives: every rank joins
            picks = gather_no_grad(batch["pick"]) if analysis.draws else None
            if world()[0] == 0:
                analysis.add(ids, w, c, picks)
        if not torch.isfinite(loss):  # same value on every rank (global loss): all skip together
            opt.zero_grad(set_to_none=True)  # drop the non-finite gradients
            skipped += 1
            if skipped > 10:
                raise DivergedError(
                    f"loss is NaN/inf in {skipped} steps of epoch {st.epoch}; lower optim.lr"
                )
            t_mark = time.perf_counter()
            continue
        opt.step()
        sched.step()
        st.step += 1
        losses.append(float(loss.detach()))
        n_samples += b * world()[1]
        t_mark = time.perf_counter()
        busy += t_mark - t_got
        cpu += time.thread_time() - c_got
    if not losses:
        raise tally.no_batch_error()
    out = {
        "loss": float(np.mean(losses)),
        "steps_in_epoch": len(losses),
        "samples_per_s": n_samples / max(wait + busy, 1e-9),
        "data_wait_share": wait / max(wait + busy, 1e-9),
        "step_seconds": busy / len(losses),
        # the step's CPU seconds on the training thread (on CPU with one torch thread,
        # the step's compute): a figure that time stolen by other processes does not move
        "step_cpu_seconds": cpu / len(losses),
        "nonfinite_steps": skipped,
        **where(device),
    }
    if rejection is not None:
        out["rej_temperature"] = float(rejection.temperature.detach())
    return out


def train_loop(config: dict) -> None:
    """Ray Train entry point: ``config = {"cfg": PretrainConfig as dict, "run": {...}}``."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = from_dict(PretrainConfig, config["cfg"])
    run = config["run"]
    torch.set_num_threads(max(1, int(run.get("torch_threads", 1))))
    rank, _ = world()
    device = ray.train.torch.get_device()
    encoder, loss_fn, rejection = build_modules(cfg)
    model = ray.train.torch.prepare_model(encoder)  # [2]
    loss_fn.to(device)
    extra = list(loss_fn.parameters()) + (
        list(rejection.parameters()) if rejection is not None else []
    )
    if rejection is not None:
        rejection.to(device)
    opt = torch.optim.Adam(
        list(model.parameters()) + extra, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    sched = torch.optim.lr_scheduler.StepLR(
        opt, step_size=cfg.optim.decay_every, gamma=cfg.optim.decay
    )
    st = State()
    ckpt = ray.train.get_checkpoint()  # [1]
    if ckpt is not None:
        st = _restore(ckpt, model, loss_fn, rejection, opt, sched)
    # [3] one pass of the data for all epochs, cut into epochs by step count
    stream = worker_stream(run["steps_per_epoch"], cfg.train.per_worker_batch, device)
    dev = _load_dev(run, cfg) if rank == 0 else None
    truth = np.load(run["truth"]) if rank == 0 and run.get("truth") else None
    speakers = None
    if rank == 0 and run.get("speakers"):
        with np.load(run["speakers"]) as z:
            speakers = (z["flat"], z["offsets"])
    analysis = Analysis(truth, speakers, draws=bool(run.get("speakers")))
    tally = worker_tally(cfg, run, rank, st)
    while st.epoch < cfg.train.epochs:
        _maybe_fail(cfg, st.epoch, run)
        stats = run_epoch(
            cfg, model, loss_fn, rejection, opt, sched, stream, device, st, analysis, tally
        )
        metrics = {
            "epoch": st.epoch,
            "step": st.step,
            "lr": sched.get_last_lr()[0],
            **stats,
            **analysis.summary(),
        }
        seen = tally.flush(check_now=False)
        metrics["unreadable_rows"] = seen["rows"]
        st.unreadable, st.unreadable_token = seen, run.get("token")
        st.epoch += 1
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                metrics.update(_dev_metrics(model, dev, device))
                if metrics.get("dev_eer", np.inf) < st.best_eer:
                    st.best_eer = metrics["dev_eer"]
                    st.best_model = {
                        k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()
                    }
                metrics["best_dev_eer"] = st.best_eer
                st.history.append(metrics)
                analysis.save(os.path.join(run["out"], "rejection_weights.npz"))
                _save(tmp, model, loss_fn, rejection, opt, sched, st)
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)  # [4]
            if rank == 0:  # after report: a kill before the checkpoint lands re-runs the epoch,
                _log(run, metrics)  # and _log logs each epoch once
        if st.epoch < cfg.train.epochs:  # after the last epoch the summary reports it
            tally.check(seen)  # too many unreadable rows: stop; this epoch's checkpoint is kept


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


def _load_dev(run: dict, cfg: PretrainConfig):
    if not run.get("dev_utts"):
        return None
    import pyarrow.parquet as pq

    from raysv.evaluation.model_eval import trial_features

    utts = pq.read_table(run["dev_utts"])
    trials = pq.read_table(run["dev_trials"])
    return trials, trial_features(utts, cfg.data.n_mels, cfg.data.eval_max_seconds)


def _dev_metrics(model, dev, device) -> dict:
    if dev is None:
        return {}
    from raysv.evaluation.model_eval import evaluate_model

    r = evaluate_model(_unwrap(model), dev[0], dev[1], str(device))
    return {
        "dev_eer": r["eer"],
        "dev_min_dcf_0.01": r["min_dcf_0.01"],
        "dev_min_dcf_0.05": r["min_dcf_0.05"],
    }


def _log(run: dict, metrics: dict) -> None:
    if run.get("mlflow_run_id"):
        from raysv.tracking.mlflow_tracking import log_epoch_once

        log_epoch_once(run["tracking_uri"], run["mlflow_run_id"], metrics, int(metrics["epoch"]))


def _maybe_fail(cfg: PretrainConfig, epoch: int, run: dict) -> None:
    """Testing aid: fail once (marker file) at ``train.inject_failure_at_epoch``."""
    if cfg.train.inject_failure_at_epoch != epoch or world()[0] != 0:
        return
    marker = os.path.join(run["out"], f".injected_failure_{epoch}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"injected failure at epoch {epoch} (train.inject_failure_at_epoch)")
