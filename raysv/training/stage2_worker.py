"""Stage II's objective: AAM-softmax on pseudo labels behind a loss gate, inside the
shared worker skeleton (``raysv.training.worker``).

Runs in each Ray Train worker (one DDP rank). What this module fills in: the
encoder + AAM head (:func:`build_classifier`, one module so DDP synchronises
both), one epoch of gated steps (:func:`run_epoch`), the gate threshold for the
next epoch (:func:`next_tau`) and the gate analysis. The starting encoder is
scored on dev first and is the one to beat (the skeleton keeps the best).

Every rank sees the global per-sample losses of each step (one small
all-gather), so the DLG threshold is fitted to the same numbers everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raysv.losses import gates
from raysv.losses.aam import AAMSoftmax
from raysv.training import unreadable
from raysv.training.distributed import gather_no_grad, where, world
from raysv.training.stage2_config import Stage2Config
from raysv.training.worker import Objective, State, train_worker, unwrap


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
    """The skeleton's state plus the gate threshold for the next epoch (None = open)."""

    tau: float | None = None


def build_classifier(cfg: Stage2Config, n_classes: int, head_init: str | None = None) -> Classifier:
    """Encoder (from ``init_checkpoint`` if given) + a new AAM head, same on every rank.

    ``head_init``: a ``(C, D)`` .npy of class directions (``data.head_init``); its zero
    rows (classes with no embedding) keep the random initialisation.
    """
    from raysv.models import build_encoder, embedding_dim
    from raysv.models.checkpoint import read_checkpoint

    torch.manual_seed(cfg.train.seed)
    encoder = build_encoder(cfg.model.name, cfg.data.n_mels, **cfg.model.kwargs)
    if cfg.init_checkpoint:
        state, _ = read_checkpoint(cfg.init_checkpoint)
        encoder.load_state_dict(state)
    head = AAMSoftmax(
        embedding_dim(encoder, cfg.data.n_mels), n_classes, cfg.head.margin, cfg.head.scale
    )
    if head_init:
        w = torch.from_numpy(np.load(head_init))
        if tuple(w.shape) != tuple(head.weight.shape):
            raise ValueError(
                f"data.head_init: class directions of shape {tuple(w.shape)}, the head needs "
                f"{tuple(head.weight.shape)} (embeddings made by the encoder being trained)"
            )
        with torch.no_grad():
            # the random rows are ~N(0, 2/(C+D)): scale the directions to their norm
            scale = head.weight.norm(dim=1).mean()
            known = w.norm(dim=1) > 0
            head.weight[known] = w[known] * scale
    return Classifier(encoder, head)


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
    head = unwrap(model).head
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
            loss = loss + cfg.l2_to_init * l2_distance(unwrap(model).encoder, anchor)
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


def first_tau(cfg: Stage2Config) -> float | None:
    """Gate threshold of epoch 0: LGL's fixed ``tau`` when the gate closes at once
    (no head-only epoch, ``gate.warmup_epochs: 0``), else None (open)."""
    if cfg.gate.name == "lgl" and cfg.gate_closes_at == 0 and cfg.gate.share is None:
        return cfg.gate.tau
    return None


def next_tau(cfg: Stage2Config, epoch_done: int, losses: np.ndarray) -> float | None:
    """Gate threshold for epoch ``epoch_done + 1`` (None = open gate); the gate closes at
    ``cfg.gate_closes_at`` (after the head-only epochs and the gate's warm-up)."""
    nxt = epoch_done + 1
    if cfg.gate.name == "none" or nxt < cfg.gate_closes_at:
        return None
    if cfg.gate.name == "lgl":
        if cfg.gate.share is not None and len(losses):  # tau: auto (see GateSpec.share)
            return float(np.quantile(losses, cfg.gate.share))
        return cfg.gate.tau
    return gates.mixture_threshold(losses, seed=cfg.gate.seed + epoch_done)


class GatedAAMObjective(Objective):
    """Stage II: encoder + AAM head on pseudo labels, the loss gate, Adam with two groups
    (encoder, head; see :func:`set_learning_rate`)."""

    state_cls = Stage2State

    def __init__(self, cfg: Stage2Config, run: dict, device, prepare):
        self.cfg, self.device = cfg, device
        self.model = prepare(build_classifier(cfg, run["n_classes"], run.get("head_init")))
        inner = unwrap(self.model)
        self.opt = torch.optim.Adam(
            [
                {"params": list(inner.encoder.parameters())},
                {"params": list(inner.head.parameters())},
            ],
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
        )
        # the initial encoder is the candidate to beat when there is one
        self.score_initial = bool(cfg.init_checkpoint)
        self.anchor = None
        if cfg.l2_to_init > 0:
            # The weights the run started from (checkpoint restore keeps this the same
            # on resume: build_classifier reloads init_checkpoint before restoring).
            init = build_classifier(cfg, run["n_classes"]).encoder.to(device)
            self.anchor = [p.detach().clone() for p in init.parameters()]
        truth = np.load(run["true_label"]) if world()[0] == 0 and run.get("true_label") else None
        self.analysis = GateAnalysis(truth)

    def encoder(self) -> nn.Module:
        return unwrap(self.model).encoder

    def initial_state(self) -> Stage2State:
        return Stage2State(tau=first_tau(self.cfg))

    def train_epoch(self, stream, st: Stage2State, tally: unreadable.Tally) -> dict:
        return run_epoch(
            self.cfg,
            self.model,
            self.opt,
            stream,
            self.device,
            st,
            self.analysis,
            self.anchor,
            tally,
        )

    def end_epoch(self, st: Stage2State) -> dict:
        losses = self.analysis.losses()
        summary = self.analysis.summary()
        st.tau = next_tau(self.cfg, st.epoch, losses)
        return summary

    def checkpoint(self) -> dict:
        return {"optimizer": self.opt.state_dict()}

    def restore(self, blob: dict) -> None:
        self.opt.load_state_dict(blob["optimizer"])


def train_loop(config: dict) -> None:
    """Ray Train entry point: ``config = {"cfg": Stage2Config as dict, "run": {...}}``."""
    train_worker(config, Stage2Config, GatedAAMObjective)
