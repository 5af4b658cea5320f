"""Typed configuration of Stage I pretraining (``raysv pretrain``).

One tree: data, model, loss (with rejection), optim, train. Unknown keys are
errors; each field's range is declared with it (:func:`~raysv.config.setting`),
rules that tie several fields together are checked in ``__post_init__``;
derived values are properties.
"""

from __future__ import annotations

from typing import Any, Literal

from raysv.audio.augment import AugmentConfig
from raysv.config import check_run_folder, config, setting


@config
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

    data: str | None = setting(
        None, why="null: no default corpus; give a corpus folder (--data) or data.utterances"
    )
    allow_outside_paths: bool = setting(
        False,
        why="a corpus folder's text files may not name audio outside it unless you say so "
        "(safety: the files' text decides what is read)",
    )
    utterances: str | None = setting(
        None, why="null: the manifest imported from data; give one when there is no corpus folder"
    )
    dialogues: str | None = setting(
        None,
        why="null: imported from data's dialogues.jsonl; with utterances, give one for dialogue mode",
    )
    dev_trials: str | None = setting(
        None,
        why="null: the corpus folder's trials/dev.txt; with utterances, give one to pick the "
        "best epoch",
    )
    test_trials: str | None = setting(
        None,
        why="null: the corpus folder's trials/test.txt; with utterances, give one (reported only)",
    )
    dialogue_truth: str | None = setting(
        None,
        why="null: the corpus folder's meta/dialogues_truth.parquet if there (generated corpora); "
        "analysis only",
    )
    mode: Literal["dialogue", "utterance"] = setting(
        "dialogue",
        why="the dialogue paper's positives (utterances of one dialogue); utterance is SimCLR's",
    )
    utts_per_dialogue: int = setting(
        2,
        ge=2,
        hint="positives need a partner",
        why="the dialogue paper's M = 2 (positives need a partner); docs/stage1.md: M = 4 raises "
        "rejection's AUC ceiling",
    )
    short_dialogues: Literal["repeat", "drop"] = setting(
        "repeat",
        why="keeps every dialogue's audio (a repeat is another random crop); drop loses the "
        "dialogues shorter than M",
    )
    crop_seconds: float = setting(
        2.0,
        ge=0.1,
        why="within the papers' 1.8-4 s, at the short end for CPU-scale runs (docs/stage1.md's "
        "Stage I measurements)",
    )
    n_mels: int = setting(
        40, ge=8, why="the iterative paper's 40-bin log-mel for contrastive Stage I (LGL: 80)"
    )
    augment: AugmentConfig = setting(
        factory=lambda: AugmentConfig(prob=0.5, reverb_prob=0.3),
        why="prob 0.5, reverb_prob 0.3: not tuned (the Stage II configs use 0.6)",
    )
    eval_max_seconds: float = setting(
        10.0,
        gt=0,
        why="caps the cost of embedding long trial utterances; a convenience value, not tuned",
    )


@config
class ModelSpec:
    """Encoder by name (see ``raysv.models.ENCODERS``) and its constructor arguments."""

    name: str = setting("ecapa", why="ECAPA-TDNN, the LGL paper's encoder, at a size set by kwargs")
    kwargs: dict[str, Any] = setting(
        factory=lambda: {"channels": 64, "embed_dim": 128},
        why="small, for CPUs (docs/stage1.md's Stage I measurements); the LGL paper's C = 512, "
        "192-d is ecapa_c512",
    )


@config
class RejectionSpec:
    """Soft rejection of multi-speaker dialogues (see ``raysv.losses.rejection``)."""

    enabled: bool = setting(
        True,
        why="the dialogue paper: rejection improves EER for every loss and batch size "
        "(its Table 2a)",
    )
    threshold: float = setting(
        0.5,
        ge=-1,
        le=1,
        why="t, a cosine: the paper gives no value; not tuned (tune_rejection.yaml sweeps 0.3-0.7)",
    )
    temperature: float = setting(
        10.0,
        gt=0,
        why="initial T, learnt: the paper gives no value; not tuned (tune_rejection.yaml "
        "tries 5 and 10)",
    )
    max_temperature: float = setting(
        20.0,
        gt=0,
        why="raysv's bound on a learnt T against collapsing weights: the effective sample "
        "size stays near 2 / (T_max R) or more",
    )
    learn_temperature: bool = setting(True, why="the dialogue paper learns T")
    normalise: bool = setting(
        True,
        why="dividing by the sum of weights keeps them from collapsing (tested); false is the "
        "paper's plain sum",
    )

    def __post_init__(self):
        if self.temperature >= self.max_temperature:
            raise ValueError(
                f"need 0 < rejection.temperature < max_temperature, got {self.temperature}, {self.max_temperature}"
            )


@config
class LossSpec:
    """Contrastive loss by name: ava, aproto, ge2e (dialogue mode) or ntxent (utterance mode).

    ``scale``/``bias``/``learnable`` set the cosine affine map of ava/aproto/ge2e
    (AvA with scale 1, bias 0, learnable false is the paper's eq. 4);
    ``temperature`` is NT-Xent's (null = none, as in the LGL paper).
    """

    name: str = setting(
        "ava",
        why="the dialogue paper's AvA: more negatives than A-Proto/GE2E and no flawed centroids",
    )
    scale: float = setting(
        10.0,
        gt=0,
        why="initial scale w as in A-Proto/GE2E: raw cosines make AvA's softmax nearly flat "
        "(1: the paper's eq. 4)",
    )
    bias: float | None = setting(
        None, why="null: 0 for ava (the paper's eq. 4), -5 for aproto/ge2e (GE2E's initial b)"
    )
    learnable: bool = setting(
        True, why="scale and bias learnt, as in A-Proto/GE2E; false with scale 1 is AvA's equation"
    )
    temperature: float | None = setting(
        0.1, gt=0, why="NT-Xent's tau: the iterative paper's 0.1 (null: none, as in the LGL paper)"
    )
    rejection: RejectionSpec = setting(
        factory=RejectionSpec,
        why="RejectionSpec's defaults; each loss.rejection.* setting says why its own",
    )

    def kwargs(self) -> dict[str, Any]:
        if self.name == "ntxent":
            return {"temperature": self.temperature}
        bias = self.bias if self.bias is not None else (0.0 if self.name == "ava" else -5.0)
        return {"scale": self.scale, "bias": bias, "learnable": self.learnable}


@config
class OptimSpec:
    """Adam with step decay; the dialogue paper's schedule: 4e-4, x0.98 every 10k steps."""

    lr: float = setting(
        4e-4,
        gt=0,
        why="the dialogue paper's Adam rate (200 GPU epochs); short CPU runs use 0.002 "
        "(configs/pretrain_ava*.yaml)",
    )
    decay: float = setting(
        0.98,
        gt=0,
        le=1,
        why="the dialogue paper: the rate falls 2 % every 10000 iterations (1: constant)",
    )
    decay_every: int = setting(
        10000, ge=1, why="the dialogue paper's 10000 iterations between decays"
    )
    weight_decay: float = setting(
        0.0, ge=0, why="0: none, as the dialogue paper's Adam states none"
    )


@config
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
        max_minutes: a time budget: the run ends normally after the first epoch that
            brings its training time (the epochs' steps and input, summed over resumes;
            not the dev scoring or checkpoints) to this many minutes, even if ``epochs``
            are left. Schedules (learning rate, DINO's momentum and temperature) still
            span ``epochs``: set ``epochs`` to about what the budget fits.
    """

    epochs: int = setting(
        10,
        ge=1,
        why="convenience: short enough for CPUs (the dialogue paper trains 200 epochs on 8 GPUs)",
    )
    batch_size: int = setting(
        32,
        ge=2,
        why="the dialogue paper's baseline batch (its Table 2a); larger ones help (up to its 256, "
        "on GPUs)",
    )
    num_workers: int = setting(
        1, ge=1, why="one worker fits a laptop or CI (2 cores); one per GPU on clusters"
    )
    use_gpu: bool = setting(False, why="runs anywhere (gloo on CPU); the GPU configs set it")
    cpus_per_worker: float | None = setting(
        None,
        gt=0,
        hint="or null: automatic",
        why="null: automatic: on CPU all but one (left for Ray Data, or the input starves), "
        "two per GPU worker",
    )
    amp: bool = setting(
        True,
        why="bf16 autocast is the GPU path that ran on an H100 (docs/benchmarks.md); ignored on CPU",
    )
    seed: int = setting(
        0,
        ge=0,
        why="any fixed seed: with one worker a seed reproduces a run (pass order, crops, "
        "augmentation, shuffle and initialisation are seeded); with several, Ray's split "
        "varies which rows meet in a batch",
    )
    max_failures: int = setting(
        2,
        ge=-1,
        hint="-1: no limit",
        why="a couple of restarts from the last checkpoint for lost workers; not tuned "
        "(-1: Ray retries without end)",
    )
    num_to_keep: int = setting(
        2, ge=1, why="the last checkpoint and one before it; the best model travels inside each"
    )
    storage_path: str | None = setting(
        None,
        why="null: <out>/ray on the local disk; give s3://... on clusters "
        "(checkpoints under <storage_path>/<run_name>: that name there resumes, from any machine)",
    )
    inject_failure_at_epoch: int | None = setting(
        None, ge=0, why="testing aid only: null never fails on purpose"
    )
    data_task_cpus: float = setting(
        1.0,
        gt=0,
        le=64,
        why="one CPU per featurisation task, Ray's default for a task; below 1 more run at once",
    )
    max_unreadable_share: float = setting(
        0.05,
        ge=0,
        le=1,
        why="a few files gone bad pass with a warning, a vanished mount or corrupted copy "
        "stops the run; not tuned",
    )

    max_minutes: float | None = setting(
        None,
        gt=0,
        hint="or null: no budget",
        why="null: a run trains its epochs; a budget compares objectives at equal "
        "wall-clock (raysv bench stage1) or caps a sweep's trial",
    )

    def __post_init__(self):
        if self.batch_size < 2 * self.num_workers or self.batch_size % self.num_workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_workers ({self.num_workers}) "
                "with at least 2 per worker"
            )

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers


@config
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

    out_dim: int = setting(
        65536, ge=1, why="wespeaker's DINO recipe: K = 65536 prototypes (the demo: 1024)"
    )
    hidden_dim: int = setting(2048, ge=1, why="wespeaker's DINO recipe: a head 2048 wide")
    bottleneck_dim: int = setting(256, ge=1, why="wespeaker's DINO recipe: a 256-d bottleneck")
    head_layers: int = setting(3, ge=1, why="wespeaker's DINO recipe: a 3-layer MLP head")
    head_bn: bool = setting(True, why="wespeaker's DINO recipe: batch norm in the head")
    norm_last_layer: bool = setting(
        True, why="DINO's default: prototypes kept at norm 1, for stability"
    )
    student_temp: float = setting(0.1, gt=0, why="DINO's and wespeaker's student temperature tau_s")
    teacher_temp: float = setting(
        0.07,
        gt=0,
        why="wespeaker's final teacher temperature; above ~0.07 DINO collapses (its paper)",
    )
    warmup_teacher_temp: float = setting(
        0.04, gt=0, why="wespeaker's DINO recipe: tau_t starts at 0.04 and rises linearly"
    )
    warmup_teacher_share: float = setting(
        0.2, ge=0, le=1, why="wespeaker's DINO recipe: the warm-up spans the first 20 % of epochs"
    )
    center_momentum: float = setting(
        0.9, ge=0, lt=1, why="DINO's and wespeaker's EMA momentum of the teacher-output centre"
    )
    teacher_momentum: float = setting(
        0.996,
        ge=0,
        lt=1,
        why="wespeaker's DINO recipe (then raised to 1 on a cosine); closer to 1 for small batches",
    )
    global_crops: int = setting(
        2,
        ge=2,
        why="wespeaker's DINO recipe: 2 global views (the teacher's views pair with other views)",
    )
    global_seconds: float = setting(3.0, gt=0, why="wespeaker's DINO recipe: global crops of 3 s")
    local_crops: int = setting(
        4, ge=0, why="wespeaker's DINO recipe: 4 local crops, seen by the student only"
    )
    local_seconds: float = setting(2.0, gt=0, why="wespeaker's DINO recipe: local crops of 2 s")
    clip_grad: float = setting(
        3.0, ge=0, why="wespeaker's DINO recipe: per-parameter gradient clipping at 3 (0: off)"
    )
    freeze_last_layer_epochs: int = setting(
        1, ge=0, why="wespeaker's DINO recipe: the prototypes stay frozen in the first epoch"
    )
    stop_on_collapse: bool = setting(
        True,
        why="a collapsed teacher gives no signal: stop with one line and keep the best "
        "encoder, not spend the budget",
    )

    @property
    def views(self) -> tuple[int, float, int, float]:
        """``(global crops, seconds, local crops, seconds)`` for the input pipeline."""
        return (self.global_crops, self.global_seconds, self.local_crops, self.local_seconds)


@config
class PretrainConfig:
    """``raysv pretrain`` configuration (YAML + ``--set key=value`` overrides)."""

    out: str = setting("runs/pretrain", why="convenience: a run folder under ./runs")
    run_name: str = setting(
        "pretrain", why="the stage's name; the same run name under out resumes that run"
    )
    data: PretrainData = setting(
        factory=PretrainData, why="PretrainData's defaults; each data.* setting says why its own"
    )
    model: ModelSpec = setting(factory=ModelSpec, why="ModelSpec's defaults: a small ECAPA-TDNN")
    loss: LossSpec = setting(
        factory=LossSpec, why="LossSpec's defaults: the dialogue paper's AvA with rejection"
    )
    dino: DinoSpec = setting(
        factory=DinoSpec,
        why="DinoSpec's defaults (wespeaker's recipe); used only with loss.name: dino",
    )
    optim: OptimSpec = setting(
        factory=OptimSpec, why="OptimSpec's defaults: the dialogue paper's Adam schedule"
    )
    train: TrainSpec = setting(
        factory=TrainSpec, why="TrainSpec's defaults; each train.* setting says why its own"
    )
    tracking_uri: str | None = setting(
        None, why="null: MLFLOW_TRACKING_URI, else a SQLite store under out (no server needed)"
    )
    experiment: str = setting("raysv-pretrain", why="one MLflow experiment per command, named so")
    parent_run_id: str | None = setting(
        None, why="null: a top-level MLflow run; raysv tune nests each trial's run under its own"
    )

    def __post_init__(self):
        from raysv.losses import DIALOGUE_LOSSES, LOSSES

        check_run_folder(self.out)

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
