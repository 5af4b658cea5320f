"""The sweep report of ``raysv tune``: curves and dev EER per knob, from the sweep summary."""

import json
import os

from raysv.cli import main
from tests.conftest import cli_json


def _summary(out: str) -> dict:
    trials = [
        {
            "trial": 0,
            "params": {"loss.rejection.threshold": 0.3, "loss.name": "ava"},
            "status": "finished",
            "epochs": 3,
            "dev_eer": 21.5,
            "test_eer": 22.0,
            "curve": [{"epochs": e, "dev_eer": 30 - 3 * e} for e in (1, 2, 3)],
        },
        {
            "trial": 1,
            "params": {"loss.rejection.threshold": 0.7, "loss.name": "aproto"},
            "status": "stopped",
            "epochs": 1,
            "dev_eer": 35.0,
            "curve": [{"epochs": 1, "dev_eer": 35.0}],
        },
        {
            "trial": 2,
            "params": {"loss.rejection.threshold": 0.5, "loss.name": "ava"},
            "status": "ended_early",
            "epochs": 2,
            "dev_eer": 40.0,
            "reason": "collapse",
            "curve": [{"epochs": 1, "dev_eer": 41.0}, {"epochs": 2, "dev_eer": 40.0}],
        },
        {
            "trial": 3,
            "params": {"loss.rejection.threshold": 0.6, "loss.name": "ava"},
            "status": "failed",
            "error": "boom",
        },
    ]
    return {
        "out": out,
        "stage": "pretrain",
        "search": "random",
        "scheduler": "asha",
        "trials": trials,
        "counts": {"finished": 1, "stopped": 1, "ended_early": 1, "failed": 1},
        "failed_trials": ["trial 3: boom"],
        "best": trials[0],
        "best_config": os.path.join(out, "best_config.yaml"),
        "selection": "lowest dev EER of the finished trials",
        "seconds": 1.0,
    }


def test_raysv_report_on_a_sweep_folder_draws_its_curves_and_knobs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "summary.json").write_text(json.dumps(_summary(str(sweep))))
    assert main(["report", str(sweep), "--no-mlflow", "--json"]) == 0
    res = cli_json(capsys.readouterr().out)
    assert res["report"] == str(sweep / "report" / "report.html")
    for name in ("curves", "knobs"):
        assert os.path.getsize(res["plots"][name]) > 5000  # a drawn PNG
    with open(res["report"]) as f:
        page = f.read()
    assert "best trial: #0</b> (dev EER 21.50 %, test EER 22.00 %)" in page
    rows = page.split("<tr>")[2:]
    assert len(rows) == 4  # every trial, the failed one too
    assert "stopped" in rows[1] and "ended_early (collapse)" in rows[2] and "failed" in rows[3]
    assert "<b>0</b>" in rows[0] and "<b>" not in rows[1]  # the best trial stands out
    assert page.count("data:image/png;base64,") == 2


def test_a_folder_that_is_neither_a_sweep_nor_a_run_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"trials": []}))
    assert main(["report", str(tmp_path), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "neither an iterate nor a demo summary" in err and "Traceback" not in err
