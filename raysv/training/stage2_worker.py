"""Stage II training loop on pseudo labels: runs inside each Ray Train worker.

Takes a plain dict (``{"cfg": ..., "run": ...}``). Ray plugs in at:

# [1] ray.train.get_checkpoint(): resume after a restart or a rerun;
# [2] ray.train.torch.prepare_model(): DDP over encoder + AAM head;
# [3] ray.train.get_dataset_shard(): this worker's stream of labelled crops;
# [4] ray.train.report(): metrics every epoch, with a checkpoint from rank 0.

Every rank sees the global per-sample losses of each step (one small
all-gather), so the DLG threshold is fitted to the same numbers everywhere.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raysv.config import from_dict
from raysv.losses import gates
from raysv.losses.aam import AAMSoftmax
from raysv.models.checkpoint import load_training_state, plain_values
from raysv.training import unreadable
from raysv.training.data import worker_stream
from raysv.training.distributed import gather_no_grad, where, world
from raysv.training.pretrain_worker import (
    State,
    _dev_metrics,
    _load_dev,
    _log,
    _maybe_fail,
    worker_tally,
)
from raysv.training.stage2_config import Stage2Config


class Classifier(nn.Module):
    """Encoder + AAM head in one module so that DDP synchronises both.

    ``forward(feats (B, T, n_mels)) -> cos (B, C)`` between embeddings and class weights.
    """

    def __init__(self, encoder: nn.Module, head: AAMSoftmax):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head.cosine(self.encoder(feats))


@dataclass
class Stage2State(State):
    """Stage I's state plus the gate threshold for the next epoch (None = open)."""

    tau: float | None = None
    init_dev_eer: float | None = None
    best_epoch: int = -1  # -1: the initial encoder is still the best on dev


def embed_dim(encoder: nn.Module, n_mels: int) -> int:
    """D of an encoder, from one forward pass on silence in eval mode."""
    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        d = int(encoder(torch.zeros(1, 100, n_mels)).shape[1])
    encoder.train(was)
    return d


def build_classifier(cfg: Stage2Config, n_classes: int) -> Classifier:
    """Encoder (from ``init_checkpoint`` if given) + a new AAM head, same on every rank."""
    from raysv.models import build_encoder
    from raysv.models.checkpoint import read_checkpoint

    torch.manual_seed(cfg.train.seed)
    encoder = build_encoder(cfg.model.name, cfg.data.n_mels, **cfg.model.kwargs)
    if cfg.init_checkpoint:
        state, _ = read_checkpoint(cfg.init_checkpoint)
        encoder.load_state_dict(state)
    head = AAMSoftmax(
        embed_dim(encoder, cfg.data.n_mels), n_classes, cfg.head.margin, cfg.head.scale
    )
    return Classifier(encoder, head)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


class GateAnalysis:
    """Per-epoch gate statistics from the globally gathered step records.

    ``true_label (n_rows,)``: for analysis only, the pseudo-label id that the
    Hungarian mapping gives each row's true speaker (-1 if none), or None.
    """

    def __init__(self, true_label: np.ndarray | None):
        self.true_label = true_label
        self.rows: list[np.ndarray] = []

    def add(self, rec: torch.Tensor) -> None:
        self.rows.append(rec.cpu().numpy())

    def losses(self) -> np.ndarray:
        return np.concatenate([r[:, 0] for r in self.rows]) if self.rows else np.zeros(0)

    def summary(self) -> dict:
        if not self.rows:
            return {}
        r = np.concatenate(self.rows)
        idx = r[:, 1].astype(np.int64)
        passed, corrected = r[:, 2] > 0.5, r[:, 3] > 0.5
        used, orig = r[:, 4].astype(np.int64), r[:, 5].astype(np.int64)
        out = {
            "gate_pass_share": float(passed.mean()),
            "gate_relabel_share": float(corrected.mean()),
            "gate_train_share": float((passed | corrected).mean()),
            "sample_loss_median": float(np.median(r[:, 0])),
        }
        if self.true_label is not None:
            truth = self.true_label[idx]
            ok = orig == truth
            out["reliable_share_all"] = float(ok.mean())
            if passed.any():
                out["reliable_share_passed"] = float(ok[passed].mean())
            if (~passed).any():
                out["reliable_share_rejected"] = float(ok[~passed].mean())
            if corrected.any():
                out["relabel_correct_share"] = float((used[corrected] == truth[corrected]).mean())
        self.rows = []
        return out


def l2_distance(encoder: nn.Module, anchor: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squared differences between the encoder's parameters and ``anchor`` (same order)."""
    return sum(((p - a) ** 2).sum() for p, a in zip(encoder.parameters(), anchor, strict=True))


def run_epoch(
    cfg,
    model,
    opt,
    stream,
    device,
    st: Stage2State,
    analysis: GateAnalysis,
    anchor=None,
    tally: unreadable.Tally | None = None,
):
    """One pass over this worker's shard; returns epoch statistics.

    ``anchor``: initial encoder parameters for the ``l2_to_init`` penalty (or None).
    ``tally``: checks the share of rows skipped as unreadable (rank 0).
    """
    tally = tally or unreadable.Tally()
    model.train()
    head = _unwrap(model).head
    amp = cfg.train.use_gpu and cfg.train.amp
    gate, tau = cfg.gate.name, st.tau
    losses, correct, seen, wait, busy = [], 0, 0, 0.0, 0.0
    it = tally.guard(stream.epoch())  # this epoch's batches of the worker's one data stream
    t_mark = time.perf_counter()
    for batch in it:
        t_got = time.perf_counter()
        wait += t_got - t_mark
        feats, labels, idx = batch["feats"], batch["label"], batch["idx"]
        tally.step()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            cos = model(feats).float()  # (B, C)
        per = head.per_sample_loss(cos, labels)
        probs = head.probabilities(cos) if gate == "dlg-lc" else None
        d = gates.decide(gate, per, labels, probs, tau, cfg.gate.tau2)
        # LC: corrected samples are trained towards their predicted class.
        # (labels equal the pseudo labels where nothing was corrected; no host sync here)
        per_used = head.per_sample_loss(cos, d.labels) if gate == "dlg-lc" else per
        loss = gates.gated_mean(per_used, d.train)
        if anchor is not None:
            loss = loss + cfg.l2_to_init * l2_distance(_unwrap(model).encoder, anchor)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        set_learning_rate(cfg, opt, st.step, st.epoch)
        opt.step()
        st.step += 1
        rec = torch.stack(
            [
                per.detach().double(),
                idx.double(),
                d.passed.double(),
                d.corrected.double(),
                d.labels.double(),
                labels.double(),
            ],
            dim=1,
        )  # (B, 6)
        analysis.add(gather_no_grad(rec))
        losses.append(float(loss.detach()))
        correct += int((cos.argmax(1) == labels).sum())
        seen += labels.shape[0]
        t_mark = time.perf_counter()
        busy += t_mark - t_got
    if not losses:
        raise tally.no_batch_error()
    out = {
        "loss": float(np.mean(losses)),
        "train_accuracy": correct / max(seen, 1),
        "steps_in_epoch": len(losses),
        "samples_per_s": seen * world()[1] / max(wait + busy, 1e-9),
        "data_wait_share": wait / max(wait + busy, 1e-9),
        **where(device),
    }
    if tau is not None:
        out["gate_tau"] = float(tau)  # absent while the gate is open (warm-up)
    return out


def set_learning_rate(cfg: Stage2Config, opt, step: int, epoch: int) -> float:
    """Step-decayed learning rate; the encoder's group (0) is scaled by ``encoder_lr_scale``
    and is 0 during head warm-up."""
    lr = cfg.optim.lr * cfg.optim.decay ** (step // cfg.optim.decay_every)
    warm = epoch < cfg.head_warmup_epochs
    opt.param_groups[0]["lr"] = 0.0 if warm else lr * cfg.encoder_lr_scale
    opt.param_groups[1]["lr"] = lr
    return lr


def next_tau(cfg: Stage2Config, epoch_done: int, losses: np.ndarray) -> float | None:
    """Gate threshold for epoch ``epoch_done + 1`` (None = open gate)."""
    nxt = epoch_done + 1
    if cfg.gate.name == "none" or nxt < cfg.gate.warmup_epochs:
        return None
    if cfg.gate.name == "lgl":
        if cfg.gate.share is not None and len(losses):  # tau: auto (see GateSpec.share)
            return float(np.quantile(losses, cfg.gate.share))
        return cfg.gate.tau
    return gates.mixture_threshold(losses, seed=cfg.gate.seed + epoch_done)


def _save(path: str, model, opt, st: Stage2State) -> None:
    torch.save(
        {
            "model": _unwrap(model).state_dict(),
            "optimizer": opt.state_dict(),
            "state": plain_values(st.__dict__),
        },
        os.path.join(path, "state.pt"),
    )


def _restore(ckpt, model, opt) -> Stage2State:
    with ckpt.as_directory() as d:
        blob = load_training_state(os.path.join(d, "state.pt"))
    _unwrap(model).load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    return Stage2State(**blob["state"])


def _encoder_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in _unwrap(model).encoder.state_dict().items()}


def train_loop(config: dict) -> None:
    """Ray Train entry point: ``config = {"cfg": Stage2Config as dict, "run": {...}}``."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = from_dict(Stage2Config, config["cfg"])
    run = config["run"]
    torch.set_num_threads(max(1, int(run.get("torch_threads", 1))))
    rank, _ = world()
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(build_classifier(cfg, run["n_classes"]))  # [2]
    inner = _unwrap(model)
    opt = torch.optim.Adam(
        [{"params": list(inner.encoder.parameters())}, {"params": list(inner.head.parameters())}],
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
    )
    st = Stage2State()
    ckpt = ray.train.get_checkpoint()  # [1]
    if ckpt is not None:
        st = _restore(ckpt, model, opt)
    # [3] one pass of the data for all epochs, cut into epochs by step count
    stream = worker_stream(run["steps_per_epoch"], cfg.train.per_worker_batch, device)
    dev = _load_dev(run, cfg) if rank == 0 else None
    if rank == 0 and ckpt is None and cfg.init_checkpoint and dev is not None:
        # The initial encoder is the candidate to beat: a round never ends worse on dev.
        st.init_dev_eer = st.best_eer = _dev_metrics(inner.encoder, dev, device)["dev_eer"]
        st.best_model = _encoder_state(model)
    anchor = None
    if cfg.l2_to_init > 0:
        # The weights the run started from (checkpoint restore keeps this the same
        # on resume: build_classifier reloads init_checkpoint before restoring).
        init = build_classifier(cfg, run["n_classes"]).encoder.to(device)
        anchor = [p.detach().clone() for p in init.parameters()]
    truth = np.load(run["true_label"]) if rank == 0 and run.get("true_label") else None
    analysis = GateAnalysis(truth)
    tally = worker_tally(cfg, run, rank, st)
    while st.epoch < cfg.train.epochs:
        _maybe_fail(cfg, st.epoch, run)
        stats = run_epoch(cfg, model, opt, stream, device, st, analysis, anchor, tally)
        losses = analysis.losses()
        metrics = {"epoch": st.epoch, "step": st.step, **stats, **analysis.summary()}
        seen = tally.flush(check_now=False)
        metrics["unreadable_rows"] = seen["rows"]
        st.unreadable, st.unreadable_token = seen, run.get("token")
        st.tau = next_tau(cfg, st.epoch, losses)
        st.epoch += 1
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                metrics.update(_dev_metrics(inner.encoder, dev, device))
                if metrics.get("dev_eer", np.inf) < st.best_eer:
                    st.best_eer = metrics["dev_eer"]
                    st.best_model = _encoder_state(model)
                    st.best_epoch = metrics["epoch"]
                metrics["best_dev_eer"] = st.best_eer
                st.history.append(metrics)
                _save(tmp, model, opt, st)
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)  # [4]
            if rank == 0:  # after report: a kill before the checkpoint lands re-runs the epoch,
                _log(run, metrics)  # and _log logs each epoch once
        if st.epoch < cfg.train.epochs:  # after the last epoch the summary reports it
            tally.check(seen)  # too many unreadable rows: stop; this epoch's checkpoint is kept
