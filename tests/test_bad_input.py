"""Bad input through the real ``raysv`` entry point: one clear line, exit 2, no traceback.

Every case builds its own bad input in a temporary folder (real WAV, text,
JSON-lines, Parquet, YAML and checkpoint files), runs ``raysv.cli.main`` and
checks what a user sees: exit status 2, exactly one ``error:`` line on stderr
that names the offending file, row or value, and no traceback. A second table
holds inputs that are accepted with the bad rows skipped and listed: ``ingest``
(exit 0, ``<out>.skipped.jsonl``) and ``evaluate`` (exit 0, a warning), and
``validate``, which reports them and exits 1 (README).

Nearly every case fails before a Ray job starts; the few that need Ray use the
session's local instance (``ray_local``).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data  # noqa: F401  (see below)
import soundfile as sf

from raysv.cli import main
from tests.conftest import write_wav

# Ray's and Ray Data's log handlers write to the sys.stderr of the moment ``ray`` and
# ``ray.data`` are first imported. Imported here, at collection, that is pytest's
# session-long capture; imported first inside a case (raysv imports them lazily), it
# would be that case's capsys stream, closed when the case ends, and a later Ray
# warning would print a "Logging error" traceback into another case's stderr.

# ---------------------------------------------------------------- building blocks

BINARY = bytes(range(256)) * 4  # not UTF-8, not audio, not Parquet, not a pickle


def _wav_bytes(n: int = 1600) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, np.zeros(n, np.float32), 16000, format="WAV")
    return buf.getvalue()


TRUNCATED_WAV = _wav_bytes()[:30]  # a RIFF header cut off before its fmt chunk ends


def _text(path: Path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def _parquet(path: Path, table: pa.Table | dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table if isinstance(table, pa.Table) else pa.table(table), str(path))
    return str(path)


def _vox(root: Path, speakers=("s1", "s2"), sessions=("a",), utts=2) -> Path:
    """``root/<speaker>/<session>/<n>.wav``: short noise files."""
    for i, spk in enumerate(speakers):
        for j, ses in enumerate(sessions):
            for u in range(utts):
                write_wav(root / spk / ses / f"{u}.wav", seconds=0.3, seed=100 * i + 10 * j + u)
    return root


def _manifest(tmp: Path, name="u.parquet", n=4, **override) -> str:
    """A valid utterances manifest over real WAVs (columns replaced by ``override``)."""
    paths = [write_wav(tmp / "audio" / f"{i}.wav", seconds=0.3, seed=i) for i in range(n)]
    cols = {
        "utt_id": [f"u{i}" for i in range(n)],
        "path": paths,
        "speaker": [f"s{i % 2}" for i in range(n)],
        "duration_s": [0.3] * n,
        "sample_rate": [16000] * n,
        "start_s": pa.nulls(n, pa.float64()),
        "end_s": pa.nulls(n, pa.float64()),
    }
    cols.update(override)
    return _parquet(tmp / name, cols)


def _embeddings(path: Path, ids, mat) -> str:
    from raysv.data.schema import embeddings_table

    return _parquet(path, embeddings_table(ids, np.asarray(mat, np.float32)))


def _good_embeddings(tmp: Path, name="emb.parquet", n=4, dim=8) -> str:
    rng = np.random.default_rng(0)
    return _embeddings(tmp / name, [f"u{i}" for i in range(n)], rng.standard_normal((n, dim)))


def _kaldi_trials(tmp: Path, name="t.txt") -> str:
    return _text(tmp / name, "u0 u1 target\nu0 u2 nontarget\nu1 u3 nontarget\nu2 u3 target\n")


def _checkpoint(tmp: Path, name="best_model.pt") -> str:
    """A file ``read_checkpoint`` accepts (an ECAPA spec; the weights are never loaded)."""
    import torch

    from raysv.models.checkpoint import FORMAT, encoder_spec

    path = tmp / name
    spec = encoder_spec("ecapa", 40, {"channels": 16, "embed_dim": 16})
    torch.save({"format": FORMAT, "model": {}, "encoder": spec, "config": {}}, str(path))
    return str(path)


def _corpus(tmp: Path, name="corpus", trials=True, dialogues=True) -> Path:
    """A small corpus folder: wav/ speakers, unlabeled/ audio, dialogues.jsonl, trials/."""
    root = tmp / name
    _vox(root / "wav", speakers=("t1", "t2"), sessions=("a", "b"), utts=1)
    for i in range(4):
        write_wav(root / "unlabeled" / f"x{i}.wav", seconds=0.3, seed=50 + i)
    if dialogues:
        _jsonl(
            root / "dialogues.jsonl",
            [
                {"dialogue_id": "d1", "utterances": ["unlabeled/x0.wav", "unlabeled/x1.wav"]},
                {"dialogue_id": "d2", "utterances": ["unlabeled/x2.wav", "unlabeled/x3.wav"]},
            ],
        )
    if trials:
        _text(root / "trials" / "dev.txt", "1 t1/a/0.wav t1/b/0.wav\n0 t1/a/0.wav t2/a/0.wav\n")
    return root


def _jsonl(path: Path, lines) -> str:
    return _text(path, "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def _expand(flags, t: Path) -> list[str]:
    """Command-line pieces: a callable gets the case's folder and returns a path or a list."""
    out: list[str] = []
    for f in flags:
        v = f(t) if callable(f) else f
        out += [str(x) for x in v] if isinstance(v, list) else [str(v)]
    return out


def _run(argv, capsys):
    """``main(argv)``'s exit status (argparse's too), stdout and stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: usage + one error line, status 2
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- case builders
# Each takes the case's tmp_path and returns the argv; the expected substring of
# the error line sits beside it in the table below.


def synth_set(*sets):
    return lambda t: ["synth", "--out", t / "c", *[a for s in sets for a in ("--set", s)]]


def synth_config(content):
    return lambda t: ["synth", "--out", t / "c", "--config", _text(t / "s.yaml", content)]


SMALL_SYNTH = [
    f"--set={kv}"
    for kv in (
        "train_speakers=2",
        "dev_speakers=2",
        "test_speakers=2",
        "utts_per_speaker=2",
        "min_dialogue=2",
        "max_dialogue=2",
        "trials_per_split=2",
        "min_seconds=0.5",
        "max_seconds=0.5",
        "workers=1",
    )
]


def synth_out_is_file(t):
    return ["synth", "--out", _text(t / "taken", "x"), *SMALL_SYNTH]


def synth_force_foreign(t):
    _text(t / "mine" / "notes.txt", "keep me")
    return ["synth", "--out", t / "mine", "--force"]


def ingest_vox_with(files: dict, *flags):
    """A voxceleb folder with one good file plus ``files`` ({relative path: bytes | array})."""

    def build(t):
        root = _vox(t / "vox", speakers=("s1",), utts=1)
        for rel, content in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                sf.write(str(p), content, 16000, subtype="FLOAT")
        return ["ingest", "voxceleb", root, "--out", t / "u.parquet", *flags]

    return build


def ingest_only(files: dict, fmt="voxceleb", *flags):
    """A folder holding only ``files`` (bytes), none of them usable."""

    def build(t):
        for rel, content in files.items():
            _text(t / "src" / rel, content)
        return ["ingest", fmt, t / "src", "--out", t / "u.parquet", *flags]

    return build


def ingest_kaldi(wav_scp, utt2spk=None, segments=None, strict=True):
    def build(t):
        d = t / "data"
        a = write_wav(t / "audio" / "r1.wav", seconds=1.0)
        b = write_wav(t / "audio" / "r2.wav", seconds=1.0, seed=1)
        scp = wav_scp(a, b) if callable(wav_scp) else wav_scp
        _text(d / "wav.scp", scp)
        if utt2spk is not None:
            _text(d / "utt2spk", utt2spk)
        if segments is not None:
            _text(d / "segments", segments)
        return ["ingest", "kaldi", d, "--out", t / "u.parquet"] + (["--strict"] if strict else [])

    return build


def ingest_dialogues(lines, *flags, raw: bytes | None = None):
    def build(t):
        write_wav(t / "a" / "0.wav", seconds=0.3)
        write_wav(t / "a" / "1.wav", seconds=0.3, seed=1)
        path = t / "dlg.jsonl"
        if raw is not None:
            _text(path, raw)
        else:
            _jsonl(path, lines)
        return ["ingest", "dialogues", path, "--out", t / "u.parquet", *flags]

    return build


def ingest_trials(content, *flags, manifest=False, name="t.txt"):
    def build(t):
        src = content(t) if callable(content) else _text(t / name, content)
        extra = ["--manifest", _manifest(t)] if manifest else []
        return ["ingest", "trials", src, "--out", t / "t.parquet", *extra, *_expand(flags, t)]

    return build


def validate(manifest, *flags):
    def build(t):
        return ["validate", "--utterances", manifest(t), *_expand(flags, t)]

    return build


def embed_with(checkpoint=None, *flags, manifest=True):
    def build(t):
        if callable(manifest):
            man = manifest(t)
        else:
            man = _manifest(t) if manifest else t / "none.parquet"
        argv = ["embed", "--manifest", man]
        argv += ["--out", t / "emb"]
        if checkpoint is not None:
            argv += ["--checkpoint", checkpoint(t)]
        return argv + _expand(flags, t)

    return build


def torch_file(obj):
    def build(t):
        import torch

        torch.save(obj, str(t / "ckpt.pt"))
        return str(t / "ckpt.pt")

    return build


def pickle_file(obj):
    def build(t):
        with open(t / "ckpt.pt", "wb") as f:
            pickle.dump(obj, f)
        return str(t / "ckpt.pt")

    return build


class _Shell:
    """Pickles as a call to os.system: a checkpoint that would run code if unpickled."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def evaluate_with(embeddings=None, trials=None, *flags):
    def build(t):
        argv = ["evaluate"]
        if trials is not None:
            argv += ["--trials", trials(t)]
        if embeddings is not None:
            argv += ["--embeddings", embeddings(t)]
        return argv + _expand(flags, t)

    return build


def emb_file(ids, mat=None, table=None):
    def build(t):
        if table is not None:
            return _parquet(t / "emb.parquet", table)
        return _embeddings(t / "emb.parquet", ids, mat)

    return build


def cluster_with(embeddings, *flags):
    def build(t):
        return ["cluster", "--embeddings", embeddings(t), "--out", t / "labels", *flags]

    return build


def pretrain_with(data=None, *flags):
    def build(t):
        argv = ["pretrain", "--out", t / "run"]
        if data is not None:
            argv += ["--data", data(t)]
        return argv + _expand(flags, t)

    return build


def train_with(*flags, labels=None, manifest=True):
    def build(t):
        argv = ["train", "--out", t / "run"]
        if manifest:
            argv += ["--manifest", _manifest(t)]
        if labels is not None:
            argv += ["--labels", labels(t)]
        return argv + _expand(flags, t)

    return build


def train_head_init(embeddings):
    """``raysv train`` on 4 labelled rows (batch 2) with ``data.head_init=embeddings(t)``."""
    return train_with(
        "--set",
        lambda t: f"data.head_init={embeddings(t)}",
        "--set",
        "train.batch_size=2",
        labels=labels_file([0, 1, 0, 1]),
    )


def labels_file(cluster, kept=None, ids=None):
    def build(t):
        n = len(cluster)
        return _parquet(
            t / "labels.parquet",
            {
                "utt_id": ids or [f"u{i}" for i in range(n)],
                "cluster": cluster,
                "distance": [0.1] * n,
                "kept": kept or [True] * n,
                "round": [1] * n,
            },
        )

    return build


def iterate_with(*flags, init=True):
    def build(t):
        argv = ["iterate", "--out", t / "run"]
        if init:
            argv += ["--init", _checkpoint(t)]
        return argv + _expand(flags, t)

    return build


def tune_config(content, *flags):
    return lambda t: (
        ["tune", "--out", t / "sweep", "--config", _text(t / "tune.yaml", content)] + [*flags]
    )


def demo_with(*flags):
    def build(t):
        argv = ["demo", "--out", t / "run"]
        return argv + _expand(flags, t)

    return build


def report_with(summary: str | bytes | None):
    def build(t):
        run = t / "run"
        run.mkdir()
        if summary is not None:
            _text(run / "summary.json", summary)
        return ["report", run, "--no-mlflow"]

    return build


def corpus_variant(edit):
    """A corpus folder changed by ``edit(root)``; returns its path."""

    def build(t):
        root = _corpus(t)
        edit(root)
        return str(root)

    return build


def _assert_one_clear_line(code, err: str, expect: str | tuple[str, ...]) -> None:
    """Exit 2, one ``error:`` line on stderr holding ``expect`` (each piece), no traceback."""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err, err
    assert code == 2, err
    assert len(errors) == 1, err
    for piece in expect if isinstance(expect, tuple) else (expect,):
        assert piece in errors[0], errors[0]


# ---------------------------------------------------------------- the table: exit 2

NAN_WAV = np.full(800, np.nan, dtype=np.float32)

CASES = [
    # -- synth: config values, --set syntax, --config files, --out
    pytest.param(
        synth_set("train_speakers=1"),
        "train_speakers must be >= 2 (a multi-speaker dialogue needs two), got 1",
        id="synth-train-speakers-1",
    ),
    pytest.param(
        synth_set("dev_speakers=-3"),
        "dev_speakers must be >= 2 (to make non-target trials), got -3",
        id="synth-dev-speakers-negative",
    ),
    pytest.param(
        synth_set("train_speakers=many"),
        "train_speakers: expected an integer, got 'many'",
        id="synth-int-given-word",
    ),
    pytest.param(
        synth_set("train_speakers=2.5"),
        "train_speakers: expected an integer, got 2.5",
        id="synth-int-given-float",
    ),
    pytest.param(
        synth_set("min_seconds=.nan"),
        "min_seconds: expected a finite number, got nan",
        id="synth-min-seconds-nan",
    ),
    pytest.param(
        synth_set("multi_speaker_fraction=1.5"),
        "multi_speaker_fraction must be in [0, 1], got 1.5",
        id="synth-fraction-above-1",
    ),
    pytest.param(
        synth_set("trials_per_split=0"), "trials_per_split must be >= 2, got 0", id="synth-trials-0"
    ),
    pytest.param(
        synth_set("seed=[1, 2]"), "seed: expected an integer, got [1, 2]", id="synth-seed-list"
    ),
    pytest.param(synth_set("speakers=3"), "unknown config key(s) speakers", id="synth-unknown-key"),
    pytest.param(
        synth_set("train_speakers"),
        "override 'train_speakers' is not of the form",
        id="synth-set-without-equals",
    ),
    pytest.param(
        synth_config("train_speakers: 3\nbogus: 1\n"),
        "unknown config key(s) bogus",
        id="synth-config-unknown-key",
    ),
    pytest.param(
        synth_config("- 1\n- 2\n"), "s.yaml: top level must be a mapping", id="synth-config-a-list"
    ),
    pytest.param(
        synth_config("train_speakers: [3\n"), "s.yaml: not valid YAML", id="synth-config-bad-yaml"
    ),
    pytest.param(
        synth_config("train_speakers: '3'\n"),
        "train_speakers: expected an integer, got '3'",
        id="synth-config-quoted-int",
    ),
    pytest.param(
        lambda t: ["synth", "--out", t / "c", "--config", t / "none.yaml"],
        "config file not found",
        id="synth-config-missing",
    ),
    pytest.param(
        synth_force_foreign, "not a corpus raysv synth wrote", id="synth-force-foreign-folder"
    ),
    # -- ingest voxceleb / librispeech
    pytest.param(
        lambda t: ["ingest", "voxceleb", _text(t / "f.wav", "x"), "--out", t / "u.parquet"],
        "f.wav: not a folder",
        id="ingest-vox-source-is-file",
    ),
    pytest.param(
        ingest_only({"s/a/junk.wav": BINARY}),
        "junk.wav: unreadable audio",
        id="ingest-vox-only-corrupt",
    ),
    pytest.param(
        ingest_only({"s/a/voice.m4a": b"\x00\x00\x00\x18ftypM4A " + BINARY}),
        "voice.m4a: format not decodable",
        id="ingest-vox-only-m4a",
    ),
    pytest.param(
        ingest_only({"s/a/text.wav": b"hello, I am not audio\n"}),
        "text.wav: unreadable audio",
        id="ingest-vox-text-as-wav",
    ),
    pytest.param(
        ingest_only({"s/a/empty.wav": b""}),
        "empty.wav: empty file (0 bytes)",
        id="ingest-vox-only-zero-bytes",
    ),
    pytest.param(
        ingest_vox_with({"s1/a/short.wav": np.zeros(0, np.float32)}, "--strict"),
        "short.wav: empty audio",
        id="ingest-vox-strict-zero-samples",
    ),
    pytest.param(
        ingest_vox_with({"s1/a/cut.wav": TRUNCATED_WAV}, "--strict"),
        "cut.wav",
        id="ingest-vox-strict-truncated-wav",
    ),
    pytest.param(
        ingest_vox_with({"s1/a/nan.wav": NAN_WAV}, "--strict", "--deep"),
        "nan.wav: NaN/inf sample",
        id="ingest-vox-strict-deep-nan",
    ),
    pytest.param(
        ingest_vox_with({"s1/a/v.m4a": b"\x00\x00\x00\x18ftypM4A "}, "--strict"),
        "v.m4a: format not decodable",
        id="ingest-vox-strict-m4a",
    ),
    pytest.param(
        ingest_vox_with({"stray.wav": np.zeros(800, np.float32)}, "--strict"),
        "stray.wav: expected ROOT/<speaker>/<session>",
        id="ingest-vox-strict-bad-layout",
    ),
    pytest.param(
        lambda t: ["ingest", "librispeech", t / "nowhere", "--out", t / "u.parquet"],
        "nowhere: not a folder",
        id="ingest-librispeech-missing",
    ),
    pytest.param(
        ingest_only({"19/198/x.flac": BINARY}, "librispeech", "--strict"),
        "x.flac: unreadable audio",
        id="ingest-librispeech-strict-corrupt",
    ),
    pytest.param(
        lambda t: ["ingest", "webdataset", t, "--out", t / "u.parquet"],
        "invalid choice: 'webdataset'",
        id="ingest-unknown-format",
    ),
    # -- ingest kaldi
    pytest.param(
        lambda t: ["ingest", "kaldi", (t / "d").mkdir() or t / "d", "--out", t / "u.parquet"],
        "not a Kaldi data directory (no wav.scp)",
        id="kaldi-no-wav-scp",
    ),
    pytest.param(
        ingest_kaldi(lambda a, b: f"r1 {a}\nr1 {b}\n"),
        "wav.scp:2: recording 'r1' already given on line 1",
        id="kaldi-duplicate-recording-id",
    ),
    pytest.param(
        ingest_kaldi(lambda a, b: f"r1 {a}\nr2 {b}\n", segments="s1 r1 0 0.5\ns1 r2 0 0.5\n"),
        "utt_id 's1' already used by",
        id="kaldi-duplicate-segment-id",
    ),
    pytest.param(
        ingest_kaldi("r1 audio/r1.wav\n"),
        "audio/r1.wav: file does not exist",
        id="kaldi-relative-path-not-in-dir",
    ),
    pytest.param(
        ingest_kaldi(lambda a, b: f"r1 sox {a} -t wav - |\n"),
        "wav.scp:1: piped commands are not supported",
        id="kaldi-piped-command",
    ),
    pytest.param(
        ingest_kaldi("onlyone\n"),
        "wav.scp:1: expected at least 2 fields",
        id="kaldi-one-field-line",
    ),
    pytest.param(
        ingest_kaldi(BINARY),
        "wav.scp: not UTF-8 text (byte 128, line 2)",
        id="kaldi-binary-wav-scp",
    ),
    pytest.param(
        ingest_kaldi(lambda a, b: f"r1 {a}\n", segments="s1 r1 zero 0.5\n"),
        "segments:1: start/end are not numbers",
        id="kaldi-segment-not-numbers",
    ),
    pytest.param(
        ingest_kaldi(lambda a, b: f"r1 {a}\n", segments="s1 r1 0.5 0.2\n"),
        "segments:1: segment needs 0 <= start < end, got 0.5 0.2",
        id="kaldi-segment-reversed",
    ),
    pytest.param(
        ingest_kaldi(lambda a, b: f"r1 {a}\n", segments="s1 r1 0 nan\n"),
        "segments:1: segment needs 0 <= start < end, got 0.0 nan",
        id="kaldi-segment-end-nan",
    ),
    pytest.param(
        ingest_kaldi(lambda a, b: f"r1 {a}\n", segments="s1 r1 0.0 9.0\n"),
        "segment s1 ends at 9.0s, after the file's end",
        id="kaldi-segment-past-end",
    ),
    pytest.param(
        ingest_kaldi(lambda a, b: f"r1 {a}\n", segments="s1 rX 0 0.5\n"),
        "segments:1: recording 'rX' is not in wav.scp",
        id="kaldi-segment-unknown-recording",
    ),
    pytest.param(
        ingest_kaldi(lambda a, b: f"r1 {a}\n", utt2spk="r1\n"),
        "utt2spk:1: expected at least 2 fields",
        id="kaldi-utt2spk-one-field",
    ),
    # -- ingest dialogues
    pytest.param(
        ingest_dialogues(["{not json"], "--strict"),
        "dlg.jsonl:1: not valid JSON",
        id="dialogues-strict-not-json",
    ),
    pytest.param(
        ingest_dialogues([[1, 2]], "--strict"),
        'dlg.jsonl:1: expected {"dialogue_id"',
        id="dialogues-strict-line-is-array",
    ),
    pytest.param(
        ingest_dialogues([{"dialogue_id": "d", "utterances": "a/0.wav"}], "--strict"),
        'dlg.jsonl:1: expected {"dialogue_id"',
        id="dialogues-strict-utterances-string",
    ),
    pytest.param(
        ingest_dialogues([{"utterances": ["a/0.wav", "a/1.wav"]}], "--strict"),
        'dlg.jsonl:1: expected {"dialogue_id"',
        id="dialogues-strict-no-dialogue-id",
    ),
    pytest.param(
        ingest_dialogues([{"dialogue_id": "d", "utterances": [5, "a/1.wav"]}], "--strict"),
        "dlg.jsonl:1: utterance without a path: 5",
        id="dialogues-strict-path-number",
    ),
    pytest.param(
        ingest_dialogues(
            [
                {
                    "dialogue_id": "d",
                    "utterances": [{"path": "a/0.wav", "session_id": ["x"]}, "a/1.wav"],
                }
            ],
            "--strict",
        ),
        "dlg.jsonl:1: session_id must be a string, got ['x'] (a/0.wav)",
        id="dialogues-strict-session-list",
    ),
    pytest.param(
        ingest_dialogues(
            [
                {"dialogue_id": "d", "utterances": ["a/0.wav", "a/1.wav"]},
                {"dialogue_id": "d", "utterances": ["a/1.wav", "a/0.wav"]},
            ],
            "--strict",
        ),
        "dlg.jsonl:2: dialogue 'd' already given on line 1",
        id="dialogues-strict-id-given-twice",
    ),
    pytest.param(
        ingest_dialogues([{"dialogue_id": True, "utterances": ["a/0.wav", "a/1.wav"]}], "--strict"),
        "dlg.jsonl:1: dialogue_id must be a string, got True",
        id="dialogues-strict-id-bool",
    ),
    pytest.param(
        ingest_dialogues(
            [{"dialogue_id": {"a": 1}, "utterances": ["a/0.wav", "a/1.wav"]}], "--strict"
        ),
        "dlg.jsonl:1: dialogue_id must be a string, got {'a': 1}",
        id="dialogues-strict-id-object",
    ),
    pytest.param(
        ingest_dialogues(None, raw=BINARY),
        "dlg.jsonl: not UTF-8 text (byte 128, line 2)",
        id="dialogues-binary-file",
    ),
    pytest.param(
        ingest_dialogues(None, raw=b""),
        "dlg.jsonl: no usable audio found",
        id="dialogues-empty-file",
    ),
    pytest.param(
        ingest_dialogues(
            [{"dialogue_id": "d", "utterances": ["a/0.wav", "a/1.wav"]}],
            "--audio-root",
            "/nonexistent-root",
        ),
        "no usable audio found",
        id="dialogues-audio-root-missing",
    ),
    pytest.param(
        lambda t: ["ingest", "dialogues", t / "none.jsonl", "--out", t / "u.parquet"],
        "none.jsonl: no such file",
        id="dialogues-file-missing",
    ),
    # -- ingest trials
    pytest.param(
        ingest_trials("2 a.wav b.wav\n", "--strict"),
        "t.txt:1: no label",
        id="trials-strict-label-2",
    ),
    pytest.param(
        ingest_trials("a b maybe\n"), "t.txt: no trials found", id="trials-only-bad-labels"
    ),
    pytest.param(
        ingest_trials("1 a.wav b.wav extra\n", "--strict"),
        "t.txt:1: expected 3 fields",
        id="trials-strict-four-fields",
    ),
    pytest.param(ingest_trials(""), "t.txt: no trials found", id="trials-empty-file"),
    pytest.param(
        ingest_trials(BINARY), "t.txt: not UTF-8 text (byte 128, line 2)", id="trials-binary-file"
    ),
    pytest.param(
        ingest_trials("1 zz.wav yy.wav\n", manifest=True),
        "none of the 1 trials name files in the manifest",
        id="trials-all-unknown-files",
    ),
    pytest.param(
        ingest_trials("1 u0 u9\n0 u0 u1\n", "--strict", manifest=True),
        "t.txt trial 1: u9 not in the manifest",
        id="trials-strict-unknown-file",
    ),
    pytest.param(
        ingest_trials("1 u0 u1\n", "--manifest", lambda t: t / "none.parquet"),
        "none.parquet: no such file",
        id="trials-manifest-missing",
    ),
    pytest.param(
        ingest_trials(lambda t: _parquet(t / "t.parquet", {"a": [1], "b": ["x"]})),
        "trials table is missing column(s) label, enroll, test",
        id="trials-parquet-wrong-columns",
    ),
    pytest.param(
        ingest_trials(
            lambda t: _parquet(t / "t.parquet", {"label": ["yes"], "enroll": ["a"], "test": ["b"]})
        ),
        "column 'label' has type string",
        id="trials-parquet-label-strings",
    ),
    pytest.param(
        ingest_trials(lambda t: _text(t / "t.parquet", "1 a b\n")),
        "t.parquet: cannot read as Parquet",
        id="trials-text-named-parquet",
    ),
    pytest.param(
        lambda t: ["ingest", "trials", t / "none.txt", "--out", t / "t.parquet"],
        "none.txt: no such file",
        id="trials-file-missing",
    ),
    # -- validate
    pytest.param(
        validate(lambda t: str(t / "none.parquet")),
        "none.parquet: no such file or folder",
        id="validate-missing-manifest",
    ),
    pytest.param(
        validate(lambda t: _text(t / "u.parquet", "utt_id,path\n")),
        "u.parquet: cannot read as Parquet",
        id="validate-csv-named-parquet",
    ),
    pytest.param(
        validate(lambda t: _text(t / "u.parquet", BINARY)),
        "u.parquet: cannot read as Parquet",
        id="validate-binary-manifest",
    ),
    pytest.param(
        validate(lambda t: _parquet(t / "u.parquet", {"utt_id": ["a"], "path": ["/x.wav"]})),
        "missing column(s) duration_s, sample_rate",
        id="validate-missing-columns",
    ),
    pytest.param(
        validate(lambda t: _manifest(t, duration_s=["long"] * 4)),
        "column 'duration_s' has type string",
        id="validate-duration-strings",
    ),
    pytest.param(
        validate(lambda t: _manifest(t, sample_rate=[2**40] * 4)),
        "column 'sample_rate' has type int64, expected int32",
        id="validate-sample-rate-overflows",
    ),
    pytest.param(
        validate(lambda t: _manifest(t, duration_s=[0.0, -1.0, float("nan"), -0.0])),
        "no valid rows (4 rows, all invalid)",
        id="validate-all-durations-bad",
    ),
    pytest.param(
        validate(lambda t: _manifest(t, utt_id=["a", "a", "b", "c"]), "--strict"),
        "u.parquet row 1: utt_id 'a' appears more than once",
        id="validate-strict-duplicate-id",
    ),
    pytest.param(
        validate(lambda t: _manifest(t, sample_rate=[16000, -8000, 16000, 16000]), "--strict"),
        "row 1: sample_rate must be > 0, got -8000",
        id="validate-strict-negative-rate",
    ),
    pytest.param(
        validate(
            lambda t: _manifest(
                t, path=["/gone/a.wav", "/gone/b.wav", "/gone/c.wav", "/gone/d.wav"]
            ),
            "--check-audio",
            "--strict",
        ),
        "/gone/a.wav: file does not exist",
        id="validate-strict-missing-audio",
    ),
    pytest.param(
        validate(
            lambda t: _manifest(
                t, path=[write_wav(t / "n.wav", data=NAN_WAV)] * 4, utt_id=["a", "b", "c", "d"]
            ),
            "--deep",
            "--strict",
        ),
        "n.wav: NaN/inf sample",
        id="validate-strict-deep-nan",
    ),
    pytest.param(
        validate(_manifest, lambda t: ["--dialogues", _parquet(t / "d.parquet", {"id": ["x"]})]),
        "dialogues table is missing column(s) dialogue_id, utt_ids",
        id="validate-dialogues-wrong-columns",
    ),
    pytest.param(
        validate(
            _manifest,
            lambda t: [
                "--dialogues",
                _parquet(t / "d.parquet", {"dialogue_id": ["x"], "utt_ids": ["u0 u1"]}),
            ],
        ),
        "column 'utt_ids' has type string",
        id="validate-dialogues-ids-not-a-list",
    ),
    pytest.param(
        validate(
            _manifest, lambda t: ["--trials", _text(t / "t.txt", "1 u0 u1\nfoo\n")], "--strict"
        ),
        "t.txt:2: expected 3 fields",
        id="validate-strict-trial-bad-line",
    ),
    pytest.param(
        validate(_manifest, lambda t: ["--trials", str(t / "nope.txt")]),
        "nope.txt: no such file",
        id="validate-trials-missing",
    ),
    # -- embed (all fail before Ray starts)
    pytest.param(
        embed_with(lambda t: _text(t / "ckpt.pt", BINARY)),
        "ckpt.pt: not a readable torch checkpoint",
        id="embed-checkpoint-random-bytes",
    ),
    pytest.param(
        embed_with(lambda t: _text(t / "ckpt.pt", "epoch: 3\nloss: 0.1\n")),
        "ckpt.pt: not a readable torch checkpoint",
        id="embed-checkpoint-text",
    ),
    pytest.param(
        embed_with(torch_file({"weights": [1.0, 2.0]})),
        "ckpt.pt: not a raysv encoder checkpoint (no 'model' entry)",
        id="embed-checkpoint-dict-without-model",
    ),
    pytest.param(
        embed_with(pickle_file({"weights": [1.0, 2.0]})),
        "ckpt.pt: not a readable torch checkpoint",
        id="embed-checkpoint-plain-pickle",
    ),
    pytest.param(
        embed_with(torch_file([1, 2, 3])),
        "ckpt.pt: not a raysv encoder checkpoint",
        id="embed-checkpoint-a-list",
    ),
    pytest.param(
        embed_with(torch_file({"model": {}, "format": "other/9"})),
        "encoder checkpoint format 'other/9'",
        id="embed-checkpoint-foreign-format",
    ),
    pytest.param(
        embed_with(torch_file({"model": {}})),
        "neither an 'encoder' spec nor a Stage I config",
        id="embed-checkpoint-no-spec",
    ),
    pytest.param(
        embed_with(torch_file(_Shell())), "ckpt.pt: refused", id="embed-checkpoint-code-pickle"
    ),
    pytest.param(
        embed_with(lambda t: str(t / "none.pt")),
        "none.pt: no such encoder checkpoint",
        id="embed-checkpoint-missing",
    ),
    pytest.param(
        embed_with(lambda t: str(t)),
        "no such encoder checkpoint",
        id="embed-checkpoint-is-a-folder",
    ),
    pytest.param(
        embed_with(None, manifest=False),
        "none.parquet: no such utterances manifest",
        id="embed-manifest-missing",
    ),
    pytest.param(
        embed_with(None, "--average-sessions", lambda t: str(t / "emb")),
        "is the --out folder",
        id="embed-sessions-same-as-out",
    ),
    pytest.param(
        lambda t: ["embed", "--manifest", _manifest(t), "--out", _text(t / "emb", "x")],
        "emb: exists and is not a folder",
        id="embed-out-is-a-file",
    ),
    pytest.param(
        lambda t: [
            "embed",
            "--manifest",
            _manifest(t),
            "--out",
            os.path.dirname(_text(t / "emb" / "mine.txt", "x")),
        ],
        "holds 1 file(s) raysv embed did not write",
        id="embed-out-foreign-folder",
    ),
    pytest.param(
        lambda t: [
            "embed",
            "--manifest",
            _manifest(t),
            "--out",
            os.path.dirname(_text(t / "emb" / "_SUCCESS", '{"rows": 3}')),
        ],
        "written by an older raysv or another tool",
        id="embed-out-old-marker",
    ),
    pytest.param(
        embed_with(None, "--n-mels", "forty"),
        "argument --n-mels: invalid int value: 'forty'",
        id="embed-n-mels-word",
    ),
    pytest.param(
        embed_with(None, "--device", "tpu"),
        "argument --device: invalid choice: 'tpu'",
        id="embed-device-tpu",
    ),
    # -- evaluate
    pytest.param(
        evaluate_with(None, None), "give --trials and --embeddings", id="evaluate-nothing-given"
    ),
    pytest.param(
        evaluate_with(emb_file(None, table={"id": ["u0"], "vec": [[1.0]]}), _kaldi_trials),
        "embeddings table needs columns utt_id and embedding",
        id="evaluate-emb-wrong-columns",
    ),
    pytest.param(
        evaluate_with(
            emb_file(None, table={"utt_id": ["u0", "u1"], "embedding": [[1.0, 2.0], [1.0]]}),
            _kaldi_trials,
        ),
        "embeddings have different lengths [1, 2]",
        id="evaluate-emb-mixed-dims",
    ),
    pytest.param(
        evaluate_with(
            emb_file(
                None,
                table=pa.table(
                    {
                        "utt_id": pa.array([], pa.string()),
                        "embedding": pa.array([], pa.list_(pa.float32())),
                    }
                ),
            ),
            _kaldi_trials,
        ),
        "embeddings table is empty",
        id="evaluate-emb-empty",
    ),
    pytest.param(
        evaluate_with(
            emb_file(None, table={"utt_id": ["u0", "u1"], "embedding": [[1.0, 2.0], None]}),
            _kaldi_trials,
        ),
        "1 rows have no embedding (the first: utt_id u1)",
        id="evaluate-emb-null-row",
    ),
    pytest.param(
        evaluate_with(lambda t: _text(t / "emb.parquet", BINARY), _kaldi_trials),
        "emb.parquet: cannot read as Parquet",
        id="evaluate-emb-binary",
    ),
    pytest.param(
        evaluate_with(lambda t: os.path.dirname(_good_embeddings(t / "shards")), _kaldi_trials),
        "no _SUCCESS marker",
        id="evaluate-emb-folder-no-marker",
    ),
    pytest.param(
        evaluate_with(_good_embeddings, lambda t: _text(t / "t.txt", "1 zz yy\n")),
        "none of the 1 trials name files in the manifest",
        id="evaluate-trials-all-unknown",
    ),
    pytest.param(
        evaluate_with(
            _good_embeddings,
            lambda t: _text(t / "t.txt", "u0 u1 target\nu0 u9 nontarget\n"),
            "--strict",
        ),
        "t.txt trial 2: u9 not in the manifest",
        id="evaluate-strict-unknown-file",
    ),
    pytest.param(
        evaluate_with(
            _good_embeddings, _kaldi_trials, "--cohort", lambda t: str(t / "none.parquet")
        ),
        "none.parquet: no such file or folder",
        id="evaluate-cohort-missing",
    ),
    pytest.param(
        evaluate_with(
            _good_embeddings, _kaldi_trials, "--manifest", lambda t: str(t / "none.parquet")
        ),
        "none.parquet: no such file or folder",
        id="evaluate-manifest-missing",
    ),
    pytest.param(
        lambda t: [
            "evaluate",
            "--pseudo-labels",
            _parquet(t / "l.parquet", {"utt_id": ["u0"]}),
            "--manifest",
            _manifest(t),
        ],
        "pseudo_labels table is missing column(s) cluster",
        id="evaluate-labels-wrong-columns",
    ),
    pytest.param(
        lambda t: [
            "evaluate",
            "--pseudo-labels",
            labels_file([0, 1], ids=["x", "y"])(t),
            "--manifest",
            _manifest(t),
        ],
        "no speaker labels for the utterances of",
        id="evaluate-labels-unknown-utts",
    ),
    pytest.param(
        lambda t: [
            "evaluate",
            "--pseudo-labels",
            labels_file([0, 1])(t),
            "--manifest",
            _parquet(t / "m.parquet", {"utt_id": ["u0", "u1"], "path": ["a", "b"]}),
        ],
        "m.parquet: cannot read as Parquet: No match for FieldRef.Name(speaker)",
        id="evaluate-manifest-without-speaker",
    ),
    # -- cluster (all fail before Ray starts)
    pytest.param(
        cluster_with(lambda t: str(t / "none"), "--k", "3"),
        "none: no such file or folder",
        id="cluster-embeddings-missing",
    ),
    pytest.param(
        cluster_with(lambda t: os.path.dirname(_good_embeddings(t / "shards")), "--k", "2"),
        "no _SUCCESS marker",
        id="cluster-embeddings-folder-no-marker",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--k", "three"),
        "argument --k: expected a number of clusters or auto, got 'three'",
        id="cluster-k-word",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--elbow", "0,5"),
        "argument --elbow: expected positive integers; got '0,5'",
        id="cluster-elbow-zero",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--elbow", "5,x"),
        "expected comma-separated integers such as 20,40,80; got '5,x'",
        id="cluster-elbow-word",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--k", "2", "--iterations", "0"),
        "iterations must be >= 1, got 0",
        id="cluster-iterations-0",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--k", "2", "--max-points-per-centroid", "-1"),
        "max_points_per_centroid must be >= 1, got -1",
        id="cluster-max-points-negative",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--k", "2", "--drop-fraction", "1.5"),
        "drop fraction p must be in [0, 1), got 1.5",
        id="cluster-drop-fraction-1.5",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--k", "2", "--drop-fraction", "nan"),
        "drop fraction p must be in [0, 1), got nan",
        id="cluster-drop-fraction-nan",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--k", "2", "--min-cluster-size", "0"),
        "min cluster size S must be >= 1, got 0",
        id="cluster-min-size-0",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--k", "2", "--init", "kmeans--"),
        "argument --init: invalid choice",
        id="cluster-init-unknown",
    ),
    pytest.param(
        lambda t: [
            "cluster",
            "--embeddings",
            _good_embeddings(t),
            "--out",
            _text(t / "labels", "x"),
            "--k",
            "2",
        ],
        "labels: exists and is not a folder",
        id="cluster-out-is-a-file",
    ),
    pytest.param(
        cluster_with(lambda t: _good_embeddings(t, n=40), "--k", "auto", "--merge-threshold", "5"),
        "merge threshold is a cosine similarity in [-1, 1], got 5",
        id="cluster-merge-threshold-5",
    ),
    pytest.param(
        cluster_with(
            lambda t: _good_embeddings(t, n=40), "--k", "auto", "--merge-threshold", "nan"
        ),
        "merge threshold",
        id="cluster-merge-threshold-nan",
    ),
    pytest.param(
        cluster_with(lambda t: _good_embeddings(t, n=5), "--k", "auto"),
        "5 embeddings are too few to choose k from the data (need at least 15)",
        id="cluster-auto-k-too-few",
    ),
    # -- pretrain (all fail before Ray starts)
    pytest.param(pretrain_with(None), "no training data: give --data DIR", id="pretrain-no-data"),
    pytest.param(
        pretrain_with(lambda t: str(t / "nowhere")),
        "nowhere: no such folder",
        id="pretrain-data-missing",
    ),
    pytest.param(
        pretrain_with(lambda t: _text(t / "corpus", "x")),
        "corpus: no such folder",
        id="pretrain-data-is-a-file",
    ),
    pytest.param(
        pretrain_with(lambda t: str((t / "stuff").mkdir() or t / "stuff")),
        "stuff: not a corpus folder",
        id="pretrain-data-no-layout",
    ),
    pytest.param(
        pretrain_with(lambda t: _text(t / "c" / "unlabeled" / "a.wav", BINARY) and str(t / "c")),
        "no usable audio files found",
        id="pretrain-data-only-corrupt",
    ),
    pytest.param(
        pretrain_with(lambda t: str(_corpus(t, dialogues=False))),
        "dialogue mode needs a dialogues table",
        id="pretrain-no-dialogues",
    ),
    pytest.param(
        pretrain_with(lambda t: str(_corpus(t)), "--set", "train.batch_size=64"),
        "train.batch_size (64) is larger than the data (2 dialogues)",
        id="pretrain-batch-larger-than-data",
    ),
    pytest.param(
        pretrain_with(corpus_variant(lambda r: _text(r / "dialogues.jsonl", BINARY))),
        "dialogues.jsonl: not UTF-8 text (byte 128, line 2)",
        id="pretrain-dialogues-binary",
    ),
    pytest.param(
        pretrain_with(corpus_variant(lambda r: _text(r / "unlabeled.txt", BINARY))),
        "unlabeled.txt: not UTF-8 text (byte 128, line 2)",
        id="pretrain-unlabeled-txt-binary",
    ),
    pytest.param(
        pretrain_with(
            corpus_variant(lambda r: _text(r / "trials" / "dev.txt", "1 t1/a/0.wav t9/a/0.wav\n"))
        ),
        "none of the 1 trials name files in the manifest",
        id="pretrain-trials-unknown-files",
    ),
    pytest.param(
        pretrain_with(None, "--set", "loss.name=triplet"),
        "unknown loss 'triplet'",
        id="pretrain-unknown-loss",
    ),
    pytest.param(
        pretrain_with(None, "--set", "model.name=transformer"),
        "unknown encoder 'transformer'",
        id="pretrain-unknown-encoder",
    ),
    pytest.param(
        pretrain_with(None, "--set", "model.kwargs=5"),
        "model.kwargs: expected a mapping, got 5",
        id="pretrain-kwargs-not-mapping",
    ),
    pytest.param(
        pretrain_with(None, "--set", "model.kwargs={bogus: 1}"),
        "encoder 'ecapa': ECAPATDNN.__init__() got an unexpected keyword argument 'bogus'",
        id="pretrain-kwargs-unknown-argument",
    ),
    pytest.param(
        pretrain_with(None, "--set", "loss.name=ntxent"),
        "loss 'ntxent' needs data.mode=utterance",
        id="pretrain-ntxent-in-dialogue-mode",
    ),
    pytest.param(
        pretrain_with(None, "--set", "data.mode=utterance"),
        "data.mode=utterance (SimCLR) takes loss ntxent",
        id="pretrain-mode-loss-mismatch",
    ),
    pytest.param(
        pretrain_with(None, "--set", "data.mode=frames"),
        "data.mode: 'frames' is not one of",
        id="pretrain-mode-unknown",
    ),
    pytest.param(
        pretrain_with(None, "--set", "train.epochs=0"),
        "train.epochs must be >= 1, got 0",
        id="pretrain-epochs-0",
    ),
    pytest.param(
        pretrain_with(None, "--set", "train.num_workers=2", "--set", "train.batch_size=3"),
        "batch_size (3) must be a multiple of num_workers (2)",
        id="pretrain-batch-not-multiple",
    ),
    pytest.param(
        pretrain_with(None, "--set", "optim.lr=-0.1"),
        "optim.lr must be > 0, got -0.1",
        id="pretrain-lr-negative",
    ),
    pytest.param(
        pretrain_with(None, "--set", "loss.rejection.temperature=50"),
        "need 0 < rejection.temperature < max_temperature, got 50.0",
        id="pretrain-temperature-above-max",
    ),
    pytest.param(
        pretrain_with(None, "--set", "loss.rejection.threshold=2"),
        "loss.rejection.threshold must be in [-1, 1], got 2.0",
        id="pretrain-threshold-2",
    ),
    pytest.param(
        pretrain_with(None, "--set", "data.utts_per_dialogue=1"),
        "utts_per_dialogue must be >= 2",
        id="pretrain-m-1",
    ),
    pytest.param(
        pretrain_with(None, "--set", "data.crop_seconds=1e400"),
        "data.crop_seconds: expected a number, got '1e400'",
        id="pretrain-crop-not-a-yaml-float",
    ),
    pytest.param(
        pretrain_with(None, "--set", "train.max_unreadable_share=2"),
        "max_unreadable_share must be in [0, 1], got 2",
        id="pretrain-unreadable-share-2",
    ),
    pytest.param(
        pretrain_with(None, "--set", "train.data_task_cpus=0"),
        "data_task_cpus must be in (0, 64], got 0",
        id="pretrain-task-cpus-0",
    ),
    pytest.param(
        pretrain_with(None, "--set", "train.use_gpu=yes please"),
        "train.use_gpu: expected true/false",
        id="pretrain-use-gpu-words",
    ),
    pytest.param(
        pretrain_with(None, "--set", "model.foo=1"),
        "unknown config key(s) model.foo",
        id="pretrain-unknown-nested-key",
    ),
    pytest.param(
        lambda t: ["pretrain", "--config", _text(t / "p.yaml", "data:\n  crop_seconds: 0.01\n")],
        "crop_seconds must be >= 0.1, got 0.01",
        id="pretrain-config-crop-tiny",
    ),
    # -- train (Stage II; all fail before Ray starts)
    pytest.param(train_with(manifest=False), "Stage II needs data.labels", id="train-no-labels"),
    pytest.param(
        train_with("--labels", lambda t: str(t / "none.parquet")),
        "none.parquet: no such file or folder",
        id="train-labels-missing",
    ),
    pytest.param(
        train_with(labels=lambda t: _parquet(t / "l.parquet", {"utt_id": ["u0"], "cluster": [0]})),
        "pseudo_labels table is missing column(s) distance, kept, round",
        id="train-labels-wrong-columns",
    ),
    pytest.param(
        train_with(labels=labels_file(["a", "b", "a", "b"])),
        "column 'cluster' has type string",
        id="train-labels-cluster-strings",
    ),
    pytest.param(
        train_with(labels=labels_file([0, 0, 0, 0])),
        "the kept pseudo labels form 1 class; need >= 2",
        id="train-labels-one-class",
    ),
    pytest.param(
        train_with(labels=labels_file([0, 1, 0, 1], kept=[False] * 4)),
        "no kept rows in the pseudo-label table",
        id="train-labels-none-kept",
    ),
    pytest.param(
        train_with(labels=labels_file([0, 1], ids=["x", "y"])),
        "none of the 2 labelled utterances is in the manifest",
        id="train-labels-unknown-utts",
    ),
    pytest.param(
        train_with(labels=labels_file([0, 1, 0, 1])),
        "train.batch_size (64) is larger than the data (4 labelled utterances)",
        id="train-batch-larger-than-data",
    ),
    pytest.param(
        train_with(
            "--init", lambda t: _text(t / "ckpt.pt", BINARY), labels=labels_file([0, 1, 0, 1])
        ),
        "ckpt.pt: not a readable torch checkpoint",
        id="train-init-random-bytes",
    ),
    pytest.param(
        train_with("--init", pickle_file({"model": 1}), labels=labels_file([0, 1, 0, 1])),
        "ckpt.pt: not a readable torch checkpoint (corrupt pickle)",
        id="train-init-plain-pickle",
    ),
    pytest.param(
        train_with(
            "--gate", "dlg", "--set", "gate.warmup_epochs=0", labels=labels_file([0, 1, 0, 1])
        ),
        "gate.warmup_epochs must be >= 1",
        id="train-dlg-warmup-0",
    ),
    pytest.param(
        train_with(
            "--gate", "lgl", "--set", "gate.warmup_epochs=9", labels=labels_file([0, 1, 0, 1])
        ),
        "never closes in train.epochs=6",
        id="train-gate-never-closes",
    ),
    pytest.param(
        train_with("--set", "head.margin=1.5", labels=labels_file([0, 1, 0, 1])),
        "head.margin must be in [0, 1), got 1.5",
        id="train-margin-1.5",
    ),
    pytest.param(
        train_with("--set", "gate.tau=0", labels=labels_file([0, 1, 0, 1])),
        "gate.tau must be > 0, got 0",
        id="train-tau-0",
    ),
    pytest.param(
        train_with("--set", "gate.tau2=1", labels=labels_file([0, 1, 0, 1])),
        "gate.tau2 must be in (0, 1), got 1.0",
        id="train-tau2-1",
    ),
    pytest.param(
        train_with("--set", "encoder_lr_scale=0", labels=labels_file([0, 1, 0, 1])),
        "encoder_lr_scale must be in (0, 10], got 0.0",
        id="train-lr-scale-0",
    ),
    pytest.param(
        train_with("--set", "head_warmup_epochs=6", labels=labels_file([0, 1, 0, 1])),
        "head_warmup_epochs (6) must be in [0, train.epochs)",
        id="train-head-warmup-too-long",
    ),
    pytest.param(
        train_head_init(lambda t: t / "no-such-embeddings"),
        "no-such-embeddings",
        id="train-head-init-missing",
    ),
    pytest.param(
        train_head_init(lambda t: _good_embeddings(t, dim=8)),
        "data.head_init: class directions of shape (2, 8)",
        id="train-head-init-other-dimension",
    ),
    pytest.param(
        train_head_init(lambda t: _embeddings(t / "x.parquet", ["z0", "z1"], np.eye(2))),
        "holds none of the",
        id="train-head-init-other-utterances",
    ),
    pytest.param(
        train_with("--gate", "soft", labels=labels_file([0, 1, 0, 1])),
        "argument --gate: invalid choice: 'soft'",
        id="train-gate-unknown",
    ),
    pytest.param(
        train_with(
            "--dev-trials",
            lambda t: _text(t / "dev.txt", "1 zz yy\n"),
            labels=labels_file([0, 1, 0, 1]),
        ),
        "dev.txt: none of the 1 trials name files in the manifest",
        id="train-dev-trials-unknown",
    ),
    # -- iterate (all fail before Ray starts)
    pytest.param(iterate_with(init=False), "iterate needs init_checkpoint", id="iterate-no-init"),
    pytest.param(
        iterate_with("--init", lambda t: str(t / "none.pt"), init=False),
        "none.pt: no such encoder checkpoint",
        id="iterate-init-missing",
    ),
    pytest.param(
        iterate_with("--init", lambda t: _text(t / "ckpt.pt", "not a checkpoint\n"), init=False),
        "ckpt.pt: not a readable torch checkpoint",
        id="iterate-init-text",
    ),
    pytest.param(
        iterate_with("--rounds", "0"), "rounds must be >= 1, got 0", id="iterate-rounds-0"
    ),
    pytest.param(
        iterate_with("--rounds", "-2"), "rounds must be >= 1, got -2", id="iterate-rounds-negative"
    ),
    pytest.param(
        iterate_with("--rounds", "1e3"),
        "argument --rounds: invalid int value: '1e3'",
        id="iterate-rounds-float",
    ),
    pytest.param(
        iterate_with("--set", "schedule.k=[1]"),
        "schedule.k[0] must be >= 2 (or auto), got 1",
        id="iterate-k-1",
    ),
    pytest.param(
        iterate_with("--set", "schedule.k=[auto, many]"),
        "schedule.k[1]: value 'many' matches none of",
        id="iterate-k-word",
    ),
    pytest.param(
        iterate_with("--set", "schedule.k=[]"),
        "schedule.k needs at least one value",
        id="iterate-k-empty",
    ),
    pytest.param(
        iterate_with("--set", "schedule.drop_fraction=[0.1, 1.0]"),
        "schedule.drop_fraction[1] must be in [0, 1) (or auto), got 1.0",
        id="iterate-round-2-drop-fraction-1",
    ),
    pytest.param(
        iterate_with("--set", "schedule.min_cluster_size=[0]"),
        "schedule.min_cluster_size[0] must be >= 1 (or auto), got 0",
        id="iterate-min-size-0",
    ),
    pytest.param(
        iterate_with("--set", "train.gate.tau=5"),
        "train.gate.tau is set by each round from schedule.tau; remove it",
        id="iterate-train-key-set-by-rounds",
    ),
    pytest.param(
        iterate_with("--set", "train.model.name=resnet"),
        "train.model is set by each round from the checkpoint it starts from; remove it",
        id="iterate-train-model-ignored",
    ),
    pytest.param(
        train_with(
            "--init",
            lambda t: _checkpoint(t),
            "--set",
            "model.kwargs={channels: 32, embed_dim: 16}",
            labels=labels_file([0, 1, 0, 1]),
        ),
        "differs from the encoder of",
        id="train-model-not-the-checkpoints",
    ),
    pytest.param(
        train_with(
            "--init",
            lambda t: _checkpoint(t),
            "--set",
            "data.n_mels=80",
            labels=labels_file([0, 1, 0, 1]),
        ),
        "data.n_mels 80 differs from the 40 of",
        id="train-n-mels-not-the-checkpoints",
    ),
    pytest.param(
        iterate_with("--set", "schedule.tau=[3, 0]"),
        "schedule.tau[1] must be > 0 (or auto), got 0.0",
        id="iterate-round-2-tau-0",
    ),
    pytest.param(
        iterate_with("--set", "cluster.iterations=0"),
        "iterations must be >= 1, got 0",
        id="iterate-kmeans-iterations-0",
    ),
    pytest.param(
        iterate_with("--set", "cluster.auto_k_false_accepts=0.7"),
        "cluster.auto_k_false_accepts must be in (0, 0.5), got 0.7",
        id="iterate-false-accepts-0.7",
    ),
    pytest.param(
        iterate_with("--set", "restart=sometimes"),
        "restart: 'sometimes' is not one of",
        id="iterate-restart-unknown",
    ),
    pytest.param(iterate_with(), "give data (a corpus folder) or utterances", id="iterate-no-data"),
    pytest.param(
        iterate_with("--data", lambda t: str(_corpus(t, trials=False))),
        "iterate needs trial lists",
        id="iterate-corpus-without-trials",
    ),
    pytest.param(
        iterate_with("--data", lambda t: str(t / "nowhere")),
        "nowhere: no such folder",
        id="iterate-data-missing",
    ),
    # -- tune (all fail before Ray starts)
    pytest.param(
        tune_config("stage: pretrain\n"), "nothing to sweep: give grid", id="tune-no-grid"
    ),
    pytest.param(
        tune_config("grid:\n  train.batch_size: 16\n"),
        "grid.train.batch_size: expected a non-empty list of values, got 16",
        id="tune-grid-value-not-list",
    ),
    pytest.param(
        tune_config("grid:\n  train.batch_size: []\n"),
        "grid.train.batch_size: expected a non-empty list",
        id="tune-grid-empty-list",
    ),
    pytest.param(
        tune_config("grid:\n  train.bogus: [1, 2]\n"),
        "trial 0 ({'train.bogus': 1}): unknown config key(s) train.bogus",
        id="tune-grid-unknown-key",
    ),
    pytest.param(
        tune_config("grid:\n  train.batch_size: [16, 0]\n"),
        "trial 1 ({'train.batch_size': 0})",
        id="tune-grid-bad-value",
    ),
    pytest.param(
        tune_config("base:\n  optim: {lr: -1}\ngrid:\n  train.seed: [0]\n"),
        "optim.lr must be > 0, got -1.0",
        id="tune-base-bad-lr",
    ),
    pytest.param(
        tune_config("stage: both\ngrid:\n  train.seed: [0]\n"),
        "stage: 'both' is not one of",
        id="tune-stage-unknown",
    ),
    pytest.param(
        tune_config("grid:\n  train.seed: [0]\n", "--set", "repeats=0"),
        "repeats must be >= 1, got 0",
        id="tune-repeats-0",
    ),
    pytest.param(tune_config("grid: [1, 2]\n"), "grid: expected a mapping", id="tune-grid-a-list"),
    # -- demo (all fail before Ray starts)
    pytest.param(
        demo_with("--data", lambda t: str(t / "nowhere")),
        "nowhere: no such folder",
        id="demo-data-missing",
    ),
    pytest.param(
        demo_with("--data", lambda t: str(_corpus(t, trials=False))),
        "no trials/dev.txt or trials/test.txt to evaluate on",
        id="demo-corpus-without-trials",
    ),
    pytest.param(
        demo_with("--set", "synth.train_speakers=1"),
        "synth.train_speakers must be >= 2 (a multi-speaker dialogue needs two), got 1",
        id="demo-synth-speakers-1",
    ),
    pytest.param(
        demo_with("--set", "stage1=maybe"),
        "stage1: expected true/false, got 'maybe'",
        id="demo-stage1-word",
    ),
    pytest.param(
        demo_with("--set", "stage2.rounds=0"), "rounds must be >= 1, got 0", id="demo-rounds-0"
    ),
    pytest.param(
        demo_with("--set", "pretrain.train.batch_size=1"),
        "pretrain.train.batch_size must be >= 2, got 1",
        id="demo-pretrain-batch-1",
    ),
    # -- report
    pytest.param(
        report_with(None),
        "no summary.json; is this a finished raysv iterate/demo folder?",
        id="report-no-summary",
    ),
    pytest.param(
        report_with('{"out": "x"}'),
        "neither an iterate nor a demo summary",
        id="report-summary-no-rounds",
    ),
    pytest.param(
        lambda t: ["report", t / "nowhere"], "nowhere: no summary.json", id="report-run-missing"
    ),
    # -- fixed in this session after this suite found them (tracebacks before)
    pytest.param(
        synth_set("train_speakers=[1, 2"),
        ("--set 'train_speakers=[1, 2'", "not valid YAML"),
        id="synth-set-not-yaml",
    ),
    pytest.param(
        lambda t: ["pretrain", "--out", t / "run", "--set", "train={epochs: 2"],
        "not valid YAML",
        id="pretrain-set-not-yaml",
    ),
    pytest.param(
        synth_config(BINARY),
        ("s.yaml: not a text (YAML) file", "byte 128"),
        id="synth-config-binary",
    ),
    pytest.param(synth_out_is_file, ("taken", "is not a folder"), id="synth-out-is-a-file"),
    pytest.param(
        lambda t: ["demo", "--out", _text(t / "run", "x"), "--set", "stage1=false"],
        ("run: exists and is not a folder", "raysv demo"),
        id="demo-out-is-a-file",
    ),
    pytest.param(
        lambda t: [
            "cluster",
            "--embeddings",
            _good_embeddings(t),
            "--out",
            _text(t / "lab", "x"),
            "--elbow",
            "2,3",
        ],
        ("lab: exists and is not a folder", "raysv cluster"),
        id="cluster-elbow-out-is-a-file",
    ),
    pytest.param(
        lambda t: ["ingest", "voxceleb", _vox(t / "v"), "--out", (t / "d").mkdir() or t / "d"],
        ("--out", "is a folder; give the Parquet file"),
        id="ingest-out-is-a-folder",
    ),
    pytest.param(
        embed_with(None, "--n-mels", "0"), "--n-mels must be at least 3, got 0", id="embed-n-mels-0"
    ),
    pytest.param(
        embed_with(None, "--max-seconds", "nan"),
        "--max-seconds must be a positive number of seconds, got nan",
        id="embed-max-seconds-nan",
    ),
    pytest.param(
        embed_with(None, "--max-seconds", "0"),
        "--max-seconds must be a positive number of seconds, got 0.0",
        id="embed-max-seconds-0",
    ),
    pytest.param(
        embed_with(None, "--concurrency", "0"),
        "--concurrency must be at least 1 actor, got 0",
        id="embed-concurrency-0",
    ),
    pytest.param(
        lambda t: [
            "embed",
            "--manifest",
            _text(t / "u.parquet", "utt_id,path\n"),
            "--out",
            t / "e",
        ],
        ("u.parquet: not a Parquet manifest",),
        id="embed-manifest-is-text",
    ),
    pytest.param(
        lambda t: [
            "embed",
            "--manifest",
            _parquet(t / "u.parquet", {"utt_id": ["a"], "path": ["a.wav"]}),
            "--out",
            t / "e",
        ],
        "lacks column(s) start_s, end_s",
        id="embed-manifest-without-start-end",
    ),
    pytest.param(
        report_with('{"rounds": '), ("summary.json: damaged", "delete it"), id="report-summary-cut"
    ),
    pytest.param(
        report_with(BINARY), "summary.json: damaged (UnicodeDecodeError", id="report-summary-binary"
    ),
    pytest.param(
        report_with("[1, 2]"), "summary.json: not a raysv run summary", id="report-summary-list"
    ),
    pytest.param(
        evaluate_with(
            _good_embeddings,
            _kaldi_trials,
            "--cohort",
            lambda t: _good_embeddings(t, name="cohort.parquet", dim=5),
        ),
        "the cohort's embeddings have 5 dimensions, the trials' 8",
        id="evaluate-cohort-other-dimension",
    ),
    pytest.param(
        evaluate_with(
            _good_embeddings,
            _kaldi_trials,
            "--cohort",
            lambda t: _good_embeddings(t, name="cohort.parquet"),
            "--top-k",
            "-5",
        ),
        "AS-norm top_k must be at least 1, got -5",
        id="evaluate-top-k-negative",
    ),
    pytest.param(
        evaluate_with(
            emb_file(None, table={"utt_id": ["u0", "u1"], "embedding": [["a", "b"], ["c", "d"]]}),
            _kaldi_trials,
        ),
        "the embedding column holds non-numbers",
        id="evaluate-emb-strings",
    ),
    pytest.param(
        evaluate_with(
            emb_file(["u0", "u1", "u2", "u3"], [[1.0, 0], [0, 1.0], [np.nan, 0], [1.0, 1.0]]),
            _kaldi_trials,
        ),
        ("1 embedding(s) hold NaN/inf values", "utt_id u2"),
        id="evaluate-emb-nan-named",
    ),
    pytest.param(
        lambda t: ["pretrain", "--out", t / "run", "--set", "optim.lr=.nan"],
        "optim.lr: expected a finite number, got nan",
        id="pretrain-lr-nan",
    ),
    pytest.param(
        lambda t: ["train", "--out", t / "run", "--set", "gate.tau=.inf"],
        "gate.tau: expected a finite number, got inf",
        id="train-gate-tau-inf",
    ),
    # -- nonsense numbers in configs, and bad model/loss settings, refused before Ray
    pytest.param(
        pretrain_with(None, "--set", "train.max_failures=-3"),
        "train.max_failures must be >= -1 (-1: no limit), got -3",
        id="pretrain-max-failures-negative",
    ),
    pytest.param(
        pretrain_with(None, "--set", "train.num_to_keep=0"),
        "train.num_to_keep must be >= 1, got 0",
        id="pretrain-num-to-keep-0",
    ),
    pytest.param(
        pretrain_with(None, "--set", "train.cpus_per_worker=-1"),
        "train.cpus_per_worker must be > 0 (or null: automatic), got -1.0",
        id="pretrain-cpus-per-worker-negative",
    ),
    pytest.param(
        pretrain_with(None, "--set", "train.seed=-3"),
        "train.seed must be >= 0, got -3",
        id="pretrain-seed-negative",
    ),
    pytest.param(
        pretrain_with(None, "--set", "optim.weight_decay=-0.1"),
        "optim.weight_decay must be >= 0, got -0.1",
        id="pretrain-weight-decay-negative",
    ),
    pytest.param(
        pretrain_with(None, "--set", "data.eval_max_seconds=0"),
        "data.eval_max_seconds must be > 0, got 0.0",
        id="pretrain-eval-max-seconds-0",
    ),
    pytest.param(
        pretrain_with(None, "--set", "loss.scale=-1"),
        "loss.scale must be > 0, got -1.0",
        id="pretrain-loss-scale-negative",
    ),
    pytest.param(
        pretrain_with(
            None,
            "--set",
            "loss.name=ntxent",
            "--set",
            "data.mode=utterance",
            "--set",
            "loss.temperature=-1",
        ),
        "loss.temperature must be > 0 (or null), got -1.0",
        id="pretrain-ntxent-temperature-negative",
    ),
    pytest.param(
        pretrain_with(None, "--set", "model.kwargs={channels: -4}"),
        ("model.kwargs {'channels': -4} of encoder 'ecapa'", "negative dimension -4"),
        id="pretrain-kwargs-channels-negative",
    ),
    pytest.param(
        pretrain_with(None, "--set", "model.kwargs={channels: 64, embed_dim: 0}"),
        "model.kwargs {'channels': 64, 'embed_dim': 0} of encoder 'ecapa'",
        id="pretrain-kwargs-embed-dim-0",
    ),
    pytest.param(
        pretrain_with(None, "--set", "model.kwargs={channels: 12}"),
        "ECAPA channels (12) must be divisible by scale (8)",
        id="pretrain-kwargs-channels-not-divisible",
    ),
    pytest.param(
        pretrain_with(
            corpus_variant(lambda r: _text(r / "trials" / "dev.txt", "1 t1/a/0.wav t1/b/0.wav\n"))
        ),
        ("dev", "1 target and 0 non-target trials"),
        id="pretrain-dev-trials-only-target",
    ),
    pytest.param(
        train_with("--set", "model.kwargs={channels: -4}", manifest=False),
        ("model.kwargs {'channels': -4} of encoder 'ecapa'", "negative dimension -4"),
        id="train-kwargs-channels-negative",
    ),
    pytest.param(
        train_with("--set", "data.n_mels=0", manifest=False),
        "data.n_mels must be >= 8 (or null: the checkpoint's), got 0",
        id="train-n-mels-0",
    ),
    pytest.param(
        train_with("--set", "train.num_to_keep=0", manifest=False),
        "train.num_to_keep must be >= 1, got 0",
        id="train-num-to-keep-0",
    ),
    pytest.param(
        train_with("--set", "gate.seed=-1", manifest=False),
        "gate.seed must be >= 0, got -1",
        id="train-gate-seed-negative",
    ),
    pytest.param(
        iterate_with("--set", "cluster.shards=0"),
        "cluster.shards must be >= 1 (or null: automatic), got 0",
        id="iterate-shards-0",
    ),
    pytest.param(
        iterate_with("--set", "cluster.early_stop=-0.5"),
        "early_stop must be a fraction in [0, 1), or -1 (never), got -0.5",  # KMeansSpec's check
        id="iterate-early-stop-negative",
    ),
    pytest.param(
        iterate_with("--set", "train.train.max_failures=-2"),
        "train.train.max_failures must be >= -1 (-1: no limit), got -2",
        id="iterate-max-failures-negative",
    ),
    pytest.param(
        synth_set("workers=-5"),
        "workers must be >= 0 (0: all cores), got -5",
        id="synth-workers-negative",
    ),
    pytest.param(
        synth_config("workers: -5\n"),
        "workers must be >= 0 (0: all cores), got -5",
        id="synth-config-workers-negative",
    ),
    pytest.param(synth_set("seed=-1"), "seed must be >= 0, got -1", id="synth-seed-negative"),
    *[
        pytest.param(
            cluster_with(_good_embeddings, "--k", "2", "--early-stop", v),
            f"argument --early-stop: expected a fraction in [0, 1), or -1 (never), got '{v}'",
            id=f"cluster-early-stop-{v}",
        )
        for v in ("nan", "inf", "-0.5", "1.5")
    ],
    pytest.param(
        cluster_with(_good_embeddings, "--k", "2", "--seed", "-1"),
        "seed must be >= 0, got -1",
        id="cluster-seed-negative",
    ),
    pytest.param(
        evaluate_with(
            _good_embeddings, lambda t: _text(t / "t.txt", "u0 u1 target\nu2 u3 target\n")
        ),
        "t.txt: 2 target and 0 non-target trials",
        id="evaluate-trials-only-target",
    ),
    pytest.param(
        evaluate_with(
            _good_embeddings, lambda t: _text(t / "t.txt", "u0 u1 nontarget\nu2 u3 nontarget\n")
        ),
        "t.txt: 0 target and 2 non-target trials",
        id="evaluate-trials-only-nontarget",
    ),
    # -- bench and the top level
    pytest.param(
        lambda t: ["bench", "everything"],
        "argument name: invalid choice: 'everything'",
        id="bench-unknown-name",
    ),
    pytest.param(lambda t: ["train2"], "invalid choice: 'train2'", id="unknown-command"),
]


@pytest.mark.parametrize("build, expect", CASES)
def test_bad_input_is_one_clear_line(build, expect, tmp_path, capsys):
    argv = build(tmp_path)
    code, _, err = _run(argv, capsys)
    _assert_one_clear_line(code, err, expect)


# ---------------------------------------------------------------- accepted: bad rows skipped and listed
# (build, exit status, text the summary on stdout must hold, text the skipped list must hold).
# ``ingest`` writes every skipped row to ``<out>.skipped.jsonl`` and exits 0; ``validate``
# reports the bad rows and exits 1 (README); ``evaluate`` scores the trials it can and warns.


def _vox_plus(files: dict):
    """A voxceleb folder of two good files plus ``files`` ({relative path: bytes})."""

    def build(t):
        root = _vox(t / "vox", speakers=("s1",), utts=2)
        for rel, content in files.items():
            _text(root / rel, content)
        return ["ingest", "voxceleb", root, "--out", t / "u.parquet"]

    return build


def _emptied(rel: str):
    """A flag builder that truncates the case's file ``rel`` to 0 bytes (after the manifest)."""

    def build(t):
        (t / rel).write_bytes(b"")
        return []

    return build


ACCEPTED = [
    pytest.param(
        _vox_plus({"s1/a/empty.wav": b""}),
        0,
        "skipped 1 empty audio files (0 samples)",
        "empty.wav: empty file (0 bytes)",
        id="ingest-vox-zero-byte-file-skipped",
    ),
    pytest.param(
        _vox_plus({"s1/a/cut.wav": TRUNCATED_WAV}),
        0,
        "skipped 1 unreadable audio files",
        "cut.wav: unreadable audio",
        id="ingest-vox-truncated-wav-skipped",
    ),
    pytest.param(
        _vox_plus({"s1/a/voice.m4a": b"\x00\x00\x00\x18ftypM4A "}),
        0,
        "voice.m4a: format not decodable by libsndfile; convert it first, e.g. ffmpeg -i",
        "voice.m4a",
        id="ingest-vox-m4a-skipped-with-ffmpeg-line",
    ),
    pytest.param(
        ingest_kaldi(lambda a, b: f"r1 {a}\nr2 sox {b} -t wav - |\n", strict=False),
        0,
        "wav.scp:2: piped commands are not supported",
        "wav.scp:2",
        id="ingest-kaldi-piped-line-skipped",
    ),
    pytest.param(
        ingest_kaldi(
            lambda a, b: f"r1 {a}\n", segments="s1 r1 0 0.5\ns2 r1 0.5 3.0\n", strict=False
        ),
        0,
        "segment s2 ends at 3.0s, after the file's end",
        "segment s2 ends at 3.0s",
        id="ingest-kaldi-segment-past-end-skipped",
    ),
    pytest.param(
        ingest_dialogues(
            [{"dialogue_id": "d1", "utterances": ["a/0.wav", "a/1.wav"]}, '{"dialogue_id": "d2",']
        ),
        0,
        "dlg.jsonl:2: not valid JSON",
        "dlg.jsonl:2",
        id="ingest-dialogues-broken-line-skipped",
    ),
    pytest.param(
        ingest_dialogues(
            [
                {"dialogue_id": "d1", "utterances": ["a/0.wav", "a/1.wav"]},
                {"dialogue_id": "d2", "utterances": [{"path": "a/0.wav", "speaker": {"x": 1}}]},
            ]
        ),
        0,
        "dlg.jsonl:2: speaker must be a string, got {'x': 1}",
        "speaker must be a string",
        id="ingest-dialogues-speaker-object-skipped",
    ),
    pytest.param(
        ingest_trials("1 a.wav b.wav\n1 a.wav b.wav c.wav\n"),
        0,
        "t.txt:2: expected 3 fields",
        "t.txt:2",
        id="ingest-trials-four-fields-skipped",
    ),
    pytest.param(
        ingest_trials("1 u0 u1\n0 u0 u7\n", manifest=True),
        0,
        "t.txt trial 2: u7 not in the manifest",
        "u7 not in the manifest",
        id="ingest-trials-unknown-file-skipped",
    ),
    pytest.param(
        validate(lambda t: _manifest(t, duration_s=[0.3, float("nan"), 0.3, 0.3])),
        1,
        "u.parquet row 1: duration_s must be > 0, got nan",
        None,
        id="validate-nan-duration-reported",
    ),
    pytest.param(
        validate(_manifest, "--check-audio", _emptied("audio/2.wav")),
        1,
        "2.wav: empty file (0 bytes)",
        None,
        id="validate-emptied-audio-reported",
    ),
    pytest.param(
        evaluate_with(
            _good_embeddings,
            lambda t: _text(t / "t.txt", "u0 u1 target\nu0 u2 nontarget\nu0 u8 target\n"),
        ),
        0,
        "t.txt trial 3: u8 not in the manifest",
        None,
        id="evaluate-unknown-trial-file-skipped",
    ),
]


@pytest.mark.parametrize("build, status, summary, listed", ACCEPTED)
def test_bad_rows_are_skipped_and_listed(build, status, summary, listed, tmp_path, capsys):
    argv = [str(a) for a in build(tmp_path)]
    code, out, err = _run(argv, capsys)
    assert "Traceback" not in err, err
    assert not [line for line in err.splitlines() if "error:" in line], err
    assert code == status, out + err
    assert summary in out, out
    if listed is not None:
        skipped = os.path.splitext(argv[argv.index("--out") + 1])[0] + ".skipped.jsonl"
        assert f"all skipped rows listed in {skipped}" in out, out
        rows = [json.loads(line) for line in Path(skipped).read_text().splitlines()]
        assert any(listed in f"{r['where']}: {r['message']}" for r in rows), rows


# ---------------------------------------------------------------- cases that reach Ray
# k against the number of embeddings, and the shard count, are checked where the shards
# start: these cases need the session's Ray (kept few, they are the slow ones).

RAY_CASES = [
    pytest.param(
        cluster_with(
            lambda t: _embeddings(
                t / "emb.parquet", ["u0", "u1", "u2"], [[1.0, 0], [np.nan, 1], [0, 1]]
            ),
            "--k",
            "2",
        ),
        ("1 embedding(s) hold NaN/inf values", "utt_id u1"),
        id="cluster-nan-embeddings",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--k", "0"), "k must be >= 1, got 0", id="cluster-k-0"
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--k", "100"),
        "k = 100 clusters is more than the 4 embeddings",
        id="cluster-k-above-n",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--k", "2", "--shards", "0"),
        "shards must be >= 1, got 0",
        id="cluster-shards-0",
    ),
    pytest.param(
        cluster_with(
            lambda t: _embeddings(
                t / "emb.parquet",
                [f"u{i}" for i in range(6)],
                [[1.0, 0], [0, 1], [1, 1], [0, 1], [np.inf, 0], [1, 0]],
            ),
            "--k",
            "auto",
        ),
        ("emb.parquet: 1 embedding(s) hold NaN/inf values", "utt_id u4"),
        id="cluster-auto-k-nan-embeddings",
    ),
    pytest.param(
        embed_with(
            None,
            manifest=lambda t: _manifest(t, path=[str(t / "gone" / f"{i}.wav") for i in range(4)]),
        ),
        ("gone/0.wav: file does not exist", "no utterance could be embedded"),
        id="embed-audio-files-missing",
    ),
    pytest.param(
        cluster_with(_good_embeddings, "--elbow", "2,100"),
        "k = 100 clusters is more than the 4 embeddings; choose k <= 4",
        id="cluster-elbow-k-above-n",
    ),
]


@pytest.mark.parametrize("build, expect", RAY_CASES)
def test_bad_input_met_in_ray_is_one_clear_line(build, expect, tmp_path, capsys, ray_local):
    code, _, err = _run(build(tmp_path), capsys)
    _assert_one_clear_line(code, err, expect)
