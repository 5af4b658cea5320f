"""The one module that calls MLflow.

By default runs go to a local SQLite store (``sqlite:///<root>/mlflow.db``) so
a laptop needs no server; ``tracking_uri`` (or ``MLFLOW_TRACKING_URI``) points
at a tracking server on a cluster. Only the driver / rank 0 calls these.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from raysv.config import flatten

log = logging.getLogger("raysv")


def default_tracking_uri(root: str, create: bool = True) -> str:
    """Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else a SQLite file under ``root``
    (made, unless ``create`` is false: a config only being checked makes no folder)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if create:
        os.makedirs(root, exist_ok=True)
    return f"sqlite:///{os.path.abspath(os.path.join(root, 'mlflow.db'))}"


def artifact_root(tracking_uri: str) -> str | None:
    """Where a local store keeps artifacts: ``mlartifacts/`` beside its SQLite file (the
    run folder), not MLflow's default ``./mlruns`` under whatever folder a command runs
    from. ``None`` for a tracking server (it decides)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = tracking_uri[len("sqlite:///") :]
    return "file://" + os.path.join(os.path.dirname(os.path.abspath(db)), "mlartifacts")


def _experiment(mlflow, tracking_uri: str, name: str) -> None:
    """Make ``name`` the active experiment, creating it with :func:`artifact_root`."""
    root = artifact_root(tracking_uri)
    if root and mlflow.get_experiment_by_name(name) is None:
        # (another process may create it meanwhile)
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(name, artifact_location=f"{root}/{name}")
    mlflow.set_experiment(name)


@contextlib.contextmanager
def run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, Any] | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
) -> Iterator[str]:
    """Open an MLflow run (nested under the active one if ``nested``); yields its run id.

    ``params`` may be a nested dict (a resolved config): it is flattened to
    dotted keys. The run ends FAILED if the body raises. ``run_id`` reopens an
    existing run (a resumed job keeps logging into the same run).
    """
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI to the environment;
    # restore it afterwards so that one run's URI never leaks into the next.
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        _experiment(mlflow, tracking_uri, experiment)
        if run_id:
            kwargs: dict[str, Any] = {"run_id": run_id, "nested": nested}
        else:
            kwargs = {"run_name": run_name, "nested": nested, "tags": tags}
        with mlflow.start_run(**kwargs) as active:
            if params and not run_id:
                mlflow.log_params({k: _param(v) for k, v in flatten(params).items()})
            yield active.info.run_id
    finally:
        if not nested:
            if saved_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved_env


@contextlib.contextmanager
def resumable_run(
    folder: str,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """A run whose id is kept in ``<folder>/mlflow_run_id``: a rerun of the same job
    (after a crash) reopens and keeps logging into it. ``parent_run_id`` nests it
    under the active parent run (``raysv iterate``'s rounds)."""
    id_file = os.path.join(folder, "mlflow_run_id")
    previous = None
    if os.path.isfile(id_file):
        with open(id_file) as f:
            previous = f.read().strip() or None
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
    with run(
        tracking_uri,
        experiment,
        run_name,
        params=params,
        run_id=previous,
        tags=tags,
        nested=bool(parent_run_id),
    ) as run_id:
        with open(id_file, "w") as f:
            f.write(run_id)
        yield run_id


def _param(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 500 else s[:497] + "..."


def log_metrics(metrics: dict[str, Any], step: int | None = None, prefix: str = "") -> None:
    """Log the numeric entries of ``metrics`` (others are ignored)."""
    import mlflow

    clean = {
        f"{prefix}{k}".replace("@", "_"): float(v)
        for k, v in flatten(metrics).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_artifact(path: str, artifact_path: str | None = None) -> None:
    """Log the file ``path`` (a local path, or an object-store URI: downloaded first)."""
    import mlflow

    from raysv.data import fs

    if fs.is_local(path):
        mlflow.log_artifact(path, artifact_path=artifact_path)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="raysv-artifact-") as tmp:
        local = os.path.join(tmp, path.rstrip("/").rsplit("/", 1)[1])
        with open(local, "wb") as f:
            f.write(fs.read_bytes(path))
        mlflow.log_artifact(local, artifact_path=artifact_path)


def log_history(
    rows: list[dict[str, Any]], step_key: str, keys: list[str], prefix: str = ""
) -> None:
    """Log per-step series to the active run in one batch: for each row, ``keys`` at step ``row[step_key]``.

    E.g. k-means history rows ``{"iteration": 3, "objective": ...}`` become the
    metric ``objective`` with one value per step.
    """
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(f"{prefix}{k}", float(r[k]), now, int(r[step_key]))
        for r in rows
        for k in keys
        if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
    ]
    run = mlflow.active_run()
    if batch and run is not None:
        # log_batch takes at most 1000 metrics per call
        for i in range(0, len(batch), 1000):
            mlflow.MlflowClient().log_batch(run.info.run_id, metrics=batch[i : i + 1000])


def log_dict(data: dict, name: str) -> None:
    import mlflow

    mlflow.log_dict(data, name)


def log_metrics_to(
    tracking_uri: str, run_id: str, metrics: dict[str, Any], step: int | None = None
) -> None:
    """Log numeric ``metrics`` to an existing run (used by rank 0 inside Ray Train workers)."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(k.replace("@", "_"), float(v), now, step or 0)
        for k, v in flatten(metrics).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if batch:
        MlflowClient(tracking_uri).log_batch(run_id, metrics=batch)


def log_epoch_once(tracking_uri: str, run_id: str, metrics: dict[str, Any], epoch: int) -> bool:
    """Log one epoch's ``metrics`` at step ``epoch`` unless that epoch is already in the run.

    A run killed after an epoch was logged but before Ray Train registered its checkpoint
    re-runs that epoch on resume; MLflow cannot overwrite a logged value, so the epoch's first
    record stays and the re-run's is not logged a second time (the run's ``summary.json``
    history holds the re-run's values). Returns whether anything was logged.
    """
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_id, "epoch")
    if any(m.step == epoch for m in history):
        print(
            f"raysv: epoch {epoch} is already logged to MLflow run {run_id} "
            "(re-run after a resume); not logging it again",
            file=sys.stderr,
        )
        return False
    log_metrics_to(tracking_uri, run_id, {**metrics, "epoch": epoch}, step=epoch)
    return True


def log_artifacts_to(tracking_uri: str, run_id: str, folder: str, artifact_path: str | None = None):
    """Upload every file of ``folder`` to an existing run (e.g. a report after the pipeline)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).log_artifacts(run_id, folder, artifact_path=artifact_path)


def log_files_to(
    tracking_uri: str, run_id: str, paths: list[str], artifact_path: str | None = None
):
    """Upload the existing files among ``paths`` to an existing run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for path in paths:
        if os.path.isfile(path):
            client.log_artifact(run_id, path, artifact_path=artifact_path)
