import json
import os

from raysv.cli import main


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
