import json
import os
import subprocess
import sys

import pytest

from raysv.cli import COMMANDS, main


def test_top_level_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "raysv.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--json" in out and COMMANDS[name][0] in out


def test_console_script_installed():
    script = os.path.join(
        os.path.dirname(sys.executable), "raysv"
    )  # installed beside this interpreter
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("raysv ")


def test_synth_ingest_evaluate_roundtrip(tmp_path, capsys):
    corpus = tmp_path / "c"
    args = [
        "synth",
        "--out",
        str(corpus),
        "--set",
        "train_speakers=3",
        "--set",
        "dev_speakers=2",
        "--set",
        "test_speakers=2",
        "--set",
        "utts_per_speaker=4",
        "--set",
        "trials_per_split=12",
        "--set",
        "max_seconds=1.0",
        "--set",
        "min_seconds=0.6",
    ]
    assert main([*args, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["speakers"] == {"train": 3, "dev": 2, "test": 2} and s["trials"]["dev"] == 12
    # A second synth into the same folder needs --force.
    assert main(args) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    bad = ["synth", "--out", str(tmp_path / "x"), "--set", "train_speaker=3"]
    assert main(bad) == 2
    assert "unknown config key(s) train_speaker" in capsys.readouterr().err

    man = str(tmp_path / "u.parquet")
    assert main(["ingest", "voxceleb", str(corpus / "wav"), "--out", man, "-q"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "ingest",
                "trials",
                str(corpus / "trials" / "test.txt"),
                "--manifest",
                man,
                "--out",
                str(tmp_path / "t.parquet"),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["rows"] == 12
    emb = str(tmp_path / "emb.parquet")
    # Embeddings written directly (no Ray) with the baseline, then evaluated from the CLI.
    import numpy as np
    import pyarrow.parquet as pq

    from raysv.embedding.baseline import BaselineEmbedder

    t = pq.read_table(man)
    batch = {
        c: np.asarray(t.column(c).to_pylist(), dtype=object)
        for c in ("utt_id", "path", "start_s", "end_s")
    }
    out = BaselineEmbedder()(batch)
    assert out.schema.field("embedding").type.list_size == 80  # fixed-size float32 vectors
    pq.write_table(out, emb)
    assert (
        main(
            [
                "evaluate",
                "--trials",
                str(corpus / "trials" / "test.txt"),
                "--embeddings",
                emb,
                "--manifest",
                man,
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert 0 <= r["eer"] <= 100 and r["n_target"] + r["n_nontarget"] == 12
    assert -1 <= r["merge_threshold"] <= 1  # plain cosine: automatic k's threshold is given
    assert (
        main(
            [
                "evaluate",
                "--trials",
                str(corpus / "trials" / "test.txt"),
                "--embeddings",
                emb,
                "--manifest",
                man,
                "--center",
                "--cohort",
                emb,
                "--top-k",
                "5",
            ]
        )
        == 0
    )
    human = capsys.readouterr().out
    assert "EER" in human and "merge threshold" not in human  # centred + AS-norm: not cosine
    assert main(["evaluate", "--trials", str(tmp_path / "none.txt"), "--embeddings", emb]) == 2
    assert "none.txt" in capsys.readouterr().err


def test_evaluate_pseudo_labels(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    man = tmp_path / "u.parquet"
    pq.write_table(
        pa.table(
            {
                "utt_id": ["a", "b", "c", "d", "e"],
                "path": ["x"] * 5,
                "speaker": ["s1", "s1", "s2", "s2", None],
                "duration_s": [1.0] * 5,
                "sample_rate": [16000] * 5,
            }
        ),
        man,
    )
    labels = tmp_path / "l.parquet"
    pq.write_table(
        pa.table(
            {
                "utt_id": ["a", "b", "c", "d", "e"],
                "cluster": [0, 0, 1, 0, 1],
                "distance": [0.1] * 5,
                "kept": [True, True, True, False, True],
                "round": [1] * 5,
            }
        ),
        labels,
    )
    assert main(["evaluate", "--pseudo-labels", str(labels), "--manifest", str(man), "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["clustering"]
    assert c["all"]["reliable_share"] == 0.75 and c["kept"]["reliable_share"] == 1.0
    assert c["kept"]["nmi"] == 1.0 and c["without_speaker_label"] == 1
    assert main(["evaluate", "--pseudo-labels", str(labels)]) == 2
    assert "needs --manifest" in capsys.readouterr().err


def test_raysv_errors_raised_in_ray_tasks_and_actors_are_found_behind_rays_wrappers(
    ray_local,
):
    # (Ray Data 2.60 keeps only the text of a UDF's error, in a UserCodeException:
    # raysv's UDFs never raise for bad rows, they skip and list them.)
    import ray

    from raysv.errors import ManifestError, raysv_cause

    @ray.remote
    def task():
        raise ManifestError("rows.parquet: row 7 is bad")

    @ray.remote
    class Actor:
        def go(self):
            try:
                raise KeyError("inner")
            except KeyError as exc:
                raise ManifestError("rows.parquet: row 9 is bad") from exc

    with pytest.raises(Exception) as info:
        ray.get(task.remote())
    assert str(raysv_cause(info.value)) == "rows.parquet: row 7 is bad"
    with pytest.raises(Exception) as info:
        ray.get(Actor.remote().go.remote())
    assert str(raysv_cause(info.value)) == "rows.parquet: row 9 is bad"
    assert raysv_cause(ValueError("a bug")) is None
