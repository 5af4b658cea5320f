"""The demo's closing summary text (pure functions over a summary dict)."""

from raysv.reporting.summary import demo_summary, results_lines


def test_demo_summary_says_when_a_round_kept_its_encoder_and_the_ratio():
    from raysv.reporting.summary import label_free_ratio, round_kept_line

    kept = {"round": 2, "train.best_epoch": -1, "train.init_dev_eer": 13.0, "train_epochs": 6}
    line = round_kept_line(kept)
    assert line.startswith("round 2: kept the encoder it started from")
    assert "dev EER of 13.00%" in line
    line = round_kept_line({**kept, "train.best_epoch_dev_eer": 18.2})
    assert "dev EER of 13.00%, the best reached 18.20%" in line
    assert round_kept_line({**kept, "train.best_epoch": 3}) is None
    assert round_kept_line({"round": 1}) is None  # a summary without the field says nothing
    results = {
        "stage1": {"test": {"eer": 20.0}},
        "round1": {"test": {"eer": 18.0}},
        "round2": {"test": {"eer": 16.5}},
        "supervised_reference": {"test": {"eer": 15.0}},
    }
    assert label_free_ratio(results) == (
        "label-free / supervised test EER: 1.10x (Stage II round 2 16.50% vs 15.00% "
        "with the true speakers)"
    )
    assert label_free_ratio({"stage1": {"test": {"eer": 20.0}}}) is None


def _summary(**extra) -> dict:
    split = {"n_target": 300, "n_nontarget": 1200}
    results = {
        "baseline": {"dev": {"eer": 38.1, "min_dcf_0.01": 0.99}, "test": {"eer": 39.2}},
        "stage1": {"dev": {"eer": 21.0, "min_dcf_0.01": 0.9}, "test": {"eer": 21.5}},
        "round1": {"dev": {"eer": 19.0}, "test": {"eer": 20.0}, "nmi": 0.77},
        "round2": {"dev": {"eer": 19.0}, "test": {"eer": 20.0}, "nmi": 0.78, "nmi_after": 0.8},
        "supervised_reference": {"dev": {"eer": 17.0}, "test": {"eer": 18.4}},
    }
    rounds = [
        {"round": 1, "k": 44, "k_auto": True, "train.best_epoch": 2},
        {"round": 2, "k": 44, "train.best_epoch": -1, "train.init_dev_eer": 19.0},
    ]
    return {
        "out": "runs/demo",
        "seconds": 412.3,
        "baseline": {"dev": split, "test": split},
        "stage2": {"rounds": rounds},
        "results": results,
        **extra,
    }


def test_results_table_has_one_aligned_row_per_stage_in_pipeline_order():
    lines = results_lines(_summary()["results"])
    assert lines[0].split()[:3] == ["stage", "dev", "EER"]
    names = [line[: lines[0].index("dev")].strip() for line in lines[1:]]
    assert names == [
        "baseline (log-mel)",
        "Stage I",
        "Stage II round 1",
        "Stage II round 2",
        "supervised reference",
    ]
    col = lines[0].index("test EER %") + len("test EER %")  # right-aligned under its head
    assert [line[col - 5 : col] for line in lines[1:]] == [
        "39.20",
        "21.50",
        "20.00",
        "20.00",
        "18.40",
    ]
    assert lines[4].endswith("0.780 -> 0.800") and lines[2].endswith("-")
    assert "0.990" in lines[1] and lines[3].split()[5] == "-"  # a missing minDCF is "-"


def test_demo_summary_has_the_table_the_kept_round_the_ratio_and_next_steps():
    text = demo_summary(_summary(synth={}))
    lines = text.splitlines()
    table = lines.index(results_lines(_summary()["results"])[0])
    assert lines[table + 1].startswith("baseline (log-mel)")
    assert "round 1: k = 44 chosen from the embeddings" in lines[:table]
    assert "trials (target+non-target): dev 300+1200, test 300+1200" in lines
    assert any(line.startswith("round 2: kept the encoder it started from") for line in lines)
    assert not any(line.startswith("round 1: kept") for line in lines)
    assert "label-free / supervised test EER: 1.09x" in text
    assert "raysv demo --data DIR" in text and "On a cluster in three steps" in text
    # on the user's own corpus (no synth step) it does not suggest --data again
    assert "raysv demo --data DIR" not in demo_summary(_summary())


def test_demo_bench_averages_stages_and_each_rounds_gain_over_seeds():
    from raysv.bench.demo import aggregate

    def table(s1: float, r1: float, r2: float, ref: float, nmi1: float, nmi2: float) -> dict:
        return {
            "baseline": {"test": {"eer": 40.0}},
            "stage1": {"dev": {"eer": s1 + 1}, "test": {"eer": s1, "min_dcf_0.01": 0.9}},
            "round1": {
                "dev": {"eer": r1 + 1},
                "test": {"eer": r1, "min_dcf_0.01": 0.8},
                "nmi": nmi1,
            },
            "round2": {
                "dev": {"eer": r2 + 1},
                "test": {"eer": r2, "min_dcf_0.01": 0.8},
                "nmi": nmi2,
                "nmi_after": 0.9,
            },
            "supervised_reference": {"test": {"eer": ref}},
        }

    a = aggregate([table(20, 18, 17, 17, 0.7, 0.8), table(22, 21, 19, 20, 0.6, 0.6)])
    assert a["stages"]["stage1"]["test.eer"] == {"mean": 21.0, "min": 20.0, "max": 22.0, "n": 2}
    assert a["stages"]["round2"]["nmi_after"]["mean"] == 0.9
    assert a["gains"]["round1"]["test.eer"] == -1.5  # (18 - 20 + 21 - 22) / 2
    assert a["gains"]["round2"]["dev.eer"] == -1.5
    assert abs(a["gains"]["round2"]["nmi"] - 0.05) < 1e-12 and "nmi" not in a["gains"]["round1"]
    assert abs(a["label_free_over_supervised_test_eer"] - (17 / 17 + 19 / 20) / 2) < 1e-12
