"""Typed configuration of Stage II training on pseudo labels (``raysv train``).

One tree: data (pseudo-label table, manifest, trials), model (or an initial
encoder checkpoint), head (AAM-softmax), gate (none / lgl / dlg / dlg-lc),
optim, train (shared with Stage I). Unknown keys are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raysv.audio.augment import AugmentConfig
from raysv.training.config import ModelSpec, OptimSpec, TrainSpec


@dataclass
class Stage2Data:
    """Training rows and evaluation inputs.

    Args:
        labels: pseudo-label table (file or folder of Parquet parts, from ``raysv cluster``):
            ``utt_id, cluster, distance, kept, round``; rows with ``kept`` false are not trained on.
        utterances: the utterances manifest (paths and segment bounds of every ``utt_id``).
        dev_trials / test_trials: trial lists; dev picks the best epoch, test is reported only.
        crop_seconds: training crop (the LGL paper uses 3 s).
        n_mels: log-mel bins; None = those of ``init_checkpoint`` (40 without one).
        eval_max_seconds: evaluation embeds at most this much of each utterance.
        analysis: where the manifest has speakers, report per epoch (analysis only, never
            used for training) the reliable-label share among passed and rejected samples.
        head_init: an embeddings table (``raysv embed`` output) of the training utterances
            made with the initial encoder: each AAM class weight starts at the mean
            direction of its class's embeddings instead of at random, so the first
            gradients reaching a pretrained encoder come from a head that already agrees
            with it (``raysv iterate`` passes the round's clustering input). None = random.
    """

    labels: str | None = None
    utterances: str | None = None
    dev_trials: str | None = None
    test_trials: str | None = None
    crop_seconds: float = 2.0
    n_mels: int | None = None
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(prob=0.5, reverb_prob=0.3))
    eval_max_seconds: float = 10.0
    analysis: bool = True
    head_init: str | None = None

    def __post_init__(self):
        if self.crop_seconds < 0.1:
            raise ValueError(f"crop_seconds must be >= 0.1, got {self.crop_seconds}")
        if self.n_mels is not None and self.n_mels < 8:
            raise ValueError(f"n_mels must be >= 8 (or null: the checkpoint's), got {self.n_mels}")
        if self.eval_max_seconds <= 0:
            raise ValueError(f"eval_max_seconds must be > 0, got {self.eval_max_seconds}")


@dataclass
class HeadSpec:
    """AAM-softmax classifier head: margin m (radians) and scale s (the LGL paper: 0.2, 30)."""

    margin: float = 0.2
    scale: float = 30.0

    def __post_init__(self):
        if not 0.0 <= self.margin < 1.0 or self.scale <= 0:
            raise ValueError(
                f"need 0 <= head.margin < 1 and head.scale > 0, got {self.margin}, {self.scale}"
            )


@dataclass
class GateSpec:
    """Which samples train the network (see :mod:`raysv.losses.gates`).

    Args:
        name: ``none``, ``lgl``, ``dlg`` or ``dlg-lc``.
        tau: LGL's fixed threshold on the per-sample AAM loss (paper: 1, 3, 3, 5, 6 over rounds).
        warmup_epochs: epochs of ordinary training of the whole network (encoder and head)
            before the gate closes, counted after the head-only epochs
            (``head_warmup_epochs``): the gate closes at epoch ``head_warmup_epochs +
            warmup_epochs``, which must be < train.epochs. The LGL paper trains on all
            pseudo labels before gating; DLG needs one epoch of losses to fit its mixture.
            0 (LGL with a fixed ``tau`` only): gated from the first full-network epoch.
        tau2: LC's confidence threshold: a rejected sample whose top class posterior exceeds
            it is trained towards that class.
        seed: seed of the mixture fit (DLG).
        share: LGL only: instead of the fixed ``tau``, each gated epoch's threshold is
            the quantile of the previous epoch's per-sample losses that lets this share
            through (``schedule.tau: auto`` in ``raysv iterate`` sets it per round).
    """

    name: Literal["none", "lgl", "dlg", "dlg-lc"] = "none"
    tau: float = 3.0
    warmup_epochs: int = 1
    tau2: float = 0.8
    seed: int = 0
    share: float | None = None

    def __post_init__(self):
        if self.tau <= 0:
            raise ValueError(f"gate.tau must be > 0, got {self.tau}")
        if self.share is not None and not 0.0 < self.share <= 1.0:
            raise ValueError(f"gate.share is a share in (0, 1], got {self.share}")
        if not 0.0 < self.tau2 < 1.0:
            raise ValueError(f"gate.tau2 is a probability in (0, 1), got {self.tau2}")
        if self.seed < 0:
            raise ValueError(f"gate.seed must be >= 0, got {self.seed}")
        if self.warmup_epochs < 0:
            raise ValueError(f"gate.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.name in ("dlg", "dlg-lc") and self.warmup_epochs < 1:
            raise ValueError(
                "gate dlg/dlg-lc fits its threshold to the previous epoch's losses: "
                "gate.warmup_epochs must be >= 1"
            )


def _stage2_optim() -> OptimSpec:
    # The LGL paper fixes the learning rate at 0.001 in Stage II.
    return OptimSpec(lr=1e-3, decay=1.0)


@dataclass
class Stage2Config:
    """``raysv train`` configuration (YAML + ``--set key=value`` overrides).

    ``init_checkpoint`` (Stage I's or the previous round's ``best_model.pt``)
    gives the encoder and its weights; without it ``model`` is built from scratch.
    ``head_warmup_epochs``: epochs that train only the new head (encoder learning
    rate 0) so that a random head does not wreck a pretrained encoder.
    ``encoder_lr_scale``: the encoder's learning rate relative to the head's.
    ``l2_to_init``: weight of an L2 penalty pulling the encoder towards its
    initial weights, sum of squared differences (the iterative paper's
    stabiliser for fine-tuning; 0 = off).
    The initial encoder is scored on dev first: a round keeps it if no epoch
    beats it (model selection on dev, never on test).
    """

    out: str = "runs/train"
    run_name: str = "train"
    init_checkpoint: str | None = None
    data: Stage2Data = field(default_factory=Stage2Data)
    model: ModelSpec = field(default_factory=ModelSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    gate: GateSpec = field(default_factory=GateSpec)
    optim: OptimSpec = field(default_factory=_stage2_optim)
    train: TrainSpec = field(default_factory=lambda: TrainSpec(epochs=6, batch_size=64))
    head_warmup_epochs: int = 1
    encoder_lr_scale: float = 1.0
    l2_to_init: float = 0.0
    tracking_uri: str | None = None
    experiment: str = "raysv-train"
    parent_run_id: str | None = None

    def __post_init__(self):
        if not 0 < self.encoder_lr_scale <= 10 or self.l2_to_init < 0:
            raise ValueError(
                f"need 0 < encoder_lr_scale <= 10 and l2_to_init >= 0, "
                f"got {self.encoder_lr_scale}, {self.l2_to_init}"
            )
        if not 0 <= self.head_warmup_epochs < self.train.epochs:
            raise ValueError(
                f"head_warmup_epochs ({self.head_warmup_epochs}) must be in [0, train.epochs)"
            )
        if self.gate.name != "none" and self.gate_closes_at >= self.train.epochs:
            raise ValueError(
                f"gate {self.gate.name!r} with warmup_epochs={self.gate.warmup_epochs} after "
                f"head_warmup_epochs={self.head_warmup_epochs} never closes in "
                f"train.epochs={self.train.epochs}; raise epochs or lower warmup_epochs"
            )
        if self.gate.name == "lgl" and self.gate.share is not None and self.gate_closes_at == 0:
            raise ValueError(
                "gate.share sets each gated epoch's threshold from the previous epoch's losses: "
                "with head_warmup_epochs=0 it needs gate.warmup_epochs >= 1"
            )

    @property
    def gate_closes_at(self) -> int:
        """The first epoch (0-based) the gate filters: after the head-only epochs and the
        gate's own warm-up of full-network training."""
        return self.head_warmup_epochs + self.gate.warmup_epochs
