"""``raysv tune``: sweeps of a training stage's knobs with Ray Tune, stopping bad trials early.

# [1] every trial's settings (grid points, or seeded random draws from the
#     search space) are validated as a full stage config on the driver before
#     any trial starts (an unknown key or a bad value fails at once);
# [2] each trial is a Ray Tune function trainable that runs the stage's own
#     driver (``run_pretrain`` / ``run_train``), which starts its Ray Train
#     workers: the trial itself reserves no CPU, its workers reserve theirs;
# [3] rank 0's figures of every epoch reach Tune (a Ray Train callback), dev
#     figures only: ASHA or median stopping can stop a trial after any epoch on
#     its dev EER; test trials are never reported to Tune and never rank trials;
# [4] trials write under ``<out>/trials/<i>``; Tune's state is under
#     ``<out>/tune``: rerunning the same command resumes the sweep (finished
#     and stopped trials stay so; an unfinished trial resumes from its last Ray
#     Train checkpoint), and a failed trial is retried from it once;
# [5] the best trial is the finished one with the lowest dev EER; its config is
#     written as ``best_config.yaml``, which the stage's command runs as is.

Ray Tune calls live in this module only.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import math
import os
import sys
import time
from typing import Any, Literal

import yaml

from raysv.config import check_run_folder, config, from_dict, setting, to_dict
from raysv.data.outputs import claim_run, read_json, write_json_atomic
from raysv.errors import ConfigError

log = logging.getLogger("raysv")

STAGES = ("pretrain", "train", "round")
# a round trial is one raysv iterate round from a fixed Stage I encoder: these are its own
ROUND_TRIAL = {"rounds": 1, "reference": False, "final_clustering": False}
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
# what a trial reports to Tune after every epoch: dev figures only ([3])
TUNE_METRICS = ("epochs", "dev_eer", "best_dev_eer", "dev_min_dcf", "final")


@config
class SchedulerSpec:
    """Early stopping of trials on the dev EER they report after every epoch.

    Args:
        name: ``asha`` (asynchronous successive halving: at each rung a trial
            goes on only if its best dev EER is among the best ``1 /
            reduction_factor`` of the trials that reached that rung),
            ``median`` (Ray Tune's median stopping rule: stop a trial whose
            best dev EER so far is worse than the median of the other trials'
            running means at that epoch) or ``none``.
        grace_period: epochs every trial trains before it can be stopped.
        reduction_factor: ASHA's eta; rungs at ``grace_period * eta^i`` epochs.
    """

    name: Literal["none", "asha", "median"] = setting(
        "none",
        why="every trial runs to the end, so a grid's figures all compare; asha stops the "
        "worst trials on dev EER (configs/tune_asha_*.yaml)",
    )
    grace_period: int = setting(
        1, ge=1, why="Ray Tune's ASHA default; raise it where the first epochs' dev EER misleads"
    )
    reduction_factor: float = setting(
        3.0,
        gt=1,
        why="a third of the trials go on at each rung (Ray's default 4 keeps a quarter): "
        "sweeps here have 8-30 trials",
    )


@config
class SweepConfig:
    """``raysv tune`` configuration.

    Args:
        out: sweep folder (trials under ``trials/<i>``, Ray Tune's state under ``tune/``).
        stage: ``pretrain`` (Stage I: e.g. rejection temperature/threshold, batch size),
            ``train`` (Stage II on fixed pseudo labels: e.g. gate thresholds, margin) or
            ``round`` (one ``raysv iterate`` round from a fixed Stage I encoder: k-means,
            purification and Stage II, so k, p and S are swept with tau).
        base: the stage's settings (the keys of ``raysv pretrain`` / ``raysv train`` /
            ``raysv iterate`` configs); every trial starts from them. A round trial runs
            one round (``rounds: 1``), no reference, no final clustering; its
            ``schedule.*`` values may be swept as single values.
        grid: ``{dotted key of the stage config: [values]}``; the sweep runs the
            cartesian product, e.g. ``{"loss.rejection.temperature": [5, 10],
            "train.batch_size": [16, 32]}``.
        space: ``{dotted key: {distribution: args}}`` for ``search: random`` or ``optuna``:
            ``{choice: [values]}``, ``{uniform: [low, high]}``, ``{loguniform:
            [low, high]}`` (low > 0) or ``{randint: [low, high]}`` (both included).
        search: ``grid`` (the grid's points), ``random`` (``samples`` seeded
            draws from ``space``, each crossed with the grid's points) or
            ``optuna`` (``samples`` trials whose values Optuna's TPE sampler
            picks from ``space``, each from the dev EER of the trials before it,
            through ``ray.tune.search.optuna.OptunaSearch``; no grid).
        samples: trials of a random or Optuna search.
        seed: seeds the random draws or Optuna's sampler (random: the same seed, the
            same trials; Optuna's picks also depend on the trials' results).
        repeats: runs of every point, with ``train.seed`` + 0, 1, ...
        lr_rule: how a trial's learning rate follows its batch size: a trial whose
            batch size ``b`` differs from the base's ``b0`` trains with ``lr * b / b0``
            (``linear``) or ``lr * sqrt(b / b0)`` (``sqrt``), ``lr`` being the trial's
            own (swept or the base's); ``none``: every trial's rate as given.
        scheduler: early stopping of trials (:class:`SchedulerSpec`).
        max_concurrent_trials: trials at once (each runs its own Ray Train workers); None =
            as many as the cluster's CPUs and GPUs hold (:func:`trials_at_once`).
        tracking_uri: MLflow URI; None = ``MLFLOW_TRACKING_URI`` or SQLite under ``out``.
        experiment: MLflow experiment of the parent run (trials are nested under it).
    """

    out: str = setting("runs/tune", why="convenience: a run folder under ./runs")
    stage: Literal["pretrain", "train", "round"] = setting(
        "pretrain",
        why="Stage I's rejection T x t is docs/sweeps.md's first sweep; train sweeps Stage II",
    )
    base: dict[str, Any] = setting(factory=dict, why="empty: the stage's own defaults")
    grid: dict[str, list] = setting(
        factory=dict, why="empty: a sweep names what it sweeps here or in space"
    )
    space: dict[str, dict[str, list]] = setting(
        factory=dict, why="empty: a grid sweep; search: random draws from it"
    )
    search: Literal["grid", "random", "optuna"] = setting(
        "grid", why="a grid's trials are all known before the sweep starts"
    )
    samples: int = setting(
        8, ge=1, why="enough trials for ASHA to stop some (it keeps 1/3 at each rung)"
    )
    seed: int = setting(0, ge=0, why="any fixed seed: the same config draws the same trials")
    repeats: int = setting(
        1,
        ge=1,
        why="one run per grid point, as each seed costs a full run; raise it where runs are noisy",
    )
    lr_rule: Literal["none", "linear", "sqrt"] = setting(
        "none",
        why="none: each trial's rate as given, so a batch-size sweep shows the batch size's "
        "own effect; sqrt is the square-root rule for Adam (Malladi et al. 2022), which "
        "raysv's objectives train with; linear is Goyal et al.'s (2017) rule for SGD",
    )
    scheduler: SchedulerSpec = setting(
        factory=SchedulerSpec, why="SchedulerSpec's defaults: no early stopping"
    )
    max_concurrent_trials: int | None = setting(
        None,
        ge=1,
        hint="or null: from the trials' resources",
        why="null: as many trials as the cluster holds at once, each with its workers' CPUs "
        "and GPUs plus one CPU for its input (on a laptop: one at a time)",
    )
    tracking_uri: str | None = setting(
        None, why="null: MLFLOW_TRACKING_URI, else a SQLite store under out (no server needed)"
    )
    experiment: str = setting("raysv-tune", why="one MLflow experiment per command, named so")

    def __post_init__(self):
        check_run_folder(self.out, uri=False)
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        for key, dist in self.space.items():
            check_distribution(f"space.{key}", dist)
        both = sorted(set(self.grid) & set(self.space))
        if both:
            raise ValueError(f"{', '.join(both)}: in both grid and space; give each key once")
        if self.search == "grid" and self.space:
            raise ValueError(
                "space is drawn from by search: random or optuna; a grid search takes grid"
            )
        if self.search == "optuna" and (self.grid or not self.space or self.repeats > 1):
            raise ValueError(
                "search: optuna picks every swept value from space (a grid key goes there as "
                "{choice: [values]}) and runs each point once (repeats: 1)"
            )
        if self.repeats > 1 and "train.seed" in {*self.grid, *self.space}:
            raise ValueError("train.seed is swept: repeats > 1 would set it too; use one")
        if not self.grid and not self.space:
            raise ValueError(
                "nothing to sweep: give grid (values per key) or space with search: random"
            )


def check_distribution(key: str, dist: Any) -> None:
    """Raise ConfigError unless ``dist`` is one ``{distribution: args}`` of :data:`DISTRIBUTIONS`."""
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ConfigError(
            f"{key}: expected one of {{{', '.join(d + ': ...' for d in DISTRIBUTIONS)}}}, "
            f"got {dist!r}"
        )
    ((name, args),) = dist.items()
    if name == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{key}.choice: expected a non-empty list of values, got {args!r}")
        return
    ok = (
        isinstance(args, list)
        and len(args) == 2
        and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
        and all(math.isfinite(a) for a in args)
    )
    if not ok or not args[0] < args[1]:
        raise ConfigError(
            f"{key}.{name}: expected [low, high] numbers with low < high, got {args!r}"
        )
    if name == "loguniform" and args[0] <= 0:
        raise ConfigError(f"{key}.loguniform: low must be > 0, got {args[0]}")
    if name == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{key}.randint: expected integers, got {args!r}")


def draw(dist: dict[str, list], rng) -> Any:
    """One value of ``{distribution: args}`` (see :data:`DISTRIBUTIONS`); floats to 4
    significant digits, so trial names and tables stay readable."""
    ((name, args),) = dist.items()
    if name == "choice":
        return args[int(rng.integers(len(args)))]
    if name == "randint":
        return int(rng.integers(args[0], args[1] + 1))
    if name == "uniform":
        value = rng.uniform(args[0], args[1])
    else:
        value = math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
    return min(max(float(f"{value:.4g}"), args[0]), args[1])  # rounding stays in range


def trial_points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The trials' settings ``[{dotted key: value}]`` in a fixed order: the grid's
    cartesian product (crossed with ``samples`` seeded draws from ``space`` for a
    random search), each ``repeats`` times with ``train.seed`` + 0, 1, ..."""
    import numpy as np

    keys = list(cfg.grid)
    grid = [dict(zip(keys, v, strict=True)) for v in itertools.product(*cfg.grid.values())]
    if cfg.search == "random":
        rng = np.random.default_rng(cfg.seed)
        drawn = [{k: draw(d, rng) for k, d in cfg.space.items()} for _ in range(cfg.samples)]
        grid = [{**g, **s} for s in drawn for g in grid]
    points = []
    for p in grid:
        for r in range(cfg.repeats):
            point = dict(p)
            if cfg.repeats > 1:
                point["train.seed"] = int(cfg.base.get("train", {}).get("seed", 0)) + r
            points.append(point)
    return points


def edge_points(space: dict[str, dict[str, list]]) -> list[dict[str, Any]]:
    """Points ``[{dotted key: value}]`` that give every key of ``space`` each of its
    choices and both ends of its range, the other keys at their first value: what an
    adaptive search (Optuna) may propose, validated before the sweep starts ([1])."""

    def ends(dist: dict[str, list]) -> list:
        ((name, args),) = dist.items()
        return list(args) if name == "choice" else [args[0], args[1]]

    first = {k: ends(d)[0] for k, d in space.items()}
    return [first] + [{**first, k: v} for k, d in space.items() for v in ends(d)[1:]]


def tune_domain(dist: dict[str, list]):
    """The Ray Tune search domain of ``{distribution: args}`` (Optuna samples from it)."""
    from ray import tune

    ((name, args),) = dist.items()
    if name == "choice":
        return tune.choice(args)
    if name == "uniform":
        return tune.uniform(args[0], args[1])
    if name == "loguniform":
        return tune.loguniform(args[0], args[1])
    return tune.randint(args[0], args[1] + 1)  # Tune's upper bound is excluded, ours included


def optuna_searcher(cfg: SweepConfig, space=None, metric=None, mode=None):
    """Ray Tune's OptunaSearch with Optuna's TPE sampler seeded by ``cfg.seed``. TPE picks
    at random for its first ``n_startup_trials`` (Optuna's default 10, which would leave
    a sweep of 8 trials all random): here half the sweep's trials, at most 10, at least 1.
    Trials stopped by the scheduler count with the best dev EER they reached."""
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    startup = startup_trials(cfg.samples)
    sampler = TPESampler(seed=cfg.seed, n_startup_trials=startup)
    return OptunaSearch(space=space, metric=metric, mode=mode, sampler=sampler)


def startup_trials(samples: int) -> int:
    """Random picks before TPE models the results: half the trials, 1 to 10."""
    return max(1, min(10, samples // 2))


def trial_index(name: str) -> int:
    """The index ``i`` of a trial named ``trial<i>`` (its Tune name and folder)."""
    return int(os.path.basename(name.rstrip("/")).removeprefix("trial").split("_")[0])


def _trial_name(trial) -> str:
    """Tune's name (and folder name) of a trial: ``trial<i>``, ``i`` from 0. A grid or
    random trial carries ``i`` in its config; an Optuna trial is numbered by Tune's
    search generator (its tag starts with the count from 1)."""
    i = trial.config.get("trial")
    if i is None:
        i = int(str(trial.experiment_tag).split("_", 1)[0]) - 1
    return f"trial{int(i):03d}"


def tune_metrics(rank0: dict) -> dict:
    """What a trial reports to Tune from rank 0's metrics of one epoch: :data:`TUNE_METRICS`
    (dev figures; ``epochs`` counts from 1). Test figures never reach Tune."""
    return {
        "epochs": int(rank0["epoch"]) + 1,
        "dev_eer": float(rank0.get("dev_eer", float("nan"))),
        "best_dev_eer": float(rank0.get("best_dev_eer", float("nan"))),
        "dev_min_dcf": float(rank0.get("dev_min_dcf_0.01", float("nan"))),
        "final": 0,  # 1: the trial's report after its run finished
    }


def _stage(stage: str):
    """``(config class, run function)`` of a stage."""
    if stage == "pretrain":
        from raysv.training.config import PretrainConfig
        from raysv.training.pretrain import run_pretrain

        return PretrainConfig, run_pretrain
    if stage == "round":
        from raysv.pipeline.iterate import IterateConfig, run_iterate

        return IterateConfig, run_iterate
    from raysv.training.stage2 import run_train
    from raysv.training.stage2_config import Stage2Config

    return Stage2Config, run_train


def train_spec(stage_cfg):
    """The :class:`~raysv.training.config.TrainSpec` (epochs, workers) of a stage config
    (a round trial's is its Stage II run's)."""
    t = stage_cfg.train
    return t.train if hasattr(t, "train") else t


def run_result(stage: str, out: str) -> dict | None:
    """What a finished trial's run folder ``out`` says, or None before it has finished:
    ``{"epochs", "history", "final", "test_eer", "test_min_dcf", "best_model",
    "seconds", "stopped"}``. Dev figures (``history``, ``final["best.dev.eer"]``) are
    those of the trial's training run; for a round trial, its Stage II run's, and its
    test figures those the round scored with the new encoder."""
    summary = read_json(os.path.join(out, "summary.json"))
    if not isinstance(summary, dict):
        return None
    run = summary
    test_eer = summary.get("final", {}).get("best.test.eer", float("nan"))
    test_dcf = summary.get("final", {}).get("best.test.min_dcf_0.01", float("nan"))
    best_model = summary.get("best_model", "")
    if stage == "round":
        run = read_json(os.path.join(out, "round1", "train", "summary.json")) or {}
        scores = (summary.get("rounds") or [{}])[0]
        test_eer = scores.get("test.eer", float("nan"))
        test_dcf = scores.get("test.min_dcf_0.01", float("nan"))
        best_model = summary.get("final_encoder", "")
    extra = {"round_dev_eer": scores.get("dev.eer")} if stage == "round" else {}
    return {
        **extra,
        "epochs": run.get("epochs"),
        "history": run.get("history") or [],
        "final": run.get("final") or {},
        "test_eer": test_eer,
        "test_min_dcf": test_dcf,
        "best_model": best_model,
        "seconds": summary.get("seconds", 0.0),
        "stopped": summary.get("stopped"),
    }


def scaled_lr(lr: float, batch: int, base_batch: int, rule: str) -> float:
    """The learning rate for batch size ``batch`` given ``lr`` at ``base_batch`` under
    ``rule`` (``none``, ``linear``: x b/b0, ``sqrt``: x sqrt(b/b0)); 4 significant digits."""
    if rule == "none" or batch == base_batch:
        return lr
    factor = batch / base_batch
    return float(f"{lr * (factor if rule == 'linear' else math.sqrt(factor)):.4g}")


def _with_lr_rule(cfg: SweepConfig, cls, data: dict, base: dict) -> dict:
    """``data`` (a trial's stage settings) with its learning rate scaled by ``cfg.lr_rule``
    from the batch size of ``base`` (the sweep's base settings) to its own."""
    if cfg.lr_rule == "none":
        return data
    trial, start = from_dict(cls, data), from_dict(cls, base)
    b, b0 = train_spec(trial).batch_size, train_spec(start).batch_size
    if b == b0:
        return data
    key, lr = (
        ("train.optim.lr", trial.train.optim.lr)
        if cfg.stage == "round"
        else (
            "optim.lr",
            trial.optim.lr,
        )
    )
    return with_values(data, {key: scaled_lr(lr, b, b0, cfg.lr_rule)})


def trial_config(cfg: SweepConfig, i: int, point: dict[str, Any], parent_run_id: str | None):
    """[1] The full, validated stage config of trial ``i``."""
    cls, _ = _stage(cfg.stage)
    out = os.path.abspath(cfg.out)
    if cfg.stage == "round":  # a round's schedule entries are lists: one value, one round
        point = {
            k: [v] if k.startswith("schedule.") and not isinstance(v, list) else v
            for k, v in point.items()
        }
    data = with_values(cfg.base, point)
    base = copy.deepcopy(cfg.base)
    if cfg.stage == "round":
        data.update(ROUND_TRIAL)
        base.update(ROUND_TRIAL)
    data.update(
        out=os.path.join(out, "trials", f"{i:03d}"),
        run_name=f"trial{i:03d}",
        tracking_uri=cfg.tracking_uri or _tracking_uri(out, create=False),
        experiment=cfg.experiment,
        parent_run_id=parent_run_id,
    )
    try:
        return from_dict(cls, _with_lr_rule(cfg, cls, data, base))
    except ConfigError as exc:
        raise ConfigError(f"trial {i} ({point}): {exc}") from None


def with_values(base: dict, point: dict[str, Any]) -> dict:
    """``base`` (nested plain data) with each dotted key of ``point`` set to its value as
    is (not through YAML text: ``1e-05`` stays a number)."""
    data = copy.deepcopy(base)
    for key, value in point.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[last] = value
    return data


def absolute_paths(data: Any, cwd: str) -> Any:
    """``data`` with every string that names an existing file or folder relative to
    ``cwd`` made absolute (a config that runs from any folder)."""
    if isinstance(data, dict):
        return {k: absolute_paths(v, cwd) for k, v in data.items()}
    if isinstance(data, list):
        return [absolute_paths(v, cwd) for v in data]
    if isinstance(data, str) and data and os.path.exists(os.path.join(cwd, data)):
        return os.path.abspath(os.path.join(cwd, data))
    return data


def _corpus_and_key(stage_cfg) -> tuple[str | None, str]:
    """``(corpus folder or None, the config key of explicit dev trials)`` of a stage config
    (a round trial's keys are raysv iterate's, top level)."""
    data = stage_cfg.data
    if isinstance(data, str) or data is None:  # a round trial: raysv iterate's keys
        return data, "dev_trials"
    return getattr(data, "data", None), "data.dev_trials"


def dev_trials_of(stage_cfg) -> str | None:
    """The dev trial list a stage config scores on (None: the run reports no dev EER): a
    corpus folder's ``trials/dev.txt`` where the config names a corpus folder (its
    explicit dev trials are then not used, as the stages do), else its dev trials."""
    corpus, key = _corpus_and_key(stage_cfg)
    if corpus:
        path = os.path.join(corpus, "trials", "dev.txt")
        return path if os.path.isfile(path) else None
    holder = stage_cfg if key == "dev_trials" else stage_cfg.data
    return getattr(holder, "dev_trials", None)


def check_dev_trials(stage_cfgs: list) -> None:
    """Refuse a sweep whose trials have no dev trials: trials are stopped and ranked on
    dev EER only (test trials never choose), so without them nothing could be chosen."""
    for i, c in enumerate(stage_cfgs):
        if not dev_trials_of(c):
            corpus, key = _corpus_and_key(c)
            raise ConfigError(
                f"trial {i}: no dev trials to rank trials on: "
                + (f"{corpus} has no trials/dev.txt (add one)" if corpus else f"give base.{key}")
                + "; test trials are never used to choose"
            )


def trials_at_once(stage_cfgs: list, cpus: float, gpus: float) -> tuple[int, dict]:
    """How many trials a cluster of ``cpus`` CPUs and ``gpus`` GPUs runs side by side, and
    what the largest trial needs (``{"CPU": c, "GPU": g}``).

    A trial needs its Ray Train workers' resources plus one CPU for its Ray Data input
    (as :func:`raysv.training.driver.worker_resources` leaves one for a lone run): with
    ``cpus_per_worker`` given, ``num_workers x cpus_per_worker``; automatic on CPU,
    all CPUs but one (so one trial at a time); automatic on GPU, 1-2 CPUs per worker,
    and one GPU per worker. A round trial's embedding step uses every CPU: one at a
    time. Always at least 1.
    """
    need_cpu, need_gpu = 0.0, 0.0
    for c in stage_cfgs:
        t = train_spec(c)
        cpw = t.cpus_per_worker
        if cpw is None:
            cpw = max(1.0, min(2.0, (cpus - 1.0) / t.num_workers)) if t.use_gpu else None
        # automatic CPU workers, or a round trial (its embedding actors take every CPU)
        whole = cpw is None or hasattr(c, "schedule")
        cpu = cpus if whole else t.num_workers * cpw + 1.0
        need_cpu = max(need_cpu, cpu)
        need_gpu = max(need_gpu, float(t.num_workers) if t.use_gpu else 0.0)
    n = math.floor(cpus / need_cpu) if need_cpu > 0 else 1
    if need_gpu > 0:
        n = min(n, math.floor(gpus / need_gpu))
    return max(1, n), {"CPU": need_cpu, "GPU": need_gpu}


def _tracking_uri(out: str, create: bool = True) -> str:
    from raysv.tracking.mlflow_tracking import default_tracking_uri

    return default_tracking_uri(out, create)


def _epochs_to_tune(epochs: int):
    """[3] A Ray Train callback that reports rank 0's dev figures of every epoch but the
    last (:func:`tune_metrics`) to the Tune trial it runs in; no checkpoint goes with
    them (the trial resumes from its own Ray Train checkpoints). The last epoch (the
    last of ``epochs``, or the one that spends ``train.max_minutes``) is reported by
    the trial once its run has finished (summary written): a scheduler's
    decision at that report cannot cut the run's final evaluation short."""
    if os.environ.get("RAY_TRAIN_V2_ENABLED", "1") == "0":
        raise ConfigError(
            "raysv tune needs Ray Train V2 (RAY_TRAIN_V2_ENABLED=0 is set): with V1, "
            "Ray Train would send every figure of rank 0 to Tune, test figures too"
        )
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochsToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            m = tune_metrics(metrics[0])  # metrics: one dict per worker, rank 0 first
            # a run's last epoch (its epochs done, or its train.max_minutes spent) is not
            if m["epochs"] < epochs and not metrics[0].get("out_of_time"):
                super().after_report(run_context, [m], None)

    return EpochsToTune()


def _trial(config: dict) -> None:
    """[2] Ray Tune function trainable: run one trial's stage, its epochs reported as they end."""
    from ray import tune

    # Ray Tune starts a trial in its trial folder: relative paths in the config (e.g.
    # ``--data data/corpus``) mean the sweep's working folder, as for `raysv pretrain`.
    if os.path.isdir(config.get("cwd", "")):
        os.chdir(config["cwd"])
    from raysv.training.worker import TrainingStopped

    stage_cfg = config.get("cfg")
    if stage_cfg is None:  # an Optuna trial: its values were picked just now
        sweep = from_dict(SweepConfig, config["sweep"])
        i = trial_index(tune.get_context().get_trial_name())
        stage_cfg = to_dict(trial_config(sweep, i, config["point"], config["parent"]))
        _own_folder(stage_cfg["out"], config["point"])
    stage = config["stage"]
    cls, run = _stage(stage)
    cfg = from_dict(cls, stage_cfg)
    epochs = train_spec(cfg).epochs
    result = run_result(stage, cfg.out)
    if result is None:
        # the objective may end the run early (DINO's collapse): its summary is saved,
        # and a retry would not help
        with contextlib.suppress(TrainingStopped):
            run(cfg, callbacks=[_epochs_to_tune(epochs)])
        result = run_result(stage, cfg.out) or {}
    # The run's last epoch, reported now that its summary is written (a trial whose
    # run had finished before this invocation reports only this).
    last = (result.get("history") or [{}])[-1]
    final = result.get("final", {})
    tune.report(
        {
            "epochs": int(result.get("epochs") or epochs),
            "dev_eer": float(last.get("dev_eer", final.get("best.dev.eer", float("nan")))),
            "best_dev_eer": float(final.get("best.dev.eer", float("nan"))),
            "dev_min_dcf": float(last.get("dev_min_dcf_0.01", float("nan"))),
            "final": 1,
        }
    )


def _own_folder(folder: str, point: dict) -> None:
    """Make ``folder`` the run folder of the trial with values ``point``. A sweep resumed
    from Tune state saved before its trial ``i`` was recorded may number a new pick ``i``
    again: a folder of ``i`` holding another point's run is moved aside (kept, named
    ``<folder>.replaced-<time>``), never resumed as this one's."""
    path = os.path.join(folder, ".point.json")
    record = json.loads(json.dumps(point))
    before = read_json(path) if os.path.isfile(path) else None
    if before is not None and before != record:
        aside = f"{folder}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(folder, aside)
        log.warning("%s held the run of other values %s: moved to %s", folder, before, aside)
    os.makedirs(folder, exist_ok=True)
    if before != record:
        write_json_atomic(path, record)


def _job_actors(class_name: str) -> dict[str, str]:
    """Actor id (hex) -> state of this job's actors of class ``class_name`` (GCS table)."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    return {
        a["ActorID"]: a["State"]
        for a in ray._private.state.actors().values()
        if str(a.get("ActorClassName")).rsplit(".", 1)[-1] == class_name and a.get("JobID") == job
    }


def free_orphaned_worker_groups() -> int:
    """Remove the placement groups of this job whose creating actor is dead; returns how many.

    When a scheduler stops a trial, Tune kills it with its Ray Train controller, whose
    worker group's placement group stays reserved: Ray Train's own cleaner asks the
    dashboard's state API whether the controller lives, and raysv starts Ray without
    the dashboard. On a small machine the next trial's Ray Data tasks then wait for
    CPUs forever (measured: 2 cores, the third trial of an ASHA sweep hung). Only this
    job's groups whose creator actor has died are removed: no running work, nothing of
    another job. Uses the GCS tables (``creator_actor_dead``, or the creator's actor
    entry DEAD), which Ray's public ``placement_group_table`` leaves out.
    """
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = bytes.fromhex(ray.get_runtime_context().get_job_id())
    created = gcs_pb2.PlacementGroupTableData.CREATED
    freed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        creator = pg.creator_actor_id
        by_actor = creator and creator != b"\xff" * len(creator)
        if not (
            pg.state == created and by_actor and pg.creator_job_id == job and not pg.is_detached
        ):
            continue
        dead = pg.creator_actor_dead
        if not dead:  # the flag lags behind the actor table when the owner's death killed it
            entry = ray._private.state.actors(creator.hex()) or {}
            dead = entry.get("State") == "DEAD"
        if dead:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
            freed += 1
    if freed:
        log.info("freed %d worker group(s) of stopped trials", freed)
    return freed


def release_trials(before: set[str], grace_s: float = 30.0) -> dict[str, int]:
    """After a sweep: wait up to ``grace_s`` for the Ray Train controllers that started
    during it (not in ``before``) to end, kill those still alive, and free the worker
    groups they left; returns ``{"killed": n, "freed": m}``.

    When the sweep's last trial is the one a scheduler stopped, Tune returns before that
    trial's controller and worker group are torn down, and the sweep's freeing callback
    no longer runs: in a long-lived Ray (a notebook, the tests' shared instance) the
    group kept a CPU and the next job waited forever. Every trial has ended once
    ``Tuner.fit`` returns, so a controller of the sweep still alive then is a leftover.
    """
    import ray

    def leftovers() -> list[str]:
        states = _job_actors("TrainController")
        return [a for a, s in states.items() if s != "DEAD" and a not in before]

    freed, killed = 0, []
    deadline = time.monotonic() + grace_s
    while (alive := leftovers()) and time.monotonic() < deadline:
        freed += free_orphaned_worker_groups()
        time.sleep(0.5)
    if alive:
        core = ray._private.worker.global_worker.core_worker
        for a in alive:
            core.kill_actor(ray.ActorID(bytes.fromhex(a)), True)
        killed = alive
        log.warning("killed %d Ray Train controller(s) left by stopped trials", len(alive))
        settle = time.monotonic() + 10.0  # until the GCS has them dead: then their groups go
        while time.monotonic() < settle and any(
            _job_actors("TrainController").get(a) != "DEAD" for a in killed
        ):
            time.sleep(0.2)
    freed += free_orphaned_worker_groups()
    return {"killed": len(killed), "freed": freed}


def _freeing_callback(every_s: float = 5.0):
    """A Tune callback that frees orphaned worker groups (:func:`free_orphaned_worker_groups`)
    every ``every_s`` seconds of the sweep: a stopped trial's controller dies a moment
    after Tune reports the trial complete, so the check is repeated, not run once."""
    from ray.tune import Callback

    class FreeWorkerGroups(Callback):
        def __init__(self):
            self.last = 0.0

        def on_step_begin(self, iteration, trials, **info):
            if time.monotonic() - self.last >= every_s:
                self.last = time.monotonic()
                _free_quietly()

    return FreeWorkerGroups()


def _free_quietly() -> None:
    try:
        free_orphaned_worker_groups()
    except Exception as exc:  # noqa: BLE001 - Ray's private table changed: say so, go on
        log.warning("could not free stopped trials' worker groups: %s", exc)


def _scheduler(cfg: SweepConfig, max_epochs: int, record: str):
    """The Tune scheduler of ``cfg.scheduler`` on ``best_dev_eer`` (None: FIFO), recording
    the trials it stops in ``record`` (:func:`_recording`)."""
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    spec = cfg.scheduler
    if spec.name == "asha":
        return _recording(
            ASHAScheduler(
                time_attr="epochs",
                max_t=max_epochs,  # rungs below the last epoch, which the finished trial reports
                grace_period=spec.grace_period,
                reduction_factor=spec.reduction_factor,
            ),
            record,
        )
    if spec.name == "median":
        # never pause a trial for want of samples: a paused function trainable would
        # start its Ray Train run over (from its checkpoint) when resumed
        return _recording(
            MedianStoppingRule(
                time_attr="epochs", grace_period=spec.grace_period, min_time_slice=max_epochs + 1
            ),
            record,
        )
    return None


def _recording(scheduler, path: str):
    """``scheduler``, also writing each trial it stops (``{trial name: epochs}``) to the
    JSON file ``path``. Ray Tune marks a trial it stopped for a Ctrl-C as terminated
    too: this record is how the sweep tells a trial the scheduler stopped from one
    that was interrupted. (A finished trial's last report may also get a stop from
    ASHA at ``max_t``: its final report tells it apart.)"""
    base = type(scheduler)

    class Recording(base):
        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == base.STOP and not result.get("final"):
                stopped = read_json(path) or {}
                stopped[_trial_name(trial)] = int(result.get("epochs", 0))
                write_json_atomic(path, stopped)
            return decision

    scheduler.__class__ = Recording
    write_json_atomic(path, read_json(path) or {})  # exists: this sweep records its stops
    return scheduler


def _trial_row(res, points: list[dict], trials_dir: str, stage: str = "pretrain") -> dict:
    """One trial's line of the sweep summary from its Tune result (and, for a finished
    trial, its summary.json: test figures are read here, never reported to Tune)."""
    i = res.config.get("trial")
    if i is None:  # an Optuna trial: numbered in its name (_trial_name)
        i = trial_index(res.path)
        row: dict[str, Any] = {"trial": i, "params": dict(res.config["point"])}
    else:
        row = {"trial": int(i), "params": points[int(i)]}
    history = res.metrics_dataframe
    if history is not None and "epochs" in history:
        # an epoch replayed after a restart counts once, its last report
        curve = {
            int(e): float(d) for e, d in zip(history["epochs"], history["dev_eer"], strict=True)
        }
        row["curve"] = [{"epochs": e, "dev_eer": round(d, 4)} for e, d in sorted(curve.items())]
    if res.error is not None:
        lines = [ln for ln in str(res.error).splitlines() if ln.strip()]
        row.update(status="failed", error=(lines[-1] if lines else repr(res.error))[:300])
        return row
    result = run_result(stage, os.path.join(trials_dir, f"{i:03d}"))
    m = res.metrics or {}
    row["dev_eer"] = round(float(m.get("best_dev_eer", float("nan"))), 4)
    row["dev_min_dcf"] = round(float(m.get("dev_min_dcf", float("nan"))), 4)
    if result is not None and result["stopped"]:  # by its objective
        row.update(status="ended_early", epochs=result["epochs"], reason=result["stopped"])
    elif result is not None:
        row.update(
            status="finished",
            epochs=int(result["epochs"] or len(row.get("curve", []))),
            test_eer=round(float(result["test_eer"]), 4),
            test_min_dcf=round(float(result["test_min_dcf"]), 4),
            best_model=result["best_model"],
            seconds=float(result["seconds"]),
        )
        if result.get("round_dev_eer") is not None:  # scored as the test EER was
            row["round_dev_eer"] = round(float(result["round_dev_eer"]), 4)
    else:  # stopped by the scheduler after its last reported epoch
        row.update(status="stopped", epochs=int(m.get("epochs", 0)))
    return row


def _refuse_unfinished(grid, expected: int, record: str) -> None:
    """Refuse to summarise a sweep that Tune left before every trial ended (Ctrl-C, a
    signal: ``Tuner.fit`` then returns normally and marks running trials terminated):
    its unfinished trials would read as stopped and its best trial as final. A trial
    ended if it failed, made its final report, or was stopped by the scheduler (in
    ``record``; a sweep started before raysv kept that record counts every other trial
    as stopped). Rerunning the command resumes it."""
    stopped = read_json(record) if os.path.isfile(record) else None
    open_ = [
        res
        for res in grid
        if res.error is None
        and (res.metrics or {}).get("final") != 1
        and stopped is not None
        and os.path.basename(str(res.path)).split("_")[0] not in stopped
    ]
    if open_ or len(grid) < expected:
        from raysv.errors import RunInterrupted

        raise RunInterrupted(
            f"the sweep was interrupted with {len(open_) + max(0, expected - len(grid))} of "
            f"{expected} trial(s) unfinished; rerun the same command to resume it"
        )


def _same_sweep(out: str, record: dict, started: bool) -> None:
    """Refuse to resume a sweep folder whose trials were other ones (``_sweep.json``,
    checked once Tune's state exists: a sweep that never started is simply redone)."""
    path = os.path.join(out, "_sweep.json")
    before = read_json(path)
    record = json.loads(json.dumps(record))
    if before is None or not started:
        write_json_atomic(path, record)
    elif before != record:
        raise ConfigError(
            f"{out}: holds a sweep of other trials (stage, base, points or scheduler differ "
            f"from {path}); give raysv tune a new --out, or rerun the same config to resume"
        )


def run_sweep(cfg: SweepConfig) -> dict:
    """Run the sweep, or resume it; returns the summary (also ``<out>/summary.json``)."""
    from ray import tune

    from raysv.runtime import ensure_ray
    from raysv.tracking import mlflow_tracking as tracking

    t0 = time.monotonic()
    adaptive = cfg.search == "optuna"
    # [1] Optuna's picks are made during the sweep: every choice and both ends of every
    # range are validated now instead.
    points = edge_points(cfg.space) if adaptive else trial_points(cfg)
    stage_cfgs = [trial_config(cfg, i, p, None) for i, p in enumerate(points)]  # [1]
    check_dev_trials(stage_cfgs)
    out = claim_run(cfg.out, "raysv tune")  # after every check: a refused sweep writes nothing
    max_epochs = max(train_spec(c).epochs for c in stage_cfgs)
    state = os.path.join(out, "tune", "sweep")
    record = {
        "stage": cfg.stage,
        "base": absolute_paths(cfg.base, os.getcwd()),  # data/x and ./data/x alike
        "points": points,
        "scheduler": to_dict(cfg.scheduler),
    }
    if adaptive:
        record.update(search="optuna", samples=cfg.samples, seed=cfg.seed)
    if cfg.lr_rule != "none":
        record["lr_rule"] = cfg.lr_rule
    _same_sweep(out, record, started=tune.Tuner.can_restore(state))
    keys = ", ".join([*cfg.grid, *cfg.space])
    log.info(
        "sweep of %d trial(s) over %s (%s, %s search, scheduler %s)",
        cfg.samples if adaptive else len(points),
        keys,
        cfg.stage,
        cfg.search,
        cfg.scheduler.name,
    )
    ensure_ray()
    import ray

    at_once = cfg.max_concurrent_trials
    saved = read_json(os.path.join(out, "_trials_at_once.json"))
    if tune.Tuner.can_restore(state) and isinstance(saved, dict):
        at_once = int(saved["trials_at_once"])  # Tune restores its first run's setting
        log.info("resuming keeps the first run's %d trial(s) at once", at_once)
    elif at_once is None:
        cluster = ray.cluster_resources()
        cpus, gpus = float(cluster.get("CPU", 1)), float(cluster.get("GPU", 0))
        at_once, need = trials_at_once(stage_cfgs, cpus, gpus)
        log.info(
            "%d trial(s) at once: each needs up to %g CPU(s) and %g GPU(s); the cluster has "
            "%g and %g (max_concurrent_trials sets it)",
            at_once,
            need["CPU"],
            need["GPU"],
            cpus,
            gpus,
        )
    if not tune.Tuner.can_restore(state):
        write_json_atomic(os.path.join(out, "_trials_at_once.json"), {"trials_at_once": at_once})
    record = os.path.join(out, "_stopped_trials.json")  # the scheduler's stops
    if cfg.scheduler.name == "none" and not tune.Tuner.can_restore(state):
        write_json_atomic(record, {})  # nothing can be stopped: any open trial is interrupted
    uri = cfg.tracking_uri or _tracking_uri(out)
    with tracking.resumable_run(out, uri, cfg.experiment, "tune", to_dict(cfg)) as parent:
        trainable = tune.with_resources(_trial, {"cpu": 0, "memory": 1})  # [2] no CPU of its own
        if tune.Tuner.can_restore(state):  # [4] finished and stopped trials stay so
            log.info("resuming the sweep in %s", state)
            tuner = tune.Tuner.restore(
                state, trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            if adaptive:
                # Optuna's TPE sampler (seeded) picks each trial's values from the dev EER
                # the earlier trials reported; Tune passes it the domains of ``point``.
                param_space = {
                    "stage": cfg.stage,
                    "cwd": os.getcwd(),
                    "sweep": to_dict(cfg),
                    "parent": parent,
                    "point": {k: tune_domain(d) for k, d in cfg.space.items()},
                }
                search = dict(search_alg=optuna_searcher(cfg), num_samples=cfg.samples)
                log.info(
                    "Optuna: the first %d trial(s) picked at random, the rest by TPE",
                    startup_trials(cfg.samples),
                )
            else:
                param_space = tune.grid_search(
                    [
                        {
                            "trial": i,
                            "stage": cfg.stage,
                            "cwd": os.getcwd(),
                            "cfg": to_dict(trial_config(cfg, i, p, parent)),
                        }
                        for i, p in enumerate(points)
                    ]
                )
                search = {}
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=at_once,
                    scheduler=_scheduler(cfg, max_epochs, record),
                    metric="best_dev_eer",
                    mode="min",
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                    **search,
                ),
                run_config=tune.RunConfig(
                    name="sweep",
                    storage_path=os.path.join(out, "tune"),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=1),  # [4] retried once
                    callbacks=[_freeing_callback()],  # a stopped trial's workers' CPUs
                ),
            )
        # Ray Tune prints its experiment tables to stdout even at verbose=0; stdout is
        # the summary's (``--json``), so they go to stderr with the logs.
        try:
            before = set(_job_actors("TrainController"))
        except Exception as exc:  # noqa: BLE001 - Ray's private tables changed: say so, go on
            log.warning("cannot list Ray Train controllers (%s): none will be released", exc)
            before = None
        with contextlib.redirect_stdout(sys.stderr):
            grid = tuner.fit()
        try:  # a last trial stopped by the scheduler leaves its controller behind
            if before is not None:
                release_trials(before)
        except Exception as exc:  # noqa: BLE001 - Ray's private tables changed: say so, go on
            log.warning("could not release the stopped trials' Ray Train controllers: %s", exc)
        _refuse_unfinished(grid, cfg.samples if adaptive else len(points), record)
        rows = sorted(
            (_trial_row(res, points, os.path.join(out, "trials"), cfg.stage) for res in grid),
            key=lambda r: r["trial"],
        )
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:
            log.warning(
                "%d trial(s) failed: %s",
                len(failed),
                "; ".join(f"trial {r['trial']}: {r['error']}" for r in failed),
            )
        finished = [r for r in rows if r["status"] == "finished" and math.isfinite(r["dev_eer"])]
        if not finished:
            raise RuntimeError(
                "no trial finished: "
                + ("; ".join(r.get("error", r["status"]) for r in rows) or "no trials")
            )
        best = min(finished, key=lambda r: r["dev_eer"])  # [5] dev only
        best_config = os.path.join(out, "best_config.yaml")
        best_cfg = (
            trial_config(cfg, best["trial"], best["params"], None)
            if adaptive
            else stage_cfgs[best["trial"]]
        )
        _write_best_config(best_cfg, best_config, out)
        summary = {
            "out": out,
            "stage": cfg.stage,
            "search": cfg.search,
            "scheduler": cfg.scheduler.name,
            "trials_at_once": at_once,
            "trials": rows,
            "counts": {
                s: sum(r["status"] == s for r in rows)
                for s in ("finished", "stopped", "ended_early", "failed")
            },
            "failed_trials": [f"trial {r['trial']}: {r['error']}" for r in failed],
            "best": best,
            "best_config": best_config,
            "selection": "lowest dev EER of the finished trials (test trials are never "
            "reported to Tune nor used to rank trials)",
        }
        tracking.log_history(
            [r for r in rows if r["status"] != "failed"], "trial", ["dev_eer", "dev_min_dcf"]
        )
        tracking.log_metrics(
            {
                "best.dev_eer": best["dev_eer"],
                "best.test_eer": best["test_eer"],
                "best.trial": best["trial"],
                "trials.stopped": summary["counts"]["stopped"],
            }
        )
        summary["seconds"] = round(time.monotonic() - t0, 1)
        summary["mlflow"] = {"tracking_uri": uri, "run_id": parent}
        from raysv.reporting.sweep_report import write_sweep_report

        # the sweep report: learning curves (stopped trials marked), dev EER per knob value
        try:
            report = write_sweep_report(summary, os.path.join(out, "report"))
            summary["report"] = report["report"]
        except Exception as exc:  # noqa: BLE001 - the trials' results matter more than a plot
            log.warning(
                "could not draw the sweep report (raysv report %s redraws it): %s", out, exc
            )
            report = {"report": None, "plots": {}}
        path = os.path.join(out, "summary.json")
        write_json_atomic(path, summary)
        for name in (path, best_config):
            tracking.log_artifact(name)
        for name in (report["report"], *report["plots"].values()):
            if name:
                tracking.log_artifact(name, "report")
    return summary


def _write_best_config(stage_cfg, path: str, out: str) -> None:
    """[5] The best trial's stage config as a YAML the stage's command runs as is (into
    ``<out>/best``: a new run, not the trial's folder)."""
    data = absolute_paths(to_dict(stage_cfg), os.getcwd())  # runs from any folder
    data.update(out=os.path.join(out, "best"), run_name="best", parent_run_id=None)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"# the best trial of the sweep in {out} (lowest dev EER)\n")
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, path)
