"""Cosine scoring of trial lists from an embeddings table, with optional AS-norm."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raysv.errors import ManifestError, RaysvError


def embedding_matrix(
    table: pa.Table, source: str = "embeddings", ids_as_list: bool = True
) -> tuple[list[str] | pa.ChunkedArray, np.ndarray]:
    """``(utt_ids, matrix (n, d) float32)`` from an embeddings table.

    ``ids_as_list=False`` returns the ids as the table's Arrow column (no Python
    strings: cheaper for millions of rows that are only written back).
    """
    if "utt_id" not in table.column_names or "embedding" not in table.column_names:
        raise ManifestError(f"{source}: embeddings table needs columns utt_id and embedding")
    if table.num_rows == 0:
        raise ManifestError(f"{source}: embeddings table is empty")
    col = table.column("embedding")
    if col.null_count:
        import pyarrow.compute as pc

        first = table.column("utt_id")[pc.index(col.is_null(), True).as_py()]
        raise ManifestError(
            f"{source}: {col.null_count} rows have no embedding (the first: utt_id {first})"
        )
    if pa.types.is_fixed_size_list(col.type):
        # one copy into a fresh, writable array (no combine_chunks copy first)
        parts = [c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks]
        flat = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
        mat = flat.reshape(len(col), col.type.list_size)
    else:
        rows = col.to_pylist()
        dims = {len(r) for r in rows}
        if len(dims) != 1:
            raise ManifestError(f"{source}: embeddings have different lengths {sorted(dims)[:5]}")
        try:
            mat = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError):
            raise ManifestError(
                f"{source}: the embedding column holds non-numbers ({col.type})"
            ) from None
    ids = table.column("utt_id")
    try:
        mat = mat.astype(np.float32, copy=False)
    except (TypeError, ValueError):
        raise ManifestError(
            f"{source}: the embedding column holds non-numbers ({col.type})"
        ) from None
    bad = ~np.isfinite(mat).all(axis=1)
    if bad.any():
        raise ManifestError(
            f"{source}: {int(bad.sum())} embedding(s) hold NaN/inf values (the first: utt_id "
            f"{table.column('utt_id')[int(np.argmax(bad))].as_py()})"
        )
    return (ids.to_pylist() if ids_as_list else ids), mat


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise unit length, ``(n, d) -> (n, d)``; zero rows stay zero."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_scores(
    ids: list[str],
    emb: np.ndarray,
    enroll: list[str],
    test: list[str],
    center: np.ndarray | None = None,
) -> np.ndarray:
    """Cosine similarity per trial; ``center`` (d,) is subtracted first if given."""
    index = {u: i for i, u in enumerate(ids)}
    missing = sorted({u for u in (*enroll, *test) if u not in index})
    if missing:
        raise ManifestError(
            f"{len(missing)} trial utterance(s) have no embedding, e.g. {', '.join(missing[:3])}"
        )
    x = emb - center if center is not None else emb
    x = l2_normalise(x)
    a = x[[index[u] for u in enroll]]
    b = x[[index[u] for u in test]]
    return np.einsum("nd,nd->n", a, b)


def as_norm(
    scores: np.ndarray,
    enroll_emb: np.ndarray,
    test_emb: np.ndarray,
    cohort: np.ndarray,
    top_k: int = 300,
) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm1).

    For each trial, the enrol and test embeddings (``(n, d)``, unit length) are
    scored against the cohort ``(c, d)``; mean/std of the ``top_k`` highest
    cohort scores normalise the raw score from both sides.
    """
    if cohort.shape[0] == 0:
        raise RaysvError("AS-norm needs a non-empty cohort")
    if cohort.shape[1] != enroll_emb.shape[1]:
        raise RaysvError(
            f"the cohort's embeddings have {cohort.shape[1]} dimensions, the trials' "
            f"{enroll_emb.shape[1]}: score with a cohort embedded by the same encoder"
        )
    if top_k < 1:
        raise RaysvError(f"AS-norm top_k must be at least 1, got {top_k}")
    if not np.isfinite(cohort).all():
        raise RaysvError("the cohort's embeddings hold NaN/inf values")
    k = min(top_k, cohort.shape[0])
    cohort = l2_normalise(cohort)

    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = x @ cohort.T
        top = -np.partition(-s, k - 1, axis=1)[:, :k]
        return top.mean(axis=1), top.std(axis=1) + 1e-6

    me, se = stats(l2_normalise(enroll_emb))
    mt, st = stats(l2_normalise(test_emb))
    return 0.5 * ((scores - me) / se + (scores - mt) / st)
