"""``raysv tune``: grid sweeps of a training stage's knobs with Ray Tune.

# [1] every grid point is validated as a full stage config on the driver before
#     any trial starts (an unknown key or a bad value fails at once);
# [2] each trial is a Ray Tune function trainable that runs the stage's own
#     driver (``run_pretrain`` / ``run_train``), which starts its Ray Train
#     workers: the trial itself reserves no CPU, its workers reserve theirs;
# [3] trials write under ``<out>/trials/<i>``; a finished trial's
#     ``summary.json`` is reused on a rerun, an unfinished one resumes from its
#     last Ray Train checkpoint, so a killed sweep loses no finished trial;
# [4] the best trial is the one with the lowest DEV EER; test trials are
#     scored for the report only and never rank trials.

Ray Tune calls live in this module only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sys
import time
from typing import Any, Literal

from raysv.config import apply_overrides, config, from_dict, setting, to_dict
from raysv.data.outputs import claim_run, write_json_atomic
from raysv.errors import ConfigError

log = logging.getLogger("raysv")

STAGES = ("pretrain", "train")


@config
class SweepConfig:
    """``raysv tune`` configuration.

    Args:
        out: sweep folder (trials under ``trials/<i>``, Ray Tune's state under ``tune/``).
        stage: ``pretrain`` (Stage I: e.g. rejection temperature/threshold, batch size)
            or ``train`` (Stage II: e.g. gate thresholds, margin, batch size).
        base: the stage's settings (the keys of ``raysv pretrain`` / ``raysv train``
            configs); every trial starts from them.
        grid: ``{dotted key of the stage config: [values]}``; the sweep runs the
            cartesian product, e.g. ``{"loss.rejection.temperature": [5, 10],
            "train.batch_size": [16, 32]}``.
        repeats: runs of every grid point, with ``train.seed`` + 0, 1, ...
        max_concurrent_trials: trials at once (each runs its own Ray Train workers).
        tracking_uri: MLflow URI; None = ``MLFLOW_TRACKING_URI`` or SQLite under ``out``.
        experiment: MLflow experiment of the parent run (trials are nested under it).
    """

    out: str = setting("runs/tune", why="convenience: a run folder under ./runs")
    stage: Literal["pretrain", "train"] = setting(
        "pretrain",
        why="Stage I's rejection T x t is the README's first sweep; train sweeps Stage II",
    )
    base: dict[str, Any] = setting(factory=dict, why="empty: the stage's own defaults")
    grid: dict[str, list] = setting(
        factory=dict, why="empty, and refused so: a sweep has to name what it sweeps"
    )
    repeats: int = setting(
        1,
        ge=1,
        why="one run per grid point, as each seed costs a full run; raise it where runs are noisy",
    )
    max_concurrent_trials: int = setting(
        1,
        ge=1,
        why="each trial runs its own Ray Train workers: one at a time on a small machine "
        "(README); raise it on a cluster",
    )
    tracking_uri: str | None = setting(
        None, why="null: MLFLOW_TRACKING_URI, else a SQLite store under out (no server needed)"
    )
    experiment: str = setting("raysv-tune", why="one MLflow experiment per command, named so")

    def __post_init__(self):
        if not self.grid:
            raise ValueError("grid is empty: give at least one key with a list of values")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key}: expected a non-empty list of values, got {values!r}")


def _stage(stage: str):
    """``(config class, run function)`` of a stage."""
    if stage == "pretrain":
        from raysv.training.config import PretrainConfig
        from raysv.training.pretrain import run_pretrain

        return PretrainConfig, run_pretrain
    from raysv.training.stage2 import run_train
    from raysv.training.stage2_config import Stage2Config

    return Stage2Config, run_train


def grid_points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The trials' settings: ``[{dotted key: value}]`` over the grid x repeats, in a fixed order."""
    keys = list(cfg.grid)
    points = []
    for values in itertools.product(*(cfg.grid[k] for k in keys)):
        for r in range(cfg.repeats):
            p = dict(zip(keys, values, strict=True))
            if cfg.repeats > 1:
                p["train.seed"] = int(cfg.base.get("train", {}).get("seed", 0)) + r
            points.append(p)
    return points


def trial_config(cfg: SweepConfig, i: int, point: dict[str, Any], parent_run_id: str | None):
    """[1] The full, validated stage config of trial ``i``."""
    cls, _ = _stage(cfg.stage)
    out = os.path.abspath(cfg.out)
    data = apply_overrides(
        cfg.base, [f"{k}={json.dumps(v)}" for k, v in point.items()]
    )  # JSON is YAML: values keep their types
    data.update(
        out=os.path.join(out, "trials", f"{i:03d}"),
        run_name=f"trial{i:03d}",
        tracking_uri=cfg.tracking_uri or _tracking_uri(out),
        experiment=cfg.experiment,
        parent_run_id=parent_run_id,
    )
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"trial {i} ({point}): {exc}") from None


def _tracking_uri(out: str) -> str:
    from raysv.tracking.mlflow_tracking import default_tracking_uri

    return default_tracking_uri(out)


def _trial(config: dict) -> None:
    """[2] Ray Tune function trainable: run one trial's stage and report its figures."""
    from ray import tune

    # Ray Tune starts a trial in its trial folder: relative paths in the config (e.g.
    # ``--data data/corpus``) mean the sweep's working folder, as for `raysv pretrain`.
    if os.path.isdir(config.get("cwd", "")):
        os.chdir(config["cwd"])
    summary_path = os.path.join(config["cfg"]["out"], "summary.json")
    if os.path.isfile(summary_path):  # [3] finished in an earlier run of the sweep
        with open(summary_path) as f:
            summary = json.load(f)
    else:
        cls, run = _stage(config["stage"])
        summary = run(from_dict(cls, config["cfg"]))
    final = summary.get("final", {})
    tune.report(
        {
            "trial": config["trial"],
            "dev_eer": float(final.get("best.dev.eer", float("nan"))),
            "dev_min_dcf": float(final.get("best.dev.min_dcf_0.01", float("nan"))),
            "test_eer": float(final.get("best.test.eer", float("nan"))),
            "test_min_dcf": float(final.get("best.test.min_dcf_0.01", float("nan"))),
            "best_model": summary.get("best_model", ""),
            "seconds": float(summary.get("seconds", 0.0)),
        }
    )


def run_sweep(cfg: SweepConfig) -> dict:
    """Run the sweep; returns the summary (also ``<out>/summary.json``)."""
    from ray import tune

    from raysv.runtime import ensure_ray
    from raysv.tracking import mlflow_tracking as tracking

    t0 = time.monotonic()
    out = claim_run(cfg.out, "raysv tune")
    points = grid_points(cfg)
    for i, p in enumerate(points):  # [1] before Ray or any trial starts
        trial_config(cfg, i, p, None)
    log.info("sweep of %d trial(s) over %s (%s)", len(points), ", ".join(cfg.grid), cfg.stage)
    ensure_ray()
    uri = cfg.tracking_uri or _tracking_uri(out)
    with tracking.resumable_run(out, uri, cfg.experiment, "tune", to_dict(cfg)) as parent:
        trials = [
            {
                "trial": i,
                "stage": cfg.stage,
                "cwd": os.getcwd(),
                "cfg": to_dict(trial_config(cfg, i, p, parent)),
            }
            for i, p in enumerate(points)
        ]
        tuner = tune.Tuner(
            # [2] Ray Tune wants a non-empty request: one byte of memory, no CPU
            tune.with_resources(_trial, {"cpu": 0, "memory": 1}),
            param_space=tune.grid_search(trials),
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent_trials),
            run_config=tune.RunConfig(
                name="sweep", storage_path=os.path.join(out, "tune"), verbose=0
            ),
        )
        # Ray Tune prints its experiment tables to stdout even at verbose=0; stdout is
        # the summary's (``--json``), so they go to stderr with the logs.
        with contextlib.redirect_stdout(sys.stderr):
            grid = tuner.fit()
        rows, errors = [], []
        for res in grid:
            if res.error is not None:
                # the last line of a remote traceback is the exception and its message
                lines = [ln for ln in str(res.error).splitlines() if ln.strip()]
                errors.append((lines[-1] if lines else repr(res.error))[:300])
                continue
            m = res.metrics
            rows.append(
                {
                    "trial": int(m["trial"]),
                    "params": points[int(m["trial"])],
                    **{
                        k: round(float(m[k]), 4)
                        for k in ("dev_eer", "dev_min_dcf", "test_eer", "test_min_dcf")
                    },
                    "best_model": m["best_model"],
                    "seconds": m["seconds"],
                }
            )
        rows.sort(key=lambda r: r["trial"])
        if errors:
            log.warning("%d trial(s) failed: %s", len(errors), "; ".join(errors))
        if not rows:
            raise RuntimeError(f"every trial failed: {'; '.join(errors)}")
        best = min(rows, key=lambda r: r["dev_eer"])  # [4] dev only
        summary = {
            "out": out,
            "stage": cfg.stage,
            "trials": rows,
            "failed_trials": errors,
            "best": best,
            "selection": "lowest dev EER (test trials are never used to rank trials)",
        }
        tracking.log_history(rows, "trial", ["dev_eer", "dev_min_dcf", "test_eer", "test_min_dcf"])
        tracking.log_metrics(
            {
                "best.dev_eer": best["dev_eer"],
                "best.test_eer": best["test_eer"],
                "best.trial": best["trial"],
            }
        )
        summary["seconds"] = round(time.monotonic() - t0, 1)
        path = os.path.join(out, "summary.json")
        write_json_atomic(path, summary)
        tracking.log_artifact(path)
    summary["mlflow"] = {"tracking_uri": uri, "run_id": parent}
    return summary
