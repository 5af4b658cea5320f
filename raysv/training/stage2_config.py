"""Typed configuration of Stage II training on pseudo labels (``raysv train``).

One tree: data (pseudo-label table, manifest, trials), model (or an initial
encoder checkpoint), head (AAM-softmax), gate (none / lgl / dlg / dlg-lc),
optim, train (shared with Stage I). Unknown keys are errors.
"""

from __future__ import annotations

from typing import Literal

from raysv.audio.augment import AugmentConfig
from raysv.config import check_run_folder, config, setting
from raysv.training.config import ModelSpec, OptimSpec, TrainSpec


@config
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

    labels: str | None = setting(
        None, why="null: given by --labels, or by each raysv iterate round's clustering"
    )
    utterances: str | None = setting(
        None, why="null: given by --manifest, or by raysv iterate (the training pool)"
    )
    dev_trials: str | None = setting(
        None, why="null: not scored on dev; give a trial list to pick the best epoch"
    )
    test_trials: str | None = setting(
        None, why="null: not scored on test (reported only, never used to choose)"
    )
    crop_seconds: float = setting(
        2.0,
        ge=0.1,
        why="Stage I's crop: shorter than the LGL paper's 3 s (configs/train_lgl.yaml) "
        "for CPU-scale runs",
    )
    n_mels: int | None = setting(
        None,
        ge=8,
        hint="or null: the checkpoint's",
        why="null: the init checkpoint's bins (40 without one), as its encoder expects",
    )
    augment: AugmentConfig = setting(
        factory=lambda: AugmentConfig(prob=0.5, reverb_prob=0.3),
        why="Stage I's default, for convenience; configs/train_lgl.yaml uses the iterative "
        "paper's 0.6",
    )
    eval_max_seconds: float = setting(
        10.0,
        gt=0,
        why="caps the cost of embedding long trial utterances; a convenience value, not tuned",
    )
    analysis: bool = setting(
        True,
        why="analysis only, never trains: the reliable-label shares are the evidence the "
        "docs/stage2.md reports",
    )
    head_init: str | None = setting(
        None, why="null: a random head; raysv iterate passes the round's clustering input"
    )


@config
class HeadSpec:
    """AAM-softmax classifier head: margin m (radians) and scale s (the LGL paper: 0.2, 30)."""

    margin: float = setting(0.2, ge=0, lt=1, why="the LGL paper's AAM-softmax margin")
    scale: float = setting(30.0, gt=0, why="the LGL paper's AAM-softmax scale")


@config
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

    name: Literal["none", "lgl", "dlg", "dlg-lc"] = setting(
        "none",
        why="plain AAM-softmax on all pseudo labels; raysv iterate and the train_* configs "
        "choose a gate",
    )
    tau: float = setting(
        3.0,
        gt=0,
        why="the LGL paper's threshold of rounds 2-3 (its schedule 1, 3, 3, 5, 6; "
        "Table 4: 1 to 5 all help)",
    )
    warmup_epochs: int = setting(
        1,
        ge=0,
        why="one epoch on all pseudo labels before gating, as the LGL paper trains first; "
        "DLG needs one epoch of losses",
    )
    tau2: float = setting(
        0.8,
        gt=0,
        lt=1,
        why="a confident top posterior; not tuned here (configs/train_dlg_lc.yaml uses 0.9)",
    )
    seed: int = setting(0, ge=0, why="any fixed seed: reproducible mixture fits")
    share: float | None = setting(
        None,
        gt=0,
        le=1,
        why="null: the fixed tau; raysv iterate's schedule.tau: auto sets it per round",
    )

    def __post_init__(self):
        if self.name in ("dlg", "dlg-lc") and self.warmup_epochs < 1:
            raise ValueError(
                "gate dlg/dlg-lc fits its threshold to the previous epoch's losses: "
                "gate.warmup_epochs must be >= 1"
            )


def _stage2_optim() -> OptimSpec:
    # The LGL paper fixes the learning rate at 0.001 in Stage II.
    return OptimSpec(lr=1e-3, decay=1.0)


@config
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

    out: str = setting("runs/train", why="convenience: a run folder under ./runs")
    run_name: str = setting(
        "train", why="the stage's name; the same run name under out resumes that run"
    )
    init_checkpoint: str | None = setting(
        None,
        why="null: the encoder from scratch; give Stage I's best_model.pt (raysv iterate does)",
    )
    data: Stage2Data = setting(factory=Stage2Data, why="Stage2Data's defaults")
    model: ModelSpec = setting(
        factory=ModelSpec, why="ModelSpec's defaults; init_checkpoint's encoder replaces them"
    )
    head: HeadSpec = setting(factory=HeadSpec, why="the LGL paper's AAM-softmax (m 0.2, s 30)")
    gate: GateSpec = setting(factory=GateSpec, why="GateSpec's defaults: no gate")
    optim: OptimSpec = setting(
        factory=_stage2_optim, why="the LGL paper fixes Adam's learning rate at 0.001 in Stage II"
    )
    train: TrainSpec = setting(
        factory=lambda: TrainSpec(epochs=6, batch_size=64),
        why="convenience: a short run for CPUs (the LGL paper's batch is 256); raise on GPUs",
    )
    head_warmup_epochs: int = setting(
        1,
        ge=0,
        why="one head-only epoch so a random head does not wreck the pretrained encoder",
    )
    encoder_lr_scale: float = setting(
        1.0,
        gt=0,
        le=10,
        why="1: encoder and head at the LGL paper's one learning rate",
    )
    l2_to_init: float = setting(
        0.0, ge=0, why="0: off, as in the LGL paper; a stabiliser for fine-tuning when set"
    )
    tracking_uri: str | None = setting(
        None, why="null: MLFLOW_TRACKING_URI, else a SQLite file under out"
    )
    experiment: str = setting("raysv-train", why="one MLflow experiment for raysv train runs")
    parent_run_id: str | None = setting(
        None, why="null: a top-level MLflow run; raysv iterate and raysv tune nest theirs"
    )

    def __post_init__(self):
        check_run_folder(self.out)
        if self.head_warmup_epochs >= self.train.epochs:
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
