"""Training input without Ray: training tables (driver) and pure batch featurisers.

The Ray Data pipeline that streams them to the workers is
:mod:`raysv.training.stream`; :class:`InputSpec` says what it builds.

Driver side, once: :func:`dialogue_table` joins dialogues with utterance paths
into one row per dialogue (lists of paths and segment bounds), so that
training never groups millions of rows. :func:`utterance_table` does the same
for utterance mode.

Stage II's :func:`labelled_table` joins kept pseudo labels with paths, and
:func:`featurise_labelled` crops one segment per utterance.

Per epoch, in Ray Data tasks: rows are shuffled, then :func:`featurise_dialogues`
draws M utterances of each dialogue, crops, augments and computes log-mel
features; :func:`featurise_pairs` draws two non-overlapping segments of each
utterance (SimCLR). Both are pure functions of a batch and a random generator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysv.audio import features, io
from raysv.audio.augment import AugmentConfig, Augmenter
from raysv.errors import ManifestError

log = logging.getLogger("raysv")

SR = io.TARGET_SR


@dataclass(frozen=True)
class InputSpec:
    """How a stage's training rows become batches: one object from the stage's config
    to the Ray Data pipeline (:func:`raysv.training.stream.build_dataset`).

    ``mode``: ``dialogue`` (M utterances of each dialogue: ``feats (B, M, F, n_mels)``),
    ``utterance`` (two disjoint segments: ``(B, 2, F, n_mels)``) or ``labelled`` (one
    crop and its pseudo label: ``(B, F, n_mels)``). ``batch_rows``: rows per
    featurisation task; ``epochs + spare_epochs`` passes over the shards stream in one
    execution (see :func:`spare_epochs`); ``task_cpus``: CPUs per featurisation task.
    """

    mode: Literal["dialogue", "utterance", "labelled"]
    crop_seconds: float
    n_mels: int
    augment: AugmentConfig | None = None
    utts_per_dialogue: int = 2
    batch_rows: int = 8
    task_cpus: float = 1.0
    epochs: int = 1
    seed: int = 0
    spare_epochs: int = 0
    # DINO's multi-crop views instead (dialogue or utterance rows):
    # (global crops, their seconds, local crops, their seconds); see featurise_views
    views: tuple[int, float, int, float] | None = None


def featuriser(spec: InputSpec) -> tuple[Callable, dict]:
    """``(fn, kwargs)``: the pure batch function of ``spec.mode`` and its keyword arguments
    (``fn(batch, **kwargs, ledger=...)``; no Ray, testable on plain dicts)."""
    if spec.views is not None and spec.mode in ("dialogue", "utterance"):
        n_global, global_seconds, n_local, local_seconds = spec.views
        return featurise_views, {
            "rows": spec.mode,
            "n_global": n_global,
            "global_seconds": global_seconds,
            "n_local": n_local,
            "local_seconds": local_seconds,
            "n_mels": spec.n_mels,
            "augment": spec.augment,
            "seed": spec.seed,
        }
    common = {
        "crop_seconds": spec.crop_seconds,
        "n_mels": spec.n_mels,
        "augment": spec.augment,
        "seed": spec.seed,
    }
    if spec.mode == "labelled":
        return featurise_labelled, common
    if spec.mode == "dialogue":
        return featurise_dialogues, {"m": spec.utts_per_dialogue, **common}
    if spec.mode == "utterance":
        return featurise_pairs, common
    raise ValueError(f"unknown input mode {spec.mode!r}")


def dialogue_table(
    utterances: pa.Table, dialogues: pa.Table, min_utts: int, policy: str
) -> pa.Table:
    """One row per dialogue: ``idx, dialogue_id, paths, starts, ends`` (lists, in dialogue order).

    Utterances missing from the manifest are left out; dialogues left with
    fewer than 2 utterances are dropped, and with ``policy="drop"`` so are
    those with fewer than ``min_utts``. Raises ManifestError if none remain.
    """
    flat = pa.table(
        {
            "row": pc.list_parent_indices(dialogues["utt_ids"]),
            "pos": pa.array(
                np.concatenate(
                    [np.arange(n) for n in pc.list_value_length(dialogues["utt_ids"]).to_numpy()]
                )
                if dialogues.num_rows
                else [],
                pa.int64(),
            ),
            "utt_id": pc.list_flatten(dialogues["utt_ids"]),
        }
    )
    meta = utterances.select(["utt_id", "path", "start_s", "end_s"])
    joined = flat.join(meta, "utt_id", join_type="inner").sort_by(
        [("row", "ascending"), ("pos", "ascending")]
    )
    grouped = joined.group_by("row", use_threads=False).aggregate(
        [("path", "list"), ("start_s", "list"), ("end_s", "list")]
    )
    grouped = grouped.sort_by("row")
    rows = grouped["row"].to_numpy()
    out = pa.table(
        {
            "dialogue_id": dialogues["dialogue_id"].take(pa.array(rows)),
            "paths": grouped["path_list"],
            "starts": grouped["start_s_list"],
            "ends": grouped["end_s_list"],
        }
    )
    sizes = pc.list_value_length(out["paths"])
    need = min_utts if policy == "drop" else 2
    out = out.filter(pc.greater_equal(sizes, need))
    if out.num_rows == 0:
        raise ManifestError(
            f"no dialogue has at least {need} usable utterances "
            f"({dialogues.num_rows} dialogues; with short_dialogues=drop and M={min_utts}); "
            "lower data.utts_per_dialogue or use short_dialogues=repeat"
        )
    return out.append_column("idx", pa.array(np.arange(out.num_rows), pa.int64()))


def utterance_table(utterances: pa.Table) -> pa.Table:
    """One row per utterance: ``idx, utt_id, path, start_s, end_s``."""
    if utterances.num_rows == 0:
        raise ManifestError("the utterances manifest is empty")
    t = utterances.select(["utt_id", "path", "start_s", "end_s"])
    return t.append_column("idx", pa.array(np.arange(t.num_rows), pa.int64()))


def labelled_table(labels: pa.Table, utterances: pa.Table, source: str) -> pa.Table:
    """Stage II rows: kept pseudo labels joined with paths.

    ``labels`` is a pseudo-label table, ``utterances`` a manifest. Returns
    ``idx, utt_id, path, start_s, end_s, label`` (``label`` = ``cluster``,
    contiguous over kept rows). Raises ManifestError naming ``source`` when
    nothing is left or labels refer to utterances the manifest lacks.
    """
    kept = labels.filter(pc.equal(labels["kept"], True)).select(["utt_id", "cluster"])
    if kept.num_rows == 0:
        raise ManifestError(f"{source}: no kept rows in the pseudo-label table")
    meta = utterances.select(["utt_id", "path", "start_s", "end_s"])
    joined = kept.join(meta, "utt_id", join_type="inner").sort_by("utt_id")
    missing = kept.num_rows - joined.num_rows
    if joined.num_rows == 0:
        raise ManifestError(
            f"{source}: none of the {kept.num_rows} labelled utterances is in the manifest"
        )
    if missing:
        import logging

        logging.getLogger("raysv").warning(
            "%s: %d labelled utterances are not in the manifest; left out", source, missing
        )
    joined = joined.rename_columns(["label" if c == "cluster" else c for c in joined.column_names])
    return joined.append_column("idx", pa.array(np.arange(joined.num_rows), pa.int64()))


_AUGMENTERS: dict[tuple, Augmenter] = {}


def _augmenter(cfg: AugmentConfig | None) -> Augmenter | None:
    """Per-process cache: folder listings are done once per Ray worker process."""
    if cfg is None or cfg.prob == 0:
        return None
    key = tuple(sorted(cfg.__dict__.items()))
    if key not in _AUGMENTERS:
        _AUGMENTERS[key] = Augmenter(cfg)
    return _AUGMENTERS[key]


PASS = "pass"  # the column build_dataset adds: which pass over the shards a row comes from


def row_generators(batch: dict, seed: int | None) -> list[np.random.Generator]:
    """One random generator per row of ``batch`` (``(B,)``): seeded by ``(seed, pass,
    idx)`` so that a row's crops and augmentation depend on the run's seed, the pass
    over the data (``batch["pass"]``, 0 where absent) and the row, not on which task
    featurises it or in which order; ``seed`` None: one fresh generator shared by all."""
    n = len(batch["idx"])
    if seed is None:
        return [np.random.default_rng()] * n
    passes = batch[PASS] if PASS in batch else np.zeros(n, np.int64)
    return [
        np.random.default_rng([int(seed), int(p), int(i)])
        for p, i in zip(passes, batch["idx"], strict=True)
    ]


def _crop_features(path: str, start, end, seconds: float, rng, aug, n_mels: int) -> np.ndarray:
    n = int(round(seconds * SR))
    wave = features.crop(io.read_crop(path, seconds, rng, io.bound(start), io.bound(end)), n, rng)
    if aug is not None:
        wave = aug(wave, rng)
    return features.fbank(wave, n_mels=n_mels)


def _readable(rows, make, ledger=None) -> tuple[list[int], list]:
    """``(kept row indices, outputs)`` of ``make(row)`` per row (:func:`io.each_readable`):
    a row whose audio went bad after the import is skipped with a warning instead
    of failing the worker group, which would only meet the same file again after
    its restart. Skipped rows are reported to the run's ``ledger`` (if given), which
    counts them and stops a run that loses too many (:mod:`raysv.training.unreadable`)."""
    from raysv.training import unreadable

    keep, out, bad = io.each_readable(rows, make)
    for _, exc in bad:
        log.warning("training input: skipped a row, unreadable audio: %s", exc)
    unreadable.record(ledger, len(keep) + len(bad), bad)
    return keep, out


def _stacked(out: list, empty_shape) -> np.ndarray:
    """``np.stack(out)`` as float32, or (all skipped) an empty array of the shape that
    ``empty_shape()`` gives: computed only then, not for every batch."""
    return np.stack(out).astype(np.float32) if out else np.zeros(empty_shape(), np.float32)


def _frames(seconds: float, n_mels: int) -> int:
    """Log-mel frames of a crop of ``seconds``."""
    return features.fbank(np.zeros(int(round(seconds * SR)), np.float32), n_mels=n_mels).shape[0]


def featurise_dialogues(
    batch: dict[str, np.ndarray],
    m: int,
    crop_seconds: float,
    n_mels: int,
    augment: AugmentConfig | None = None,
    seed: int | None = None,
    ledger=None,
) -> dict[str, np.ndarray]:
    """Dialogue rows -> ``feats (B, M, F, n_mels)`` float32, ``idx (B,)`` and ``pick (B, M)``.

    Draws M distinct utterances of each dialogue (with replacement if it has
    fewer), a random crop of each, optional augmentation. ``pick`` holds the
    drawn utterances' positions in the dialogue (for analysis of which speakers
    a draw mixes). Randomness per row: :func:`row_generators` (``seed`` None: fresh).
    """
    aug = _augmenter(augment)

    def one(row) -> tuple[np.ndarray, np.ndarray]:
        paths, starts, ends, rng = row
        pick = rng.choice(len(paths), size=m, replace=len(paths) < m)
        feats = [
            _crop_features(paths[j], starts[j], ends[j], crop_seconds, rng, aug, n_mels)
            for j in pick
        ]
        return np.stack(feats), pick

    rngs = row_generators(batch, seed)
    rows = zip(batch["paths"], batch["starts"], batch["ends"], rngs, strict=True)
    keep, out = _readable(rows, one, ledger)  # a dialogue with an unreadable file is skipped
    return {
        "feats": _stacked(
            [f for f, _ in out], lambda: (0, m, _frames(crop_seconds, n_mels), n_mels)
        ),
        "idx": np.asarray(batch["idx"], dtype=np.int64)[keep],
        "pick": np.asarray([p for _, p in out], dtype=np.int64).reshape(len(out), m),
    }


def two_segments(
    wave: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Two random non-overlapping segments of ``n`` samples from ``wave`` ``(T,)``.

    If ``T < 2n`` the wave is split in two halves at a random point and each
    part is padded (by repetition) to ``n``: still no shared samples.
    """
    t = wave.shape[0]
    if t >= 2 * n:
        a = int(rng.integers(0, t - 2 * n + 1))
        b = int(rng.integers(a + n, t - n + 1))
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        return wave[first : first + n], wave[second : second + n]
    cut = int(rng.integers(max(1, t // 3), max(2, t - t // 3)))
    return features.crop(wave[:cut], n, rng), features.crop(wave[cut:], n, rng)


def featurise_pairs(
    batch: dict[str, np.ndarray],
    crop_seconds: float,
    n_mels: int,
    augment: AugmentConfig | None = None,
    seed: int | None = None,
    ledger=None,
) -> dict[str, np.ndarray]:
    """Utterance rows -> ``feats (B, 2, F, n_mels)``: two disjoint segments per utterance
    (randomness per row: :func:`row_generators`)."""
    aug = _augmenter(augment)
    n = int(round(crop_seconds * SR))

    def one(row) -> np.ndarray:
        path, st, en, rng = row
        wave = io.read_crop(path, 2 * crop_seconds, rng, io.bound(st), io.bound(en))
        segs = two_segments(wave, n, rng)
        if aug is not None:
            segs = tuple(aug(s, rng) for s in segs)
        return np.stack([features.fbank(s, n_mels=n_mels) for s in segs])

    rngs = row_generators(batch, seed)
    rows = zip(batch["path"], batch["start_s"], batch["end_s"], rngs, strict=True)
    keep, out = _readable(rows, one, ledger)
    return {
        "feats": _stacked(out, lambda: (0, 2, _frames(crop_seconds, n_mels), n_mels)),
        "idx": np.asarray(batch["idx"], dtype=np.int64)[keep],
    }


def featurise_views(
    batch: dict[str, np.ndarray],
    rows: str,
    n_global: int,
    global_seconds: float,
    n_local: int,
    local_seconds: float,
    n_mels: int,
    augment: AugmentConfig | None = None,
    seed: int | None = None,
    ledger=None,
) -> dict[str, np.ndarray]:
    """DINO's multi-crop views: ``global (B, G, Fg, n_mels)``, ``local (B, L, Fl, n_mels)``,
    ``idx (B,)`` and ``pick (B, G)``.

    ``rows="utterance"``: every view is a random crop of one utterance (global crops of
    ``global_seconds``, local ones of ``local_seconds``, taken from one read window of
    twice the global length, so views overlap as DINO's image crops do).
    ``rows="dialogue"``: the G global views come from G different utterances of the
    dialogue (with replacement when it has fewer) -- the dialogue paper's positives --
    and each local view from a random utterance of it; ``pick`` holds the global
    utterances' positions (for the rejection analysis; zeros for utterance rows).
    Each view is augmented independently. Pure: a batch and a random generator per row
    (:func:`row_generators`).
    """
    aug = _augmenter(augment)
    n_g, n_l = int(round(global_seconds * SR)), int(round(local_seconds * SR))

    def view(wave: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        w = features.crop(wave, n, rng)
        return features.fbank(aug(w, rng) if aug is not None else w, n_mels=n_mels)

    def one_utterance(row):
        path, st, en, rng = row
        wave = io.read_crop(path, 2 * global_seconds, rng, io.bound(st), io.bound(en))
        g = [view(wave, n_g, rng) for _ in range(n_global)]
        loc = [view(wave, n_l, rng) for _ in range(n_local)]
        return g, loc, np.zeros(n_global, np.int64)

    def one_dialogue(row):
        paths, starts, ends, rng = row
        pick = rng.choice(len(paths), size=n_global, replace=len(paths) < n_global)
        waves: dict[int, np.ndarray] = {}

        def wave_of(j: int) -> np.ndarray:
            if j not in waves:
                waves[j] = io.read_crop(
                    paths[j], 2 * global_seconds, rng, io.bound(starts[j]), io.bound(ends[j])
                )
            return waves[j]

        g = [view(wave_of(int(j)), n_g, rng) for j in pick]
        loc = [view(wave_of(int(rng.integers(len(paths)))), n_l, rng) for _ in range(n_local)]
        return g, loc, pick

    rngs = row_generators(batch, seed)
    if rows == "dialogue":
        it = zip(batch["paths"], batch["starts"], batch["ends"], rngs, strict=True)
        keep, out = _readable(it, one_dialogue, ledger)
    else:
        it = zip(batch["path"], batch["start_s"], batch["end_s"], rngs, strict=True)
        keep, out = _readable(it, one_utterance, ledger)
    fg, fl = _frames(global_seconds, n_mels), _frames(local_seconds, n_mels)
    local = [np.stack(l_) if l_ else np.zeros((0, fl, n_mels), np.float32) for _, l_, _ in out]
    return {
        "global": _stacked([np.stack(g) for g, _, _ in out], lambda: (0, n_global, fg, n_mels)),
        "local": _stacked(local, lambda: (0, n_local, fl, n_mels)),
        "idx": np.asarray(batch["idx"], dtype=np.int64)[keep],
        "pick": np.asarray([p for _, _, p in out], dtype=np.int64).reshape(len(out), n_global),
    }


def featurise_labelled(
    batch: dict[str, np.ndarray],
    crop_seconds: float,
    n_mels: int,
    augment: AugmentConfig | None = None,
    seed: int | None = None,
    ledger=None,
) -> dict[str, np.ndarray]:
    """Labelled rows -> ``feats (B, F, n_mels)``, ``label (B,)``, ``idx (B,)``: one random crop
    each (randomness per row: :func:`row_generators`)."""
    aug = _augmenter(augment)
    rngs = row_generators(batch, seed)
    rows = zip(batch["path"], batch["start_s"], batch["end_s"], rngs, strict=True)
    keep, feats = _readable(
        rows, lambda r: _crop_features(r[0], r[1], r[2], crop_seconds, r[3], aug, n_mels), ledger
    )
    return {
        "feats": _stacked(feats, lambda: (0, _frames(crop_seconds, n_mels), n_mels)),
        "label": np.asarray(batch["label"], dtype=np.int64)[keep],
        "idx": np.asarray(batch["idx"], dtype=np.int64)[keep],
    }


def write_shards(
    table: pa.Table, folder: str, rows_per_shard: int | None = None, seed: int = 0
) -> str:
    """Write the training table as Parquet shards, rows shuffled once, and return ``folder``.

    Many shards let Ray Data read in parallel and reorder blocks every epoch
    without holding the table on the driver (it never reads it back).
    """
    import os

    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # an earlier table of ours; nothing else is touched
        if name.startswith("part-") and name.endswith(".parquet"):
            os.remove(os.path.join(folder, name))
    n = table.num_rows
    per = rows_per_shard or max(1, min(20000, -(-n // 64)))
    order = np.random.default_rng(seed).permutation(n)
    for k, start in enumerate(range(0, n, per)):
        pq.write_table(
            table.take(pa.array(order[start : start + per])),
            os.path.join(folder, f"part-{k:05d}.parquet"),
        )
    return folder


def spare_epochs(epochs: int, max_unreadable_share: float) -> int:
    """Extra passes over the data a stream of ``epochs`` needs so that skipping up to
    ``max_unreadable_share`` of its rows still leaves ``epochs`` full epochs.

    Delivered rows are ``(1 - s) (epochs + spare) R``, which must reach ``epochs R``.
    At most ``10 epochs`` spare passes (shares up to ~0.9; beyond, the last epochs
    may run short).
    """
    import math

    s = max_unreadable_share
    if s <= 0:
        return 0
    if s >= 1:
        return 10 * epochs
    return min(10 * epochs, math.ceil(epochs * s / (1 - s) - 1e-9))


def steps_per_epoch(rows: int, workers: int, per_worker_batch: int) -> int:
    """Optimiser steps in an epoch: each worker's equal share of ``rows`` in full batches."""
    return max(1, (rows // workers) // per_worker_batch)
