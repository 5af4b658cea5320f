"""Stage I's objective: contrastive losses over dialogue segments (or SimCLR views),
with the rejection module, inside the shared worker skeleton (``raysv.training.worker``).

Runs in each Ray Train worker (one DDP rank). What this module fills in: the
encoder, loss and rejection modules (:func:`build_modules`), one epoch of steps
with global negatives from every worker (:func:`run_epoch`) and rank 0's
rejection-weight analysis (:class:`Analysis`). Checkpointing, resume, dev
scoring, best-encoder keeping and logging are the skeleton's.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from raysv.errors import DivergedError
from raysv.training import unreadable
from raysv.training.config import PretrainConfig
from raysv.training.distributed import gather_no_grad, gather_with_grad, where, world
from raysv.training.worker import Objective, State, train_worker


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


class ContrastiveObjective(Objective):
    """Stage I: the encoder under a contrastive loss (and rejection), Adam + StepLR."""

    def __init__(self, cfg: PretrainConfig, run: dict, device, prepare):
        self.cfg, self.device = cfg, device
        encoder, self.loss_fn, self.rejection = build_modules(cfg)
        self.model = prepare(encoder)
        self.loss_fn.to(device)
        extra = list(self.loss_fn.parameters())
        if self.rejection is not None:
            self.rejection.to(device)
            extra += list(self.rejection.parameters())
        self.opt = torch.optim.Adam(
            list(self.model.parameters()) + extra,
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
        )
        self.sched = torch.optim.lr_scheduler.StepLR(
            self.opt, step_size=cfg.optim.decay_every, gamma=cfg.optim.decay
        )
        rank = world()[0]
        truth = np.load(run["truth"]) if rank == 0 and run.get("truth") else None
        speakers = None
        if rank == 0 and run.get("speakers"):
            with np.load(run["speakers"]) as z:
                speakers = (z["flat"], z["offsets"])
        self.analysis = Analysis(truth, speakers, draws=bool(run.get("speakers")))

    def train_epoch(self, stream, st: State, tally: unreadable.Tally) -> dict:
        stats = run_epoch(
            self.cfg,
            self.model,
            self.loss_fn,
            self.rejection,
            self.opt,
            self.sched,
            stream,
            self.device,
            st,
            self.analysis,
            tally,
        )
        return {"lr": self.sched.get_last_lr()[0], **stats}

    def end_epoch(self, st: State) -> dict:
        return self.analysis.summary()

    def checkpoint(self) -> dict:
        return {
            "loss": self.loss_fn.state_dict(),
            "rejection": self.rejection.state_dict() if self.rejection is not None else None,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
        }

    def restore(self, blob: dict) -> None:
        self.loss_fn.load_state_dict(blob["loss"])
        if self.rejection is not None and blob["rejection"] is not None:
            self.rejection.load_state_dict(blob["rejection"])
        self.opt.load_state_dict(blob["optimizer"])
        self.sched.load_state_dict(blob["scheduler"])

    def after_epoch(self, run: dict) -> None:
        self.analysis.save(os.path.join(run["out"], "rejection_weights.npz"))


def stage1_objective(cfg: PretrainConfig, run: dict, device, prepare) -> Objective:
    """Stage I's objective for ``loss.name``: DINO's, or the contrastive one."""
    if cfg.loss.name == "dino":
        from raysv.training.dino_worker import DinoObjective

        return DinoObjective(cfg, run, device, prepare)
    return ContrastiveObjective(cfg, run, device, prepare)


def train_loop(config: dict) -> None:
    """Ray Train entry point: ``config = {"cfg": PretrainConfig as dict, "run": {...}}``."""
    train_worker(config, PretrainConfig, stage1_objective)
