"""Typed configuration of Stage I pretraining (``raysv pretrain``).

One tree: data, model, loss (with rejection), optim, train. Unknown keys are
errors; ranges are checked in ``__post_init__``; derived values are properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from raysv.audio.augment import AugmentConfig


@dataclass
class PretrainData:
    """Where the training data is and how batches are drawn.

    Args:
        data: a corpus folder (``--data DIR``); imported into manifests under the run folder.
        allow_outside_paths: import audio the corpus folder's files name outside it.
        utterances / dialogues / dev_trials / test_trials: explicit manifests instead of ``data``.
        dialogue_truth: analysis only: table with ``dialogue_id, multi_speaker`` (generated corpora
            have one) to report how well rejection weights separate multi-speaker dialogues.
        mode: ``dialogue`` (utterances of a dialogue are positives) or ``utterance`` (SimCLR:
            two segments of one utterance).
        utts_per_dialogue: M, utterances drawn per dialogue each epoch (the paper uses 2).
        short_dialogues: dialogues with fewer than M utterances: ``repeat`` draws with replacement
            (each draw is a different random crop), ``drop`` skips them.
        crop_seconds: training crop length (the papers use 1.8-4 s).
        n_mels: log-mel bins (40 or 80).
        eval_max_seconds: evaluation embeds at most this much of each utterance (centre).
    """

    data: str | None = None
    allow_outside_paths: bool = False
    utterances: str | None = None
    dialogues: str | None = None
    dev_trials: str | None = None
    test_trials: str | None = None
    dialogue_truth: str | None = None
    mode: Literal["dialogue", "utterance"] = "dialogue"
    utts_per_dialogue: int = 2
    short_dialogues: Literal["repeat", "drop"] = "repeat"
    crop_seconds: float = 2.0
    n_mels: int = 40
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(prob=0.5, reverb_prob=0.3))
    eval_max_seconds: float = 10.0

    def __post_init__(self):
        if self.utts_per_dialogue < 2:
            raise ValueError(
                f"utts_per_dialogue must be >= 2 (positives need a partner), got {self.utts_per_dialogue}"
            )
        if self.crop_seconds < 0.1:
            raise ValueError(f"crop_seconds must be >= 0.1, got {self.crop_seconds}")
        if self.n_mels < 8:
            raise ValueError(f"n_mels must be >= 8, got {self.n_mels}")
        if self.eval_max_seconds <= 0:
            raise ValueError(f"eval_max_seconds must be > 0, got {self.eval_max_seconds}")


@dataclass
class ModelSpec:
    """Encoder by name (see ``raysv.models.ENCODERS``) and its constructor arguments."""

    name: str = "ecapa"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"channels": 64, "embed_dim": 128})


@dataclass
class RejectionSpec:
    """Soft rejection of multi-speaker dialogues (see ``raysv.losses.rejection``)."""

    enabled: bool = True
    threshold: float = 0.5
    temperature: float = 10.0
    max_temperature: float = 20.0
    learn_temperature: bool = True
    normalise: bool = True

    def __post_init__(self):
        if not 0 < self.temperature < self.max_temperature:
            raise ValueError(
                f"need 0 < rejection.temperature < max_temperature, got {self.temperature}, {self.max_temperature}"
            )
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(
                f"rejection.threshold is a cosine, must be in [-1, 1], got {self.threshold}"
            )


@dataclass
class LossSpec:
    """Contrastive loss by name: ava, aproto, ge2e (dialogue mode) or ntxent (utterance mode).

    ``scale``/``bias``/``learnable`` set the cosine affine map of ava/aproto/ge2e
    (AvA with scale 1, bias 0, learnable false is the paper's eq. 4);
    ``temperature`` is NT-Xent's (null = none, as in the LGL paper).
    """

    name: str = "ava"
    scale: float = 10.0
    bias: float | None = None  # None: 0 for ava, -5 for aproto/ge2e
    learnable: bool = True
    temperature: float | None = 0.1
    rejection: RejectionSpec = field(default_factory=RejectionSpec)

    def __post_init__(self):
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (or null: none), got {self.temperature}")

    def kwargs(self) -> dict[str, Any]:
        if self.name == "ntxent":
            return {"temperature": self.temperature}
        bias = self.bias if self.bias is not None else (0.0 if self.name == "ava" else -5.0)
        return {"scale": self.scale, "bias": bias, "learnable": self.learnable}


@dataclass
class OptimSpec:
    """Adam with step decay; the dialogue paper's schedule: 4e-4, x0.98 every 10k steps."""

    lr: float = 4e-4
    decay: float = 0.98
    decay_every: int = 10000
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.lr <= 0 or not 0 < self.decay <= 1 or self.decay_every < 1:
            raise ValueError(
                f"bad optimiser settings: lr={self.lr}, decay={self.decay}, decay_every={self.decay_every}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class TrainSpec:
    """Distributed training settings.

    Args:
        epochs: passes over the dialogues (or utterances).
        batch_size: GLOBAL batch: N dialogues (x M utterances) or N utterances (x 2 segments)
            per step, summed over workers; the loss sees all of them (global negatives).
        num_workers: Ray Train workers (DDP ranks).
        use_gpu: one GPU per worker, NCCL; otherwise gloo on CPU.
        cpus_per_worker: CPUs reserved per worker; default: on CPU all but one (left for
            Ray Data), on GPU two per worker (the rest featurise).
        amp: bfloat16 autocast on GPU (ignored on CPU).
        seed: model initialisation and data order.
        max_failures: worker-group restarts from the last checkpoint (FailureConfig).
        num_to_keep: checkpoints kept (the best model travels inside each).
        storage_path: where Ray Train writes checkpoints (default: <out>/ray; s3://... on clusters).
        inject_failure_at_epoch: testing aid: raise once at the start of this epoch.
        data_task_cpus: CPUs Ray reserves per featurisation task (decode, crop, augment,
            fbank). Below 1, more tasks run at once on the CPUs the workers leave free.
        max_unreadable_share: training rows whose audio turns out unreadable during the run
            (gone bad since the import) are skipped and counted; once more than this share
            of the rows read is skipped, the run stops with an error naming files
            (0: stop at the first; 1: never). Spare passes over the data stand in for the
            skipped rows, so every epoch keeps its step count.
    """

    epochs: int = 10
    batch_size: int = 32
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None
    amp: bool = True
    seed: int = 0
    max_failures: int = 2
    num_to_keep: int = 2
    storage_path: str | None = None
    inject_failure_at_epoch: int | None = None
    data_task_cpus: float = 1.0
    max_unreadable_share: float = 0.05

    def __post_init__(self):
        if not 0 <= self.max_unreadable_share <= 1:
            raise ValueError(
                f"max_unreadable_share must be in [0, 1], got {self.max_unreadable_share}"
            )
        if not 0 < self.data_task_cpus <= 64:
            raise ValueError(f"data_task_cpus must be in (0, 64], got {self.data_task_cpus}")
        if self.epochs < 1 or self.num_workers < 1:
            raise ValueError(
                f"epochs and num_workers must be >= 1, got {self.epochs}, {self.num_workers}"
            )
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(
                f"cpus_per_worker must be > 0 (or null: automatic), got {self.cpus_per_worker}"
            )
        if self.max_failures < -1:  # Ray's FailureConfig: -1 retries without end
            raise ValueError(
                "max_failures (worker-group restarts) must be >= 0, or -1 (no limit), "
                f"got {self.max_failures}"
            )
        if self.num_to_keep < 1:
            raise ValueError(f"num_to_keep (checkpoints kept) must be >= 1, got {self.num_to_keep}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.inject_failure_at_epoch is not None and self.inject_failure_at_epoch < 0:
            raise ValueError(
                f"inject_failure_at_epoch must be >= 0, got {self.inject_failure_at_epoch}"
            )
        if self.batch_size < 2 * self.num_workers or self.batch_size % self.num_workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_workers ({self.num_workers}) "
                "with at least 2 per worker"
            )

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers


@dataclass
class DinoSpec:
    """DINO self-distillation (``loss.name: dino``; see :mod:`raysv.losses.dino`).

    Defaults are wespeaker's DINO recipe for ECAPA-TDNN on VoxCeleb (DINO's, for
    speakers); the demo and tests shrink the head. The crops replace
    ``data.crop_seconds``: ``global_crops`` views of ``global_seconds`` (teacher and
    student) and ``local_crops`` of ``local_seconds`` (student only) per item; in
    dialogue mode the global views come from different utterances of the dialogue.

    Args:
        out_dim: K, prototypes of the last layer (65536; fewer for small corpora).
        hidden_dim / bottleneck_dim / head_layers / head_bn: the projection MLP.
        norm_last_layer: keep the prototypes' norm at 1 (DINO's default for stability).
        student_temp: tau_s (0.1).
        teacher_temp / warmup_teacher_temp / warmup_teacher_share: tau_t rises linearly
            from 0.04 to 0.07 over the first 20 % of the epochs (values above ~0.07
            make DINO collapse, per its paper).
        center_momentum: EMA of the teacher-output centre over the global batch (0.9).
        teacher_momentum: the teacher's EMA momentum, raised to 1 on a cosine over all
            steps (0.996; closer to 1 for small batches).
        clip_grad: gradient-norm clipping of the student (3.0; 0 = off).
        freeze_last_layer_epochs: epochs in which the prototypes do not train (1).
        stop_on_collapse: stop the run with one line when the teacher's outputs collapse
            (uniform, or all on one prototype) after the warm-up.
    """

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    head_bn: bool = True
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_share: float = 0.2
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996
    global_crops: int = 2
    global_seconds: float = 3.0
    local_crops: int = 4
    local_seconds: float = 2.0
    clip_grad: float = 3.0
    freeze_last_layer_epochs: int = 1
    stop_on_collapse: bool = True

    def __post_init__(self):
        for name in ("out_dim", "hidden_dim", "bottleneck_dim", "head_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"dino.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"dino.{name} must be > 0, got {getattr(self, name)}")
        for name in ("center_momentum", "teacher_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"dino.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.warmup_teacher_share <= 1:
            raise ValueError(
                f"dino.warmup_teacher_share must be in [0, 1], got {self.warmup_teacher_share}"
            )
        if self.global_crops < 2:
            raise ValueError(
                f"dino.global_crops must be >= 2 (the teacher's views pair with other views), "
                f"got {self.global_crops}"
            )
        if self.local_crops < 0 or self.global_seconds <= 0 or self.local_seconds <= 0:
            raise ValueError(
                "need dino.local_crops >= 0 and positive global_seconds / local_seconds, got "
                f"{self.local_crops}, {self.global_seconds}, {self.local_seconds}"
            )
        if self.clip_grad < 0 or self.freeze_last_layer_epochs < 0:
            raise ValueError(
                f"need dino.clip_grad >= 0 and freeze_last_layer_epochs >= 0, got "
                f"{self.clip_grad}, {self.freeze_last_layer_epochs}"
            )

    @property
    def views(self) -> tuple[int, float, int, float]:
        """``(global crops, seconds, local crops, seconds)`` for the input pipeline."""
        return (self.global_crops, self.global_seconds, self.local_crops, self.local_seconds)


@dataclass
class PretrainConfig:
    """``raysv pretrain`` configuration (YAML + ``--set key=value`` overrides)."""

    out: str = "runs/pretrain"
    run_name: str = "pretrain"
    data: PretrainData = field(default_factory=PretrainData)
    model: ModelSpec = field(default_factory=ModelSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    dino: DinoSpec = field(default_factory=DinoSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    tracking_uri: str | None = None
    experiment: str = "raysv-pretrain"
    parent_run_id: str | None = None  # nests the MLflow run (a ``raysv tune`` trial)

    def __post_init__(self):
        from raysv.losses import DIALOGUE_LOSSES, LOSSES

        if self.loss.name not in LOSSES:
            raise ValueError(f"unknown loss {self.loss.name!r}; valid: {', '.join(LOSSES)}")
        if self.loss.name == "dino":  # either mode: views of an utterance or of a dialogue
            return
        if self.data.mode == "dialogue" and self.loss.name not in DIALOGUE_LOSSES:
            raise ValueError(
                f"loss {self.loss.name!r} needs data.mode=utterance; dialogue mode takes {', '.join(DIALOGUE_LOSSES)}"
            )
        if self.data.mode == "utterance" and self.loss.name != "ntxent":
            raise ValueError(
                f"data.mode=utterance (SimCLR) takes loss ntxent, got {self.loss.name!r}"
            )

    @property
    def utterances_drawn(self) -> int:
        """Utterances drawn per dialogue: M, or DINO's global views (each its own)."""
        return self.dino.global_crops if self.loss.name == "dino" else self.data.utts_per_dialogue

    @property
    def rejection_active(self) -> bool:
        return self.loss.rejection.enabled and self.data.mode == "dialogue"

    @property
    def group_size(self) -> int:
        """Embeddings per batch item: M utterances, or 2 segments in utterance mode."""
        return self.data.utts_per_dialogue if self.data.mode == "dialogue" else 2
