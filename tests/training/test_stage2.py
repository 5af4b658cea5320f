"""``raysv train`` (Stage II) end to end on a local Ray: gates, tracking, checkpoints, bad input."""

import os

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysv.cli import main
from raysv.config import load_config
from raysv.data.corpus import prepare_corpus
from raysv.data.schema import PSEUDO_LABELS
from raysv.errors import ConfigError, ManifestError
from raysv.models import build_encoder
from raysv.models.checkpoint import encoder_spec, load_encoder, save_encoder
from raysv.pipeline.iterate import split_manifest
from raysv.training.stage2 import prepare_inputs, resolve
from raysv.training.stage2_config import Stage2Config
from tests.conftest import cli_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "configs", "train_smoke.yaml")


def tiny_encoder(path: str) -> str:
    """A small random ECAPA-TDNN checkpoint (24 mel bins)."""
    torch.manual_seed(0)
    kw = {"channels": 16, "embed_dim": 16, "attn_bottleneck": 16}
    enc = build_encoder("ecapa", 24, **kw)
    return save_encoder(path, enc.state_dict(), encoder_spec("ecapa", 24, kw))


def noisy_labels(pool: str, out: str, wrong: float = 0.25, seed: int = 0) -> str:
    """Pseudo labels made from the (test) corpus's speakers with a share flipped at random."""
    t = pq.read_table(pool, columns=["utt_id", "speaker"])
    _, ids = np.unique(np.asarray(t.column("speaker").to_pylist()), return_inverse=True)
    rng = np.random.default_rng(seed)
    flip = rng.random(len(ids)) < wrong
    ids = np.where(flip, rng.integers(0, ids.max() + 1, len(ids)), ids)
    kept = np.ones(len(ids), bool)
    kept[:2] = False
    pq.write_table(
        pa.table(
            {
                "utt_id": t.column("utt_id"),
                "cluster": ids.astype(np.int64),
                "distance": np.zeros(len(ids), np.float32),
                "kept": kept,
                "round": np.ones(len(ids), np.int32),
            },
            schema=PSEUDO_LABELS,
        ),
        out,
    )
    return out


@pytest.fixture(scope="module")
def stage2_inputs(tiny_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("s2")
    man, _ = prepare_corpus(tiny_corpus, str(d / "manifests"))
    split = split_manifest(man.utterances, man.trials, str(d / "split"))
    return {
        "manifest": man.utterances,
        "trials": man.trials,
        "pool": split["pool"],
        "labels": noisy_labels(split["pool"], str(d / "labels.parquet")),
        "init": tiny_encoder(str(d / "init.pt")),
        "dir": d,
    }


def test_train_with_dlg_lc_gate_tracks_and_saves_an_encoder(stage2_inputs, ray_local, capsys):
    x = stage2_inputs
    out = str(x["dir"] / "run")
    code = main(
        [
            "train",
            "--config",
            SMOKE,
            "--labels",
            x["labels"],
            "--manifest",
            x["manifest"],
            "--init",
            x["init"],
            "--dev-trials",
            x["trials"]["dev"],
            "--test-trials",
            x["trials"]["test"],
            "--out",
            out,
            "--json",
        ]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    s = cli_json(stdout)
    assert s["epochs"] == 2 and len(s["history"]) == 2
    first, second = s["history"]
    # Epoch 0 is warm-up (gate open); epoch 1 uses a tau fitted to epoch 0's losses.
    assert "gate_tau" not in first and first["gate_pass_share"] == 1.0
    assert "gate_tau" in second and 0 <= second["gate_pass_share"] <= 1
    assert 0 <= second["gate_relabel_share"] <= 1 - second["gate_pass_share"] + 1e-9
    # Analysis against the corpus's speakers (never used by training) is reported.
    for key in ("reliable_share_all", "reliable_share_passed", "dev_eer", "train_accuracy"):
        assert key in second, key
    assert 0.5 < first["reliable_share_all"] <= 1.0  # about 75 % of the test labels are right
    # Labels of rows that are not kept are never trained on.
    assert s["train_utterances"] == pq.read_table(x["pool"]).num_rows - 2
    for k in ("init.dev.eer", "best.dev.eer", "init.test.eer", "best.test.eer"):
        assert 0 <= s["final"][k] <= 100
    # The best encoder on dev is at least as good as the initial one (selection on dev).
    assert s["final"]["best.dev.eer"] <= s["final"]["init.dev.eer"] + 1e-9
    model, spec = load_encoder(s["best_model"])
    assert spec["n_mels"] == 24 and model(torch.zeros(2, 80, 24)).shape == (2, 16)
    client = mlflow.MlflowClient(s["mlflow"]["tracking_uri"])
    run = client.get_run(s["mlflow"]["run_id"])
    assert run.data.params["gate.name"] == "dlg-lc"
    assert len(client.get_metric_history(run.info.run_id, "gate_pass_share")) == 2
    assert "final.best.test.eer" in run.data.metrics


def _cfg(x, tmp_path, **over) -> Stage2Config:
    sets = [
        f"data.labels={x['labels']}",
        f"data.utterances={x['manifest']}",
        f"init_checkpoint={x['init']}",
        f"out={tmp_path / 'bad'}",
    ] + [f"{k}={v}" for k, v in over.items()]
    return load_config(Stage2Config, SMOKE, sets)


def test_bad_stage2_input_fails_before_any_worker(stage2_inputs, tmp_path):
    x = stage2_inputs
    none_kept = str(tmp_path / "none_kept.parquet")
    t = pq.read_table(x["labels"])
    pq.write_table(t.set_column(3, "kept", pa.array([False] * t.num_rows)), none_kept)
    with pytest.raises(ManifestError, match="no kept rows"):
        prepare_inputs(resolve(_cfg(x, tmp_path, **{"data.labels": none_kept})))
    with pytest.raises(ConfigError, match="larger than the data"):
        prepare_inputs(resolve(_cfg(x, tmp_path, **{"train.batch_size": 1000})))
    with pytest.raises(ConfigError, match="no such encoder checkpoint"):
        resolve(_cfg(x, tmp_path, init_checkpoint=str(tmp_path / "missing.pt")))
    with pytest.raises(ConfigError, match="gate.name"):
        _cfg(x, tmp_path, **{"gate.name": "always"})
    with pytest.raises(ConfigError, match="never closes"):
        _cfg(x, tmp_path, **{"gate.name": "lgl", "gate.warmup_epochs": 2})
    with pytest.raises(ConfigError, match="data.labels"):
        prepare_inputs(resolve(_cfg(x, tmp_path, **{"data.labels": "null"})))
    other = str(tmp_path / "other.parquet")
    pq.write_table(t.set_column(0, "utt_id", pa.array([f"x{i}" for i in range(t.num_rows)])), other)
    with pytest.raises(ManifestError, match="none of the"):
        prepare_inputs(resolve(_cfg(x, tmp_path, **{"data.labels": other})))
