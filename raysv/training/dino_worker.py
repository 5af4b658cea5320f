"""Stage I's DINO objective (:mod:`raysv.losses.dino`) inside the shared worker skeleton.

Runs in each Ray Train worker (one DDP rank). The student (encoder + DINO head)
is the DDP module; the teacher is a plain copy that every rank updates with the
same EMA of the student after each step, so teachers stay identical. Per step:
the student embeds every view (global and local crops), the teacher the global
ones; the per-item loss is gathered over the global batch (every rank computes
the same loss, as the contrastive objective does), the centre is updated from
the teacher outputs of the global batch (one all-reduce of a (1, K) sum), then
the teacher follows the student.

In dialogue mode the global views come from different utterances of one
dialogue and, as for the contrastive losses, the rejection module weights each
dialogue by the compactness of its global views' student embeddings (soft
rejection of dialogues that mix speakers). The dev trials score the *teacher*'s
encoder (DINO's practice: the teacher is the better model), with the teacher's
own batch-norm statistics; the best one is saved. The student's head runs once
on global and local crops together, in float32. Batch norm is per worker (no SyncBatchNorm): its statistics are a
worker's batch, as in the contrastive objective; the equivalence of 2 x B and
1 x 2B holds for encoders and heads without batch norm (tested).
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch

from raysv.errors import DivergedError
from raysv.losses.dino import (
    DinoHead,
    DinoLoss,
    Student,
    collapse_figures,
    collapse_sums,
    ema_update,
    teacher_momentum,
    teacher_temperature,
)
from raysv.training import unreadable
from raysv.training.config import PretrainConfig
from raysv.training.distributed import (
    all_reduce_sum,
    gather_no_grad,
    gather_with_grad,
    where,
    world,
)
from raysv.training.worker import Objective, State, unwrap

# collapse: mean per-sample entropy / log K above this (every output uniform) ...
UNIFORM_ENTROPY = 0.999
# ... or the KL of the mean output from uniform / log K above this (all on one prototype)
ONE_PROTOTYPE_KL = 0.95


def build_dino(cfg: PretrainConfig):
    """``(student, teacher, loss, rejection or None)``, identically initialised on every rank;
    the teacher starts as a copy of the student and takes no gradient."""
    from raysv.losses.rejection import Rejection
    from raysv.models import build_encoder, embedding_dim

    torch.manual_seed(cfg.train.seed)
    encoder = build_encoder(cfg.model.name, cfg.data.n_mels, **cfg.model.kwargs)
    d = cfg.dino
    head = DinoHead(
        embedding_dim(encoder, cfg.data.n_mels),
        d.out_dim,
        d.hidden_dim,
        d.bottleneck_dim,
        d.head_layers,
        d.head_bn,
        d.norm_last_layer,
    )
    student = Student(encoder, head)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad = False
    loss = DinoLoss(d.out_dim, d.student_temp, d.center_momentum)
    r = cfg.loss.rejection
    rejection = (
        Rejection(r.threshold, r.temperature, r.max_temperature, r.learn_temperature, r.normalise)
        if cfg.rejection_active
        else None
    )
    return student, teacher, loss, rejection


def clip_per_parameter(params, max_norm: float) -> None:
    """DINO's clipping: each parameter's gradient scaled to norm <= ``max_norm`` on its own."""
    for p in params:
        if p.grad is not None:
            norm = p.grad.norm()
            if norm > max_norm:
                p.grad.mul_(max_norm / (norm + 1e-6))


class DinoObjective(Objective):
    """Stage I with DINO: student + EMA teacher, multi-crop views, Adam + StepLR
    (the stage's optimiser; wespeaker's recipe uses SGD at 0.2 with a cosine schedule)."""

    def __init__(self, cfg: PretrainConfig, run: dict, device, prepare):
        from raysv.training.pretrain_worker import Analysis

        self.cfg, self.device = cfg, device
        student, teacher, self.loss_fn, self.rejection = build_dino(cfg)
        self.model = prepare(student)
        self.teacher = teacher.to(device)
        self.loss_fn.to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.rejection is not None:
            self.rejection.to(device)
            params += list(self.rejection.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.sched = torch.optim.lr_scheduler.StepLR(
            self.opt, step_size=cfg.optim.decay_every, gamma=cfg.optim.decay
        )
        self.total_steps = cfg.train.epochs * int(run["steps_per_epoch"])
        rank = world()[0]
        truth = np.load(run["truth"]) if rank == 0 and run.get("truth") else None
        speakers = None
        if rank == 0 and run.get("speakers"):
            with np.load(run["speakers"]) as z:
                speakers = (z["flat"], z["offsets"])
        self.analysis = Analysis(truth, speakers, draws=bool(run.get("speakers")))
        self.watch: torch.Tensor | None = None  # collapse_sums over the epoch

    def encoder(self):
        return self.teacher.encoder

    def train_epoch(self, stream, st: State, tally: unreadable.Tally) -> dict:
        cfg, d = self.cfg, self.cfg.dino
        student, teacher = self.model, self.teacher
        student.train()
        teacher.train()  # batch statistics, as the student (its running ones are copied)
        amp = cfg.train.use_gpu and cfg.train.amp
        temp = teacher_temperature(
            st.epoch,
            cfg.train.epochs,
            d.warmup_teacher_temp,
            d.teacher_temp,
            d.warmup_teacher_share,
        )
        last_layer = unwrap(student).head.last_layer_parameters()
        freeze = st.epoch < d.freeze_last_layer_epochs
        losses, n, wait, busy, skipped = [], 0, 0.0, 0.0, 0
        self.analysis.reset()
        self.watch = None
        t_mark = time.perf_counter()
        for batch in tally.guard(stream.epoch()):
            t_got = time.perf_counter()
            wait += t_got - t_mark
            glob, loc, idx = batch["global"], batch["local"], batch["idx"]
            b, g, n_loc = glob.shape[0], glob.shape[1], loc.shape[1]
            tally.step()
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                crops = [glob.reshape(b * g, *glob.shape[2:])]
                if n_loc:
                    crops.append(loc.reshape(b * n_loc, *loc.shape[2:]))
                emb_all, s_all = student(crops)  # one DDP forward: every view
                with torch.no_grad():
                    _, t_g = teacher(crops[:1])  # the teacher sees the global views
            # (B*G + B*L, K) -> (B, G + L, K): global views first, in the teacher's order
            views = [s_all[: b * g].reshape(b, g, -1)]
            if n_loc:
                views.append(s_all[b * g :].reshape(b, n_loc, -1))
            t_g = t_g.float().reshape(b, g, -1)
            per = gather_with_grad(self.loss_fn(torch.cat(views, dim=1), t_g, temp))  # (W*B,)
            if self.rejection is not None:
                emb = gather_with_grad(emb_all[: b * g].float().reshape(b, g, -1))
                loss, w, c = self.rejection(per[:, None], emb)
                ids, picks = gather_no_grad(idx), gather_no_grad(batch["pick"])
                if world()[0] == 0:
                    self.analysis.add(ids, w, c, picks if self.analysis.draws else None)
            else:
                loss = per.mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if not torch.isfinite(loss):  # the global loss: every rank skips together
                self.opt.zero_grad(set_to_none=True)
                skipped += 1
                if skipped > 10:
                    raise DivergedError(
                        f"DINO loss is NaN/inf in {skipped} steps of epoch {st.epoch}; "
                        "lower optim.lr"
                    )
                t_mark = time.perf_counter()
                continue
            if d.clip_grad > 0:
                clip_per_parameter(student.parameters(), d.clip_grad)
            if freeze:  # the prototypes stay put while the rest settles (DINO)
                for p in last_layer:
                    p.grad = None
            self.opt.step()
            self.sched.step()
            k = t_g.shape[-1]
            flat = t_g.detach().reshape(-1, k)
            sums = collapse_sums(flat, self.loss_fn.center, temp)  # before the centre moves
            self.watch = sums if self.watch is None else self.watch + sums
            total = (  # the global batch's teacher outputs: every rank gets the same centre
                all_reduce_sum(flat.sum(0, keepdim=True)),
                float(b * g * world()[1]),
            )
            self.loss_fn.update_center(t_g, total)
            momentum = teacher_momentum(st.step, self.total_steps, d.teacher_momentum)
            ema_update(teacher, unwrap(student), momentum)
            st.step += 1
            losses.append(float(loss.detach()))
            n += b * world()[1]
            t_mark = time.perf_counter()
            busy += t_mark - t_got
        if not losses:
            raise tally.no_batch_error()
        out = {
            "loss": float(np.mean(losses)),
            "lr": self.sched.get_last_lr()[0],
            "teacher_temp": temp,
            "teacher_momentum": momentum,
            "steps_in_epoch": len(losses),
            "samples_per_s": n / max(wait + busy, 1e-9),
            "data_wait_share": wait / max(wait + busy, 1e-9),
            "step_seconds": busy / len(losses),
            "nonfinite_steps": skipped,
            **where(self.device),
        }
        if self.rejection is not None:
            out["rej_temperature"] = float(self.rejection.temperature.detach())
        return out

    def end_epoch(self, st: State) -> dict:
        out = self.analysis.summary()
        if self.watch is not None:  # every rank stepped (equal step counts): all reduce
            out.update(collapse_figures(all_reduce_sum(self.watch.clone())))
            st.stopped = collapse(
                self.cfg, st.epoch, out["teacher_entropy"], out["teacher_kl_uniform"]
            )
        return out

    def checkpoint(self) -> dict:
        return {
            "teacher": self.teacher.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "rejection": self.rejection.state_dict() if self.rejection is not None else None,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
        }

    def restore(self, blob: dict) -> None:
        self.teacher.load_state_dict(blob["teacher"])
        self.loss_fn.load_state_dict(blob["loss"])
        if self.rejection is not None and blob["rejection"] is not None:
            self.rejection.load_state_dict(blob["rejection"])
        self.opt.load_state_dict(blob["optimizer"])
        self.sched.load_state_dict(blob["scheduler"])

    def after_epoch(self, run: dict) -> None:
        self.analysis.save(os.path.join(run["out"], "rejection_weights.npz"))


def collapse(cfg: PretrainConfig, epoch: int, entropy: float, kl: float) -> str | None:
    """The one-line reason to stop when ``dino.stop_on_collapse`` and, after the
    teacher-temperature warm-up (and the first epoch), the teacher's outputs over the
    epoch are uniform or sit on one prototype (thresholds :data:`UNIFORM_ENTROPY`,
    :data:`ONE_PROTOTYPE_KL`); else None. The skeleton records and checkpoints the
    epoch, then stops the run; the driver saves the best encoder and raises
    :class:`~raysv.training.worker.TrainingStopped` with it (no retries)."""
    d = cfg.dino
    warm = max(1, int(round(d.warmup_teacher_share * cfg.train.epochs)))
    if not d.stop_on_collapse or epoch < warm:
        return None
    what = None
    if entropy > UNIFORM_ENTROPY:
        what = f"every teacher output is uniform (entropy {entropy:.4f} of log K)"
    elif kl > ONE_PROTOTYPE_KL:
        what = f"the teacher outputs sit on one prototype (KL to uniform {kl:.3f} of log K)"
    if what is None:
        return None
    return (
        f"DINO collapsed in epoch {epoch}: {what}; lower optim.lr or dino.teacher_temp, "
        "or raise dino.teacher_momentum (dino.stop_on_collapse: false to go on)"
    )


def final_encoder_state(blob: dict) -> dict:
    """The teacher's encoder weights of a DINO checkpoint (``state.pt`` dict)."""
    prefix = "encoder."
    return {k[len(prefix) :]: v for k, v in blob["teacher"].items() if k.startswith(prefix)}
