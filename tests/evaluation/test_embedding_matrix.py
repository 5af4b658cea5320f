"""Embeddings tables -> (ids, matrix): chunked, sliced, float64 and list-typed columns."""

import numpy as np
import pyarrow as pa
import pytest

from raysv.errors import ManifestError
from raysv.evaluation.scoring import embedding_matrix


def _table(x: np.ndarray, start: int = 0) -> pa.Table:
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    return pa.table({"utt_id": [f"u{start + i}" for i in range(len(x))], "embedding": emb})


def test_chunked_and_sliced_tables_give_one_writable_float32_matrix():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3))
    # three chunks, one of them a slice with an offset, one in float64
    t = pa.concat_tables(
        [
            _table(x[:4].astype(np.float32)),
            _table(x.astype(np.float32)).slice(4, 3),
            _table(x[7:].astype(np.float32), start=7),
        ]
    )
    ids, mat = embedding_matrix(t)
    assert ids == [f"u{i}" for i in range(10)]
    assert mat.dtype == np.float32 and mat.flags.writeable and mat.shape == (10, 3)
    np.testing.assert_array_equal(mat, x.astype(np.float32))
    ids_arrow, mat2 = embedding_matrix(_table(x), ids_as_list=False)
    assert isinstance(ids_arrow, pa.ChunkedArray) and ids_arrow.to_pylist() == ids
    assert mat2.dtype == np.float32 and mat2.flags.writeable
    np.testing.assert_allclose(mat2, x, rtol=1e-6)


def test_variable_length_lists_are_rejected_with_the_source_named():
    t = pa.table({"utt_id": ["a", "b"], "embedding": [[1.0, 2.0], [1.0]]})
    with pytest.raises(ManifestError, match="emb.parquet: embeddings have different lengths"):
        embedding_matrix(t, "emb.parquet")


def test_rows_without_an_embedding_are_named():
    emb = pa.array([[1.0, 2.0], None, [3.0, 4.0], None], pa.list_(pa.float32(), 2))
    t = pa.table({"utt_id": ["a", "b", "c", "d"], "embedding": emb})
    with pytest.raises(ManifestError, match="emb.parquet: 2 rows have no embedding .*utt_id b"):
        embedding_matrix(t, "emb.parquet")
