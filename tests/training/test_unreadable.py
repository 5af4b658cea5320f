"""Training rows skipped as unreadable: the limit, the spare passes, and the run's ledger actor."""

import numpy as np
import pyarrow as pa
import pytest

from raysv.errors import RaysvError
from raysv.training import data as tdata
from raysv.training import unreadable
from raysv.training.stream import EpochStream, build_dataset
from tests.conftest import write_wav


def _snap(rows, read, examples=("a.wav: unreadable audio (x)",)):
    return {"rows": rows, "read": read, "files": 1, "examples": list(examples)}


def test_limit_is_a_share_of_the_rows_read_and_names_files():
    assert unreadable.share(_snap(0, 0)) == 0.0
    assert unreadable.share(_snap(5, 100)) == pytest.approx(0.05)
    assert unreadable.share(_snap(3, 0)) == 1.0  # skips sent before the reads that hold them
    unreadable.check(_snap(5, 100), 0.05, "dialogues")  # at the limit: goes on
    unreadable.check(_snap(0, 0), 0.0)  # nothing skipped: never stops
    with pytest.raises(unreadable.UnreadableInputError) as e:
        unreadable.check(_snap(6, 100), 0.05, "dialogues")
    msg = str(e.value)
    assert "6 reads of training dialogues (1 file) had unreadable audio" in msg
    assert "6.0% of those read" in msg
    assert "a.wav: unreadable audio" in msg and "max_unreadable_share is 0.05" in msg
    assert isinstance(e.value, RaysvError)  # the CLI prints it as one line
    with pytest.raises(unreadable.UnreadableInputError):
        unreadable.check(_snap(1, 10**9), 0.0)  # 0: the first skipped row stops the run
    unreadable.check(_snap(10**6, 1), 1.0)  # 1: never


@pytest.mark.parametrize("epochs", [1, 2, 7, 12, 19, 100])
@pytest.mark.parametrize("s", [0.0, 0.001, 0.05, 0.2, 0.5, 0.9, 0.95, 1.0])
def test_spare_passes_cover_the_allowed_share(epochs, s):
    """Skipping the largest allowed share of a stream of ``epochs + spare`` passes still
    leaves ``epochs`` passes of rows, with the fewest spare passes that do (at most
    ``10 epochs``: shares above 10/11 are not covered)."""
    spare = tdata.spare_epochs(epochs, s)
    assert 0 <= spare <= 10 * epochs
    if s == 0:
        assert spare == 0
    elif s <= 10 / 11:
        assert (1 - s) * (epochs + spare) >= epochs * (1 - 1e-12)
        assert (1 - s) * (epochs + spare - 1) < epochs  # no pass more than needed
    else:
        assert spare == 10 * epochs


def test_featurisers_report_skipped_rows_and_tally_checks_the_limit(tmp_path, ray_local):
    rows = [
        {"utt_id": f"u{i}", "path": write_wav(tmp_path / f"{i}.wav", 1.2, seed=i)} for i in range(4)
    ]
    bad = rows[2]["path"]
    with open(bad, "wb") as f:
        f.write(b"RIFF gone bad")
    batch = {
        "path": np.asarray([r["path"] for r in rows], dtype=object),
        "start_s": np.asarray([None] * 4, dtype=object),
        "end_s": np.asarray([None] * 4, dtype=object),
        "idx": np.arange(4),
    }
    ledger = unreadable.start_ledger(0.05)
    out = tdata.featurise_pairs(batch, crop_seconds=0.4, n_mels=24, seed=0, ledger=ledger)
    assert out["idx"].tolist() == [0, 1, 3]
    batch["label"] = np.arange(4)
    tdata.featurise_labelled(batch, crop_seconds=0.4, n_mels=24, seed=0, ledger=ledger)
    good = {k: v[:2] for k, v in batch.items()}
    tdata.featurise_pairs(good, crop_seconds=0.4, n_mels=24, seed=0, ledger=ledger)
    snap = unreadable.snapshot(ledger)  # every batch is counted (one caller: in order)
    assert (snap["rows"], snap["read"], snap["files"]) == (2, 10, 1)
    assert len(snap["examples"]) == 1 and bad in snap["examples"][0]  # the same row twice

    # rank 0's tally checks the share every `every` steps; other ranks never ask
    other = unreadable.Tally(ledger, 0.05, "utterances", active=False)
    other.step()
    assert other.flush() == {"rows": 0, "read": 0, "files": 0, "examples": []}
    tally = unreadable.Tally(ledger, 0.05, "utterances", every=3)
    tally.step()
    tally.step()  # 2 skipped of 10: over 5 %, but not checked yet
    with pytest.raises(unreadable.UnreadableInputError, match="2 reads of training utterances"):
        tally.step()  # the third step checks
    seen = tally.flush(check_now=False)  # an epoch's end: the snapshot first, the check later
    unreadable.Tally(ledger, 0.2).check(seen)  # 20 % is within a limit of 20 %
    err = tally.no_batch_error()  # an empty epoch after skipped rows: named as such
    assert isinstance(err, unreadable.UnreadableInputError) and bad in str(err)
    assert isinstance(unreadable.Tally().no_batch_error(), RuntimeError)

    # a second invocation of the run starts from the counts in its checkpoint
    again = unreadable.start_ledger(0.05)
    resumed = unreadable.Tally(again, 0.05, "utterances")
    resumed.resume(seen)
    resumed.resume(seen)  # every restart sends them again: set, not added
    with pytest.raises(unreadable.UnreadableInputError, match=r"\(20.0% of those read"):
        resumed.flush()
    tdata.featurise_pairs(good, crop_seconds=0.4, n_mels=24, seed=0, ledger=again)
    assert unreadable.snapshot(again)["read"] == 12


def test_a_task_stops_the_stream_when_most_rows_are_unreadable(tmp_path, ray_local):
    """A worker that receives no batch never reaches a check, so the featurisation task
    fails the stream itself once most of at least EMERGENCY_MIN_READ rows were skipped."""
    bad = str(tmp_path / "gone.wav")
    with open(bad, "wb") as f:
        f.write(b"RIFF gone bad")
    n = unreadable.EMERGENCY_MIN_READ // 2
    batch = {
        "path": np.asarray([bad] * n, dtype=object),
        "start_s": np.asarray([None] * n, dtype=object),
        "end_s": np.asarray([None] * n, dtype=object),
        "idx": np.arange(n),
    }
    ledger = unreadable.start_ledger(0.05)
    tdata.featurise_pairs(batch, crop_seconds=0.4, n_mels=24, ledger=ledger)  # too few read yet
    with pytest.raises(unreadable.UnreadableInputError, match="the stream stopped"):
        tdata.featurise_pairs(batch, crop_seconds=0.4, n_mels=24, ledger=ledger)
    never = unreadable.start_ledger(1.0)  # a limit of 1: never stops
    for _ in range(3):
        tdata.featurise_pairs(batch, crop_seconds=0.4, n_mels=24, ledger=never)
    assert unreadable.snapshot(never)["rows"] == 3 * n


def test_raysv_errors_are_found_inside_wrapped_errors():
    from raysv.errors import raysv_cause

    err = unreadable.UnreadableInputError("a.wav: gone")
    try:
        try:
            raise err
        except RaysvError as inner:
            raise RuntimeError("a data task failed") from inner
    except RuntimeError as outer:
        assert raysv_cause(outer) is err

    class Wrapped(RuntimeError):  # as Ray wraps a task's exception: the original in .cause
        cause = err

    assert raysv_cause(Wrapped("remote traceback")) is err
    assert raysv_cause(RuntimeError("no raysv error")) is None


def test_a_stream_with_spare_passes_fills_every_epoch_despite_skipped_rows(tmp_path, ray_local):
    """12 utterances, 3 of them unreadable, 2 epochs of 3 batches of 4: the stream of
    2 passes would run dry in epoch 2; with the spare passes every epoch is full."""
    rows = []
    for i in range(12):
        p = write_wav(tmp_path / "a" / f"{i}.wav", 1.2, seed=i)
        if i % 4 == 1:
            with open(p, "wb") as f:
                f.write(b"RIFF gone bad")
        rows.append({"utt_id": f"u{i}", "path": p, "start_s": None, "end_s": None})
    table = tdata.utterance_table(
        pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [("utt_id", pa.string()), ("path", pa.string())]
                + [(c, pa.float64()) for c in ("start_s", "end_s")]
            ),
        )
    )
    shards = tdata.write_shards(table, str(tmp_path / "shards"), rows_per_shard=4)
    steps = []
    for spare in (0, tdata.spare_epochs(2, 0.25)):
        ledger = unreadable.start_ledger(1.0)
        spec = tdata.InputSpec("utterance", 0.3, 16, batch_rows=4, epochs=2, spare_epochs=spare)
        ds = build_dataset(shards, spec, ledger)
        stream = EpochStream(ds, 3, batch_size=4, drop_last=True)
        steps.append([sum(1 for _ in stream.epoch()) for _ in range(2)])
        assert unreadable.snapshot(ledger)["rows"] >= 6  # 3 per pass
    assert steps[0] == [3, 1]  # 18 readable rows of 24: epoch 2 runs dry
    assert steps[1] == [3, 3]


def test_a_failed_stream_is_named_by_the_ledger(ray_local):
    """Ray Data hands a worker only the traceback text of a task's error: a stream that
    fails while the skipped share is over the limit is reported as unreadable input."""

    def stream():
        yield 1
        raise RuntimeError("UDF failed to process a data block")

    ledger = unreadable.start_ledger(0.05)
    ledger.add.remote(10, [], [])
    tally = unreadable.Tally(ledger, 0.05, "dialogues", active=False)  # any rank
    with pytest.raises(RuntimeError, match="UDF failed"):  # nothing skipped: as it was
        list(tally.guard(stream()))
    ledger.add.remote(0, ["gone.wav"], ["gone.wav: unreadable audio"])
    with pytest.raises(unreadable.UnreadableInputError, match="the data stream stopped"):
        list(tally.guard(stream()))
    assert list(tally.guard(iter([1, 2]))) == [1, 2]
