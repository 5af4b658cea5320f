"""Schemas of raysv's Parquet tables, in one place.

Tables (see DESIGN.md, "Data"):

- utterances: one row per audio file (or Kaldi segment).
- dialogues: one row per dialogue with its utterance ids as a list column.
- trials: ``label`` (1 target / 0 non-target), ``enroll``, ``test``.
- embeddings: ``utt_id`` and a fixed-size float32 list.
- pseudo labels: cluster assignment per utterance and round.

``speaker`` exists for evaluation and analysis only: training and clustering
code must never read it.
"""

from __future__ import annotations

import pyarrow as pa

from raysv.errors import ManifestError

UTTERANCES = pa.schema(
    [
        pa.field("utt_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("dialogue_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("speaker", pa.string()),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("sample_rate", pa.int32(), nullable=False),
        # Kaldi segments: offsets in seconds into ``path`` (null = whole file).
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
    ]
)

DIALOGUES = pa.schema(
    [
        pa.field("dialogue_id", pa.string(), nullable=False),
        pa.field("utt_ids", pa.list_(pa.string()), nullable=False),
        pa.field("num_utts", pa.int32(), nullable=False),
    ]
)

TRIALS = pa.schema(
    [
        pa.field("label", pa.int8(), nullable=False),
        pa.field("enroll", pa.string(), nullable=False),
        pa.field("test", pa.string(), nullable=False),
    ]
)

PSEUDO_LABELS = pa.schema(
    [
        pa.field("utt_id", pa.string(), nullable=False),
        pa.field("cluster", pa.int64(), nullable=False),
        pa.field("distance", pa.float32(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
    ]
)


def embeddings_schema(dim: int) -> pa.Schema:
    """Schema of an embeddings table whose vectors have ``dim`` float32 entries."""
    return pa.schema(
        [
            pa.field("utt_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


REQUIRED = {
    "utterances": ("utt_id", "path", "duration_s", "sample_rate"),
    "dialogues": ("dialogue_id", "utt_ids"),
    "trials": ("label", "enroll", "test"),
    "embeddings": ("utt_id", "embedding"),
    "pseudo_labels": ("utt_id", "cluster", "distance", "kept", "round"),
}

_FULL = {
    "utterances": UTTERANCES,
    "dialogues": DIALOGUES,
    "trials": TRIALS,
    "pseudo_labels": PSEUDO_LABELS,
}


def check_columns(table: pa.Table, kind: str, source: str) -> None:
    """Raise ManifestError naming ``source`` if ``table`` lacks a required column."""
    missing = [c for c in REQUIRED[kind] if c not in table.column_names]
    if missing:
        raise ManifestError(
            f"{source}: {kind} table is missing column(s) {', '.join(missing)} "
            f"(has: {', '.join(table.column_names) or 'no columns'})"
        )


def conform(table: pa.Table, kind: str, source: str) -> pa.Table:
    """Check required columns, add missing optional ones as nulls, cast to the schema."""
    check_columns(table, kind, source)
    schema = _FULL.get(kind)
    if schema is None:
        return table
    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ManifestError(
                    f"{source}: column {field.name!r} has type {col.type}, "
                    f"expected {field.type}: {exc}"
                ) from exc
        else:
            col = pa.nulls(table.num_rows, field.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema.with_metadata(None))


def embeddings_table(utt_ids, emb) -> pa.Table:
    """Embeddings table (``utt_id``, fixed-size float32 ``embedding``) from ids and an (n, d) array."""
    import numpy as np

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    return pa.Table.from_arrays(
        [pa.array(list(utt_ids), pa.string()), col], schema=embeddings_schema(emb.shape[1])
    )
