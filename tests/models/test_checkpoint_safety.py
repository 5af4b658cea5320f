"""An untrusted checkpoint is data, never code: nothing in a malicious pickle runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from raysv.errors import ConfigError
from raysv.models import build_encoder
from raysv.models.checkpoint import encoder_spec, load_encoder, read_checkpoint, save_encoder


class _Evil:
    """Pickles to a call of os.system that writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "encoder": _Evil(str(marker))}, evil)
    with pytest.raises(ConfigError, match="refused: the checkpoint holds more than tensors"):
        read_checkpoint(str(evil))
    assert not marker.exists()


def test_the_cli_refuses_it_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "encoder": _Evil(str(marker))}, evil)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "raysv.cli",
            "embed",
            "--manifest",
            "m.parquet",
            "--out",
            str(tmp_path / "out"),
            "--checkpoint",
            str(evil),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "refused" in r.stderr.strip().splitlines()[-1]
    assert not marker.exists()


def test_a_real_checkpoint_still_loads(tmp_path):
    model = build_encoder("ecapa", 24, channels=16, embed_dim=16, attn_bottleneck=16)
    path = save_encoder(
        str(tmp_path / "best_model.pt"),
        model.state_dict(),
        encoder_spec("ecapa", 24, {"channels": 16, "embed_dim": 16, "attn_bottleneck": 16}),
        {"model": {"name": "ecapa"}, "train": {"lr": 1e-3, "epochs": 2}},
    )
    loaded, spec = load_encoder(path)
    assert spec["name"] == "ecapa"
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_bytes(b"these are my notes")
    with pytest.raises(ConfigError, match="not a readable torch checkpoint"):
        read_checkpoint(str(bad))


def test_checkpoints_carry_a_format_and_a_foreign_one_is_refused(tmp_path):
    import torch

    from raysv.errors import ConfigError
    from raysv.models.checkpoint import FORMAT, read_checkpoint, save_encoder

    path = str(tmp_path / "enc.pt")
    save_encoder(path, {"w": torch.zeros(2)}, {"name": "x", "n_mels": 40, "kwargs": {}})
    assert torch.load(path, weights_only=True)["format"] == FORMAT
    assert os.listdir(tmp_path) == ["enc.pt"]  # written through a temporary file
    blob = torch.load(path, weights_only=True)
    blob["format"] = "raysv-encoder/99"
    torch.save(blob, path)
    with pytest.raises(ConfigError, match="format 'raysv-encoder/99'.*retrain"):
        read_checkpoint(path)
    del blob["format"]  # written before the format entry existed: still loads
    torch.save(blob, path)
    assert read_checkpoint(path)[1]["name"] == "x"


def test_a_training_state_with_code_in_it_is_refused_and_plain_values_load(tmp_path):
    import numpy as np

    from raysv.models.checkpoint import load_training_state, plain_values

    marker = tmp_path / "ran"
    evil = tmp_path / "state.pt"
    torch.save({"model": {}, "state": {"epoch": _Evil(str(marker))}}, evil)
    with pytest.raises(ConfigError, match="refused.*nothing in it was run"):
        load_training_state(str(evil))
    assert not marker.exists()
    # what the workers save: numpy values made plain, read back with weights_only
    state = {"epoch": 3, "best_eer": np.float32(0.25), "history": [{"eer": np.float64(1.5)}]}
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(2)}, "state": plain_values(state)}, good)
    back = load_training_state(str(good))["state"]
    assert back == {"epoch": 3, "best_eer": 0.25, "history": [{"eer": 1.5}]}
