"""Stage I inputs: training tables, featurisers, and the Ray Data stream (shards, reshuffle)."""

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pytest

from raysv.errors import ManifestError
from raysv.training import data as tdata
from raysv.training.stream import EpochStream, build_dataset, exact_batches
from tests.conftest import write_wav


@pytest.fixture
def small_manifest(tmp_path):
    rows = []
    for i in range(7):
        p = write_wav(tmp_path / f"{i}.wav", seconds=1.0 + 0.5 * i, seed=i)
        rows.append({"utt_id": f"u{i}", "path": p, "start_s": None, "end_s": None})
    utts = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("utt_id", pa.string()),
                ("path", pa.string()),
                ("start_s", pa.float64()),
                ("end_s", pa.float64()),
            ]
        ),
    )
    dialogues = pa.table(
        {
            "dialogue_id": ["a", "b", "c", "d"],
            "utt_ids": [["u2", "u0", "u1"], ["u3", "u4"], ["u5", "gone"], ["u6"]],
        }
    )
    return utts, dialogues


def test_dialogue_table_keeps_order_and_drops_unusable(small_manifest):
    utts, dialogues = small_manifest
    t = tdata.dialogue_table(utts, dialogues, min_utts=2, policy="repeat")
    assert t.column("dialogue_id").to_pylist() == ["a", "b"]  # c has 1 usable utterance, d only 1
    paths = t.column("paths").to_pylist()
    assert [p.rsplit("/", 1)[1] for p in paths[0]] == ["2.wav", "0.wav", "1.wav"]
    assert t.column("idx").to_pylist() == [0, 1]
    drop = tdata.dialogue_table(utts, dialogues, min_utts=3, policy="drop")
    assert drop.column("dialogue_id").to_pylist() == ["a"]
    with pytest.raises(ManifestError, match="no dialogue has at least 4 usable utterances"):
        tdata.dialogue_table(utts, dialogues, min_utts=4, policy="drop")


def test_featurise_dialogues_shapes_and_randomness(small_manifest):
    utts, dialogues = small_manifest
    t = tdata.dialogue_table(utts, dialogues, 2, "repeat")
    batch = {
        c: np.asarray(t.column(c).to_pylist(), dtype=object) for c in ("paths", "starts", "ends")
    }
    batch["idx"] = t.column("idx").to_numpy()
    out = tdata.featurise_dialogues(batch, m=3, crop_seconds=0.5, n_mels=24, seed=0)
    assert out["feats"].shape == (2, 3, 48, 24) and out["feats"].dtype == np.float32
    assert out["idx"].tolist() == [0, 1]
    again = tdata.featurise_dialogues(batch, m=3, crop_seconds=0.5, n_mels=24, seed=0)
    other = tdata.featurise_dialogues(batch, m=3, crop_seconds=0.5, n_mels=24, seed=1)
    assert np.array_equal(out["feats"], again["feats"]) and not np.array_equal(
        out["feats"], other["feats"]
    )
    # the drawn positions: 3 distinct of dialogue a's 3, 3 of b's 2 with repeats
    assert out["pick"].shape == (2, 3) and out["pick"].dtype == np.int64
    assert sorted(out["pick"][0]) == [0, 1, 2] and set(out["pick"][1]) <= {0, 1}


def test_a_rows_randomness_depends_on_seed_pass_and_row_not_on_its_batch(small_manifest):
    """Rows featurised in another batch, order or task get the same crops and augmentation
    (what makes a seeded run reproducible); another pass or seed gives others."""
    utts, _ = small_manifest
    t = tdata.utterance_table(utts)
    batch = {
        c: np.asarray(t.column(c).to_pylist(), dtype=object) for c in ("path", "start_s", "end_s")
    }
    batch["idx"] = t.column("idx").to_numpy()
    batch["pass"] = np.full(7, 3)
    aug = tdata.AugmentConfig(prob=1.0, reverb_prob=0.5)
    kw = {"crop_seconds": 0.4, "n_mels": 24, "augment": aug}
    whole = tdata.featurise_pairs(batch, **kw, seed=5)["feats"]
    back = [6, 4, 2, 0]  # another batch: some rows, in reverse order
    part = tdata.featurise_pairs({k: v[back] for k, v in batch.items()}, **kw, seed=5)["feats"]
    np.testing.assert_array_equal(part, whole[back])
    lab = {**{k: v[back] for k, v in batch.items()}, "label": np.zeros(4, np.int64)}
    one = tdata.featurise_labelled(lab, **kw, seed=5)["feats"]
    np.testing.assert_array_equal(
        tdata.featurise_labelled({k: v[:1] for k, v in lab.items()}, **kw, seed=5)["feats"],
        one[:1],
    )
    other_pass = tdata.featurise_pairs({**batch, "pass": np.full(7, 4)}, **kw, seed=5)["feats"]
    other_seed = tdata.featurise_pairs(batch, **kw, seed=6)["feats"]
    for other in (other_pass, other_seed):
        assert all(not np.allclose(other[i], whole[i]) for i in range(7))


def test_two_segments_never_overlap():
    rng = np.random.default_rng(0)
    wave = np.arange(10000, dtype=np.float32)
    for _ in range(200):
        a, b = tdata.two_segments(wave, 3000, rng)
        assert a.shape == b.shape == (3000,)
        assert not set(a.tolist()) & set(b.tolist())
    short = np.arange(4000, dtype=np.float32)  # shorter than 2 segments: split, then pad
    for _ in range(50):
        a, b = tdata.two_segments(short, 3000, rng)
        assert a.shape == b.shape == (3000,) and not set(a.tolist()) & set(b.tolist())


def test_featurise_pairs(small_manifest):
    utts, _ = small_manifest
    t = tdata.utterance_table(utts)
    batch = {
        c: np.asarray(t.column(c).to_pylist(), dtype=object) for c in ("path", "start_s", "end_s")
    }
    batch["idx"] = t.column("idx").to_numpy()
    out = tdata.featurise_pairs(batch, crop_seconds=0.5, n_mels=24, seed=0)
    assert out["feats"].shape == (7, 2, 48, 24)
    assert not np.allclose(out["feats"][:, 0], out["feats"][:, 1])


def test_rows_with_audio_gone_bad_are_skipped_not_fatal(small_manifest, caplog):
    """A file that became unreadable after the import drops its row (a dialogue: the
    whole dialogue) from the batch with a warning; the rest of the batch is intact."""
    utts, dialogues = small_manifest
    bad = utts.column("path")[1].as_py()  # u1: in dialogue "a", utterance row 1
    with open(bad, "wb") as f:
        f.write(b"RIFF not audio")
    t = tdata.utterance_table(utts)
    batch = {
        c: np.asarray(t.column(c).to_pylist(), dtype=object) for c in ("path", "start_s", "end_s")
    }
    batch["idx"] = t.column("idx").to_numpy()
    out = tdata.featurise_pairs(batch, crop_seconds=0.5, n_mels=24, seed=0)
    assert out["feats"].shape == (6, 2, 48, 24) and out["idx"].tolist() == [0, 2, 3, 4, 5, 6]
    assert bad in caplog.text
    batch["label"] = np.arange(7)
    lab = tdata.featurise_labelled(batch, crop_seconds=0.5, n_mels=24, seed=0)
    assert lab["feats"].shape == (6, 48, 24) and lab["label"].tolist() == [0, 2, 3, 4, 5, 6]
    d = tdata.dialogue_table(utts, dialogues, 2, "repeat")  # a (holds u1), b
    dbatch = {
        c: np.asarray(d.column(c).to_pylist(), dtype=object) for c in ("paths", "starts", "ends")
    }
    dbatch["idx"] = d.column("idx").to_numpy()
    dout = tdata.featurise_dialogues(dbatch, m=3, crop_seconds=0.5, n_mels=24, seed=0)
    assert dout["feats"].shape == (1, 3, 48, 24) and dout["idx"].tolist() == [1]
    assert dout["pick"].shape == (1, 3)
    # every row bad: an empty batch of the right shape, not a crash
    only = {k: v[1:2] for k, v in batch.items()}
    empty = tdata.featurise_pairs(only, crop_seconds=0.5, n_mels=24, seed=0)
    assert empty["feats"].shape == (0, 2, 48, 24) and empty["idx"].tolist() == []


def test_stream_shards_and_reshuffles(small_manifest, ray_local, tmp_path):
    utts, _ = small_manifest
    table = tdata.utterance_table(
        pa.concat_tables([utts] * 4).set_column(0, "utt_id", pa.array([f"x{i}" for i in range(28)]))
    )
    shards = tdata.write_shards(table, str(tmp_path / "shards"), rows_per_shard=3)
    assert len(os.listdir(shards)) == 10
    ds = build_dataset(shards, tdata.InputSpec("utterance", 0.3, 16, batch_rows=4))
    first = [int(i) for b in ds.iter_batches(batch_size=8) for i in b["idx"]]
    second = [int(i) for b in ds.iter_batches(batch_size=8) for i in b["idx"]]
    assert sorted(first) == sorted(second) == list(range(28))
    # A new order every epoch: one execution streams all epochs, each reading the
    # shard files in its own seeded order. (Two executions of one dataset read the
    # same file order; they differed only by chance of parallel reads, which a
    # loaded CI machine serialises: the old `first != second` failed there.)
    two = build_dataset(shards, tdata.InputSpec("utterance", 0.3, 16, batch_rows=4, epochs=2))
    both = [int(i) for b in two.iter_batches(batch_size=8) for i in b["idx"]]
    assert sorted(both) == sorted(list(range(28)) * 2)
    assert both[:28] != both[28:]
    shards = ds.streaming_split(2, equal=True)
    import threading

    seen = [[], []]

    def consume(k):
        for b in shards[k].iter_batches(batch_size=4):
            seen[k].extend(int(i) for i in b["idx"])

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert len(seen[0]) == len(seen[1]) == 14
    assert not set(seen[0]) & set(seen[1])


def test_exact_batches_joins_short_batches_in_order_and_passes_full_ones_through():
    import torch

    sizes = [4, 3, 4, 1, 4, 2, 2, 3]  # short batches in mid-stream, as Ray Data 2.60 can yield
    start, batches = 0, []
    for n in sizes:
        ids = np.arange(start, start + n)
        batches.append({"idx": torch.from_numpy(ids), "feats": torch.ones(n, 2) * ids[:, None]})
        start += n
    out = list(exact_batches(iter(batches), 4))
    assert [len(b["idx"]) for b in out] == [4] * (sum(sizes) // 4)
    flat = torch.cat([b["idx"] for b in out]).tolist()
    assert flat == list(range(len(flat)))  # every row once, in order; the short tail dropped
    assert all(torch.equal(b["feats"][:, 0], b["idx"].float()) for b in out)  # rows stay aligned
    assert out[0] is batches[0]  # a full batch is not copied


def test_epoch_stream_batches_are_full_with_a_one_batch_shuffle_buffer(
    small_manifest, ray_local, tmp_path
):
    """Ray Data's local shuffle buffer of one batch gave a 9-row batch of 16 mid-stream and
    crashed a 2-worker run; every batch of an EpochStream has exactly batch_size rows."""
    utts, _ = small_manifest
    table = tdata.utterance_table(
        pa.concat_tables([utts] * 12).set_column(
            0, "utt_id", pa.array([f"x{i}" for i in range(84)])
        )
    )
    shards = tdata.write_shards(table, str(tmp_path / "shards"), rows_per_shard=5)
    ds = build_dataset(shards, tdata.InputSpec("utterance", 0.3, 16, batch_rows=3, epochs=3))
    steps = tdata.steps_per_epoch(84, 1, 6)
    stream = EpochStream(
        ds, steps, batch_size=6, drop_last=True, local_shuffle_buffer_size=6, prefetch_batches=2
    )
    sizes = [len(b["idx"]) for _ in range(3) for b in stream.epoch()]
    assert sizes == [6] * (3 * steps)


def test_input_spec_picks_the_pure_featuriser_of_its_mode():
    aug = None
    fn, kw = tdata.featuriser(tdata.InputSpec("dialogue", 1.5, 40, aug, utts_per_dialogue=3))
    assert fn is tdata.featurise_dialogues and kw == {
        "m": 3,
        "crop_seconds": 1.5,
        "n_mels": 40,
        "augment": None,
        "seed": 0,  # the run's seed: each row's randomness is seeded (row_generators)
    }
    assert tdata.featuriser(tdata.InputSpec("utterance", 1.0, 24))[0] is tdata.featurise_pairs
    assert tdata.featuriser(tdata.InputSpec("labelled", 2.0, 80))[0] is tdata.featurise_labelled
    with pytest.raises(ValueError, match="unknown input mode 'frames'"):
        tdata.featuriser(tdata.InputSpec("frames", 1.0, 24))
    with pytest.raises(dataclasses.FrozenInstanceError):  # one spec, not edited on the way
        tdata.InputSpec("utterance", 1.0, 24).epochs = 3


def test_featurise_views_gives_dino_multi_crop_views(small_manifest):
    utts, dialogues = small_manifest
    kw = {"n_global": 2, "global_seconds": 0.5, "n_local": 3, "local_seconds": 0.25, "n_mels": 24}
    t = tdata.utterance_table(utts)
    batch = {
        c: np.asarray(t.column(c).to_pylist(), dtype=object) for c in ("path", "start_s", "end_s")
    }
    batch["idx"] = t.column("idx").to_numpy()
    out = tdata.featurise_views(batch, "utterance", **kw, seed=0)
    assert out["global"].shape == (7, 2, 48, 24) and out["local"].shape == (7, 3, 23, 24)
    assert out["global"].dtype == out["local"].dtype == np.float32
    assert not np.allclose(out["global"][:, 0], out["global"][:, 1])  # two different crops
    assert out["idx"].tolist() == list(range(7)) and out["pick"].shape == (7, 2)
    d = tdata.dialogue_table(utts, dialogues, 2, "repeat")
    dbatch = {
        c: np.asarray(d.column(c).to_pylist(), dtype=object) for c in ("paths", "starts", "ends")
    }
    dbatch["idx"] = d.column("idx").to_numpy()
    dout = tdata.featurise_views(dbatch, "dialogue", **kw, seed=0)
    assert dout["global"].shape == (2, 2, 48, 24) and dout["local"].shape == (2, 3, 23, 24)
    # the global views come from 2 different utterances of dialogue a (it has 3)
    assert len(set(dout["pick"][0])) == 2 and set(dout["pick"][1]) <= {0, 1}
    again = tdata.featurise_views(dbatch, "dialogue", **kw, seed=0)
    assert np.array_equal(dout["global"], again["global"])
    none = tdata.featurise_views(batch, "utterance", **{**kw, "n_local": 0}, seed=0)
    assert none["local"].shape == (7, 0, 23, 24)
    spec = tdata.InputSpec("dialogue", 1.0, 24, views=(2, 0.5, 3, 0.25))
    fn, got = tdata.featuriser(spec)
    assert fn is tdata.featurise_views and got["rows"] == "dialogue" and got["n_local"] == 3
