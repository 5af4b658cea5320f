import json
import os

import pytest

from raysv.cli import main
from tests.conftest import cli_json


def test_featurize_benchmark_quick(tmp_path, capsys):
    assert main(["bench", "featurize", "--quick", "--out", str(tmp_path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (
        s["raysv_utts_per_s"] > 0
        and s["bare_loop_utts_per_s"] > 0
        and s["ratio_raysv_over_bare"] > 0
    )
    assert s["raysv_peak_rss_mb"] > 10
    with open(os.path.join(tmp_path, "featurize_quick.json")) as f:
        saved = json.load(f)
    assert saved["utterances"] == s["utterances"] == 8


@pytest.mark.slow
def test_embed_benchmark_quick(tmp_path, capsys):
    """raysv embed vs a bare loop on the same checkpoint and utterances: same rows, same vectors."""
    assert main(["bench", "embed", "--quick", "--out", str(tmp_path), "--json"]) == 0
    s = cli_json(capsys.readouterr().out)
    assert s["utterances"] == 32 and s["rows_match"]
    assert s["max_abs_embedding_diff"] < 1e-4
    assert s["raysv_embed_utts_per_s"] > 0 and s["ratio_raysv_over_bare"] > 0
    assert os.path.isfile(os.path.join(tmp_path, "embed_quick.json"))


@pytest.mark.slow
def test_pretrain_benchmark_quick(tmp_path, capsys):
    """Ray Train vs the plain loops: wall and CPU ratios from the same repeat."""
    assert main(["bench", "pretrain", "--quick", "--out", str(tmp_path), "--json"]) == 0
    s = cli_json(capsys.readouterr().out)
    for name in (
        "overhead_ratio_1_worker",
        "overhead_ratio_cpu_1_worker",
        "overhead_ratio_1_worker_same_input",
        "overhead_ratio_cpu_1_worker_same_input",
    ):
        assert len(s[f"{name}_per_repeat"]) == s["repeats"] == 1 and s[name] > 0, name
    # one thread's CPU time in a step can't exceed its wall time
    assert 0 < s["workers1_step_cpu_s"] <= s["workers1_step_s"] + 1e-3
    assert 0 < s["plain_step_cpu_s"] <= s["plain_step_s"] + 1e-3
    assert s["workers2_samples_per_s"] > 0
