"""`raysv cluster` logs its statistics and plots to a real MLflow store (SQLite in a tmp dir)."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from raysv.cli import main
from tests.clustering.test_kmeans import _blobs, _write_shards


def test_cluster_logs_metrics_history_and_plots_to_mlflow(tmp_path, ray_local, capsys, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # a SQLite store keeps artifacts under ./mlruns
    x, lab = _blobs(n=900, k=6, seed=2)
    emb = _write_shards(x, str(tmp_path / "emb"), parts=3)
    ids = [f"u{i:06d}" for i in range(x.shape[0])]
    man = str(tmp_path / "utts.parquet")
    pq.write_table(pa.table({"utt_id": ids, "speaker": [f"s{v}" for v in lab]}), man)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "labels"
    args = ["cluster", "--embeddings", emb, "--out", str(out), "--k", "6", "--iterations", "7"]
    args += ["--early-stop", "-1"]  # all 7 iterations
    args += ["--init", "kmeans++", "--drop-fraction", "0.1", "--manifest", man]
    assert main(args + ["--tracking-uri", uri, "--experiment", "t-cluster", "--json"]) == 0
    stdout = capsys.readouterr().out
    s = json.loads(stdout[stdout.index("{") :])
    assert s["mlflow"]["tracking_uri"] == uri and s["init"] == "kmeans++"

    client = mlflow.MlflowClient(uri)
    run = client.get_run(s["mlflow"]["run_id"])
    assert run.info.experiment_id == client.get_experiment_by_name("t-cluster").experiment_id
    m = run.data.metrics
    assert m["objective"] == s["objective"] and m["iterations"] == 7
    assert (
        m["kept_share"] == s["kept_share"] and m["cluster_sizes.max"] == s["cluster_sizes"]["max"]
    )
    assert m["analysis.all.nmi"] > 0.95  # 6 well-separated blobs, 6 clusters
    assert run.data.params["k"] == "6" and run.data.params["init"] == "kmeans++"
    hist = client.get_metric_history(run.info.run_id, "iteration.objective")
    assert [h.step for h in sorted(hist, key=lambda h: h.step)] == list(range(7))
    assert [h.value for h in sorted(hist, key=lambda h: h.step)] == [
        h["objective"] for h in s["history"]
    ]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"_sizes.png", "_objective.png", "_summary.json"} <= arts
    local = client.download_artifacts(run.info.run_id, "_sizes.png", str(tmp_path / "dl"))
    with open(local, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # The plots sit in the label folder, which still reads as a Parquet dataset.
    assert os.path.isfile(out / "_objective.png")
    assert pq.read_table(str(out)).num_rows == 900

    # Default store: SQLite in the parent of --out; --no-tracking logs nothing.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(args[:4] + [str(tmp_path / "d" / "lab")] + args[5:]) == 0
    assert "MLflow: sqlite:///" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "d" / "mlflow.db")
    assert main(args[:4] + [str(tmp_path / "e" / "lab")] + args[5:] + ["--no-tracking"]) == 0
    assert not os.path.exists(tmp_path / "e" / "mlflow.db")
    assert "MLflow:" not in capsys.readouterr().out
