"""``raysv bench export --quick``: three engines, two thread counts, same embeddings."""

import os

from raysv.cli import main
from tests.conftest import cli_json


def test_export_benchmark_quick(tmp_path, capsys):
    assert main(["bench", "export", "--quick", "--out", str(tmp_path), "--json"]) == 0
    s = cli_json(capsys.readouterr().out)
    assert sorted(s["runs"]) == sorted(
        f"{e}@{t}" for e in ("onnxruntime", "torch_eager", "torchscript") for t in (1, 2)
    )
    assert all(r["utts_per_s"] > 0 for r in s["runs"].values())
    assert max(s["max_abs_diff_vs_eager"].values()) <= 1e-4
    assert os.path.isfile(os.path.join(tmp_path, "export_quick.json"))
