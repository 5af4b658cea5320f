"""Tracking against a real MLflow tracking server on 127.0.0.1 (started by the test)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from raysv.tracking import mlflow_tracking as tracking


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root}/db.sqlite",
            "--default-artifact-root",
            str(root / "art"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError as exc:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}"
                ) from exc
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not come up in 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_runs_params_metrics_artifacts_reach_the_server(mlflow_server, tmp_path):
    import mlflow

    params = {"synth": {"train_speakers": 5}, "n_mels": 40}
    with tracking.run(mlflow_server, "raysv-test", "parent", params=params) as parent_id:
        tracking.log_metrics({"eer": 12.5, "nested": {"x": 1}, "label": "not a number"}, step=0)
        with tracking.run(mlflow_server, "raysv-test", "child", nested=True) as child_id:
            tracking.log_metrics({"eer": 10.0}, step=1)
        f = tmp_path / "summary.json"
        f.write_text(json.dumps({"ok": True}))
        tracking.log_artifact(str(f))
    client = mlflow.MlflowClient(mlflow_server)
    parent = client.get_run(parent_id)
    assert parent.data.params == {"synth.train_speakers": "5", "n_mels": "40"}
    assert parent.data.metrics == {"eer": 12.5, "nested.x": 1.0}
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert [a.path for a in client.list_artifacts(parent_id)] == ["summary.json"]


def test_tracking_uri_does_not_leak(mlflow_server, tmp_path):
    import os

    before = os.environ.get("MLFLOW_TRACKING_URI")
    with tracking.run(mlflow_server, "raysv-test", "leak-check"):
        pass
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    assert tracking.default_tracking_uri(str(tmp_path)).startswith("sqlite:///")


def test_failed_body_marks_the_run_failed(mlflow_server):
    import mlflow

    with (
        pytest.raises(ZeroDivisionError),
        tracking.run(mlflow_server, "raysv-test", "crash") as run_id,
    ):
        1 / 0  # noqa: B018
    assert mlflow.MlflowClient(mlflow_server).get_run(run_id).info.status == "FAILED"


def test_an_epoch_re_run_after_a_resume_is_logged_once(mlflow_server):
    import mlflow

    with tracking.run(mlflow_server, "raysv-test", "resumed") as run_id:
        pass
    assert tracking.log_epoch_once(mlflow_server, run_id, {"loss": 2.0, "epoch": 0}, 0)
    assert tracking.log_epoch_once(mlflow_server, run_id, {"loss": 1.5, "epoch": 1}, 1)
    # Killed before epoch 1's checkpoint landed: the resumed run re-runs epoch 1.
    assert not tracking.log_epoch_once(mlflow_server, run_id, {"loss": 1.4, "epoch": 1}, 1)
    assert tracking.log_epoch_once(mlflow_server, run_id, {"loss": 1.2, "epoch": 2}, 2)
    history = mlflow.MlflowClient(mlflow_server).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.5), (2, 1.2)]


def test_a_local_store_keeps_artifacts_in_the_run_folder_not_the_cwd(tmp_path, monkeypatch):
    from raysv.tracking import mlflow_tracking as tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_folder = tmp_path / "run"
    uri = tracking.default_tracking_uri(str(run_folder))
    note = tmp_path / "note.txt"
    note.write_text("evidence")
    with tracking.run(uri, "exp", "r"):
        tracking.log_artifact(str(note))
    assert os.listdir(cwd) == []  # no ./mlruns where the command ran
    found = [os.path.join(d, n) for d, _, ns in os.walk(run_folder / "mlartifacts") for n in ns]
    assert [Path(f).read_text() for f in found] == ["evidence"]
