"""Jobs on a real two-node Ray cluster on this machine (``scripts/local_cluster.sh``).

A head and a worker node, each its own ``ray start`` with its own temp dir and
CPUs, token authentication on; jobs go in through the Jobs API
(``JobSubmissionClient``) with the repository as ``working_dir``, exactly as
``ray job submit --working-dir .`` sends them. Each node has 3 logical CPUs and
Stage I runs 2 workers of 1.6 CPUs: they cannot share a node, so one trains on
each. Slow (minutes): run in ``.ci/run``'s second step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "local_cluster.sh")
EPOCHS = 20  # long enough to stop a job or lose a node mid-run, short enough for CI
PRETRAIN = (
    "python jobs/pretrain.py --config configs/pretrain_smoke.yaml --data {data} --out {out} "
    f"--set train.num_workers=2 --set train.cpus_per_worker=1.6 --set train.epochs={EPOCHS}"
)
# The Train controller waits this long for a lost node's workers to be placed again.
ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _free_port(avoid=range(10002, 20000)) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:  # Ray's worker ports
            return port


class Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="rsvc", dir="/tmp")  # short: Unix socket paths
        self.gcs, self.dash, self.client = _free_port(), _free_port(), _free_port()
        self.env = {
            **os.environ,
            "RAYSV_CLUSTER_DIR": self.dir,
            "RAYSV_GCS_PORT": str(self.gcs),
            "RAYSV_DASHBOARD_PORT": str(self.dash),
            "RAYSV_CLIENT_PORT": str(self.client),
        }
        self.url = f"http://127.0.0.1:{self.dash}"

    def script(self, cmd: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", SCRIPT, cmd], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    @property
    def token(self) -> str:
        with open(os.path.join(self.dir, "auth_token")) as f:
            return f.read().strip()

    def client_(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.url, headers={"Authorization": f"Bearer {self.token}"})

    def api(self, path: str):
        req = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def cli_env(self) -> dict:
        return {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": os.path.join(self.dir, "auth_token"),
        }


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        r = c.script("up")
        assert r.returncode == 0, r.stdout + r.stderr
        yield c
    finally:
        r = c.script("down")
        print(r.stdout, r.stderr)
        shutil.rmtree(c.dir, ignore_errors=True)


def submit(cluster, entrypoint: str) -> str:
    return cluster.client_().submit_job(
        entrypoint=entrypoint, runtime_env={"working_dir": ROOT, "env_vars": ENV}
    )


def wait(cluster, job: str, timeout: float = 600, until=None) -> str:
    """The job's terminal status (or, with ``until``, return as soon as it holds)."""
    from ray.job_submission import JobStatus

    client = cluster.client_()
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        status = client.get_job_status(job)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        if until is not None and until():
            return status
        time.sleep(1)
    raise AssertionError(
        f"job {job} still {status} after {timeout} s:\n{client.get_job_logs(job)[-4000:]}"
    )


def cli_logs(cluster, job: str) -> str:
    r = subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "ray"), "job", "logs", "--address", cluster.url, job],
        env=cluster.cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def train_worker_nodes(cluster) -> set[str]:
    """Node ids of the RayTrainWorker actors the cluster has seen (alive or dead)."""
    d = cluster.api("/api/v0/actors?detail=1&limit=10000")
    return {
        a["node_id"]
        for a in d["data"]["result"]["result"]
        if a["class_name"] == "RayTrainWorker" and a.get("node_id")
    }


def logged_lines(out: str) -> list[dict]:
    """The lines rank 0 logged, in order (``_progress.jsonl``, a line per epoch after its
    report, with ``epoch`` and ``time``; an epoch whose checkpoint was not registered when
    the job died is run and logged again)."""
    try:
        with open(os.path.join(out, "_progress.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def logged_epochs(out: str) -> list[int]:
    return [r["epoch"] for r in logged_lines(out)]


def epochs_done(out: str) -> int:
    return len(logged_epochs(out))


# Ray Train's controller takes in a reported checkpoint when it next polls the workers
# (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default); on a loaded 2-core machine
# the poll can come late, so an epoch logged this long before the interruption must have
# its checkpoint registered.
REGISTERED_AFTER_S = 2.0 + 8.0


def settled_enough(out: str) -> bool:
    """Two epochs logged, the first more than ``REGISTERED_AFTER_S`` ago: an interruption
    now has epochs whose checkpoints must be registered, so check_resumed can catch a
    resume from a stale checkpoint (not only one from zero)."""
    lines = logged_lines(out)
    return len(lines) >= 2 and time.time() - lines[0]["time"] > REGISTERED_AFTER_S + 1


def check_resumed(out: str, before: int, at: float) -> None:
    """The run logged every epoch, and after the interruption (at ``time.time() == at``,
    with ``before`` lines logged) it went on from a recent checkpoint, never from epoch 0
    (a restart from zero would log epoch 0 again).

    Recent: every epoch logged more than ``REGISTERED_AFTER_S`` before the interruption is
    not run again. Epochs logged within that window may be (a CI run logged 0, 1, 2, 3, 2,
    3, ...: epoch 2's checkpoint had landed but was not yet registered)."""
    lines = logged_lines(out)
    epochs = [r["epoch"] for r in lines]
    assert sorted(set(epochs)) == list(range(EPOCHS)), epochs
    restarts = [i for i in range(1, len(epochs)) if epochs[i] <= epochs[i - 1]]
    assert len(restarts) <= 1, epochs
    if not restarts:  # nothing logged twice: only the epoch in flight was run again
        assert len(epochs) == EPOCHS and epochs[before:], (before, epochs)
        return
    i = restarts[0]
    assert i >= before and epochs[i] >= 1, (before, epochs)
    settled = [r["epoch"] for r in lines[:i] if r["time"] < at - REGISTERED_AFTER_S]
    assert settled, "interrupted too early to check what was settled: wait with settled_enough"
    assert epochs[i] > max(settled), (at, lines)


@pytest.fixture(scope="module")
def pretrain_job(cluster, tiny_corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cl") / "pretrain")
    job = submit(cluster, PRETRAIN.format(data=tiny_corpus, out=out))
    t0 = time.monotonic()
    status = wait(cluster, job)
    return job, out, status, time.monotonic() - t0


def test_pretrain_job_succeeds_on_both_nodes_with_its_outputs_and_logs(cluster, pretrain_job):
    job, out, status, seconds = pretrain_job
    logs = cli_logs(cluster, job)  # `ray job logs`, the CLI, with the token
    assert status == "SUCCEEDED", logs[-4000:]
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    assert s["epochs"] == EPOCHS and s["steps"] > 0 and s["out"] == out
    assert os.path.isfile(os.path.join(out, "best_model.pt"))
    assert f"run folder: {out}" in logs
    assert "with 2 worker(s)" in logs
    # One Train worker on each node: two distinct node ids, and the cluster has two.
    nodes = cluster.api("/nodes?view=summary")
    assert len(train_worker_nodes(cluster)) == 2, nodes
    # Without the token the Jobs API refuses.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(cluster.url + "/api/jobs/", timeout=30)
    assert e.value.code == 401
    print(f"pretrain job: {seconds:.0f} s, {s['steps']} steps")


def test_iterate_job_runs_its_rounds_on_the_cluster(cluster, pretrain_job, tiny_corpus, tmp_path):
    """``jobs/iterate.py`` from the Stage I job's encoder: embedding actors, k-means
    shards and Stage II training on the two-node cluster. (It hung before the embedding
    actors left a whole CPU free on each node for Ray Data's read task.)"""
    assert pretrain_job[2] == "SUCCEEDED"
    out = str(tmp_path / "iterate")
    init = os.path.join(pretrain_job[1], "best_model.pt")
    job = submit(
        cluster,
        f"python jobs/iterate.py --config configs/iterate_smoke.yaml --data {tiny_corpus} "
        f"--init {init} --out {out}",
    )
    status = wait(cluster, job, timeout=900)
    logs = cli_logs(cluster, job)
    assert status == "SUCCEEDED", logs[-4000:]
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    assert [r["round"] for r in s["rounds"]] == [1, 2]
    assert all(os.path.isdir(r["labels"]) for r in s["rounds"])
    assert f"run folder: {out}" in logs


def test_pretrain_job_stopped_and_submitted_again_resumes(
    cluster, pretrain_job, tiny_corpus, tmp_path
):
    with open(os.path.join(pretrain_job[1], "summary.json")) as f:
        reference = json.load(f)
    out = str(tmp_path / "pretrain_stopped")
    cmd = PRETRAIN.format(data=tiny_corpus, out=out)
    first = submit(cluster, cmd)
    status = wait(cluster, first, until=lambda: settled_enough(out))
    assert status == "RUNNING", cli_logs(cluster, first)[-4000:]
    stop_time = time.time()
    r = subprocess.run(  # `ray job stop`, the CLI, with the token
        [os.path.join(ROOT, ".venv", "bin", "ray"), "job", "stop", "--address", cluster.url, first],
        env=cluster.cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert wait(cluster, first, timeout=120) == "STOPPED"
    stopped_at = epochs_done(out)
    assert 2 <= stopped_at < EPOCHS and not os.path.exists(os.path.join(out, "summary.json"))

    second = submit(cluster, cmd)  # the same line again
    status = wait(cluster, second)
    logs = cli_logs(cluster, second)
    assert status == "SUCCEEDED", logs[-4000:]
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    assert (s["epochs"], s["steps"]) == (reference["epochs"], reference["steps"])
    check_resumed(out, stopped_at, stop_time)


def test_node_lost_mid_training_resumes_from_checkpoint(
    cluster, pretrain_job, tiny_corpus, tmp_path
):
    _, _, status, _ = pretrain_job
    assert status == "SUCCEEDED"
    with open(os.path.join(pretrain_job[1], "summary.json")) as f:
        reference = json.load(f)
    out = str(tmp_path / "pretrain_node_lost")
    job = submit(cluster, PRETRAIN.format(data=tiny_corpus, out=out))
    status = wait(cluster, job, until=lambda: settled_enough(out))
    assert status == "RUNNING", cli_logs(cluster, job)[-4000:]
    assert epochs_done(out) < EPOCHS - 2, "the run ended too soon to lose a node mid-training"

    # Kill the worker node's raylet (SIGKILL): its Train worker dies with it.
    raylets = [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit()
        and "/raylet/raylet " in _cmdline(p)
        and f"{cluster.dir}/worker/" in _cmdline(p)
    ]
    assert len(raylets) == 1, raylets
    os.kill(raylets[0], signal.SIGKILL)
    killed_at, kill_time = epochs_done(out), time.time()
    # The worker node's `ray start --block` exits with its raylet; bring the node back.
    pidfile = os.path.join(cluster.dir, "worker.pid")
    with open(pidfile) as f:
        starter = int(f.read())
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60 and os.path.exists(f"/proc/{starter}"):
        time.sleep(0.5)
    r = cluster.script("up")
    assert r.returncode == 0, r.stdout + r.stderr

    status = wait(cluster, job)
    logs = cli_logs(cluster, job)
    assert status == "SUCCEEDED", logs[-4000:]
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    # Same end as the uninterrupted run: every epoch, the same step count.
    assert (s["epochs"], s["steps"]) == (reference["epochs"], reference["steps"])
    check_resumed(out, killed_at, kill_time)
    # The new group again spans both nodes (three node ids: the lost node's, the head's,
    # the returned worker node's).
    assert len(train_worker_nodes(cluster)) >= 3


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
