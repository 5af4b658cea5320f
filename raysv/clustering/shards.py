"""The embeddings k-means runs over, split into shards: one small protocol, two implementations.

As faiss's ``contrib/clustering.py`` puts its k-means behind a dataset that
can count, give its dimension, give a subset and assign-and-sum, raysv's
sharded Lloyd iterations and purification (:mod:`raysv.clustering.sharded`)
talk only to :class:`Shards`: every call goes to all shards and returns one
value per shard, in shard order.

- :class:`EmbeddingShard` is one shard's body: its rows, the nearest-centroid
  search and per-centroid sums, and, after the final assignment, the labels
  and distances purification needs.
- :class:`LocalShards` holds its shards in this process (unit tests, small
  data: no Ray);
- :class:`raysv.clustering.ray_shards.RayShards` holds each as a Ray actor
  (``raysv cluster``, ``iterate``); only ``O(k * d)`` comes back per call.

No Ray here.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from raysv.clustering import kmeans
from raysv.errors import ConfigError, ManifestError


class EmbeddingShard:
    """Ray actor body: one shard of the embeddings table (utt_ids and an (n, d) matrix)."""

    def __init__(self, files: list[str], normalise: bool, threads: int = 0, gpu: bool = False):
        import faiss
        import pyarrow as pa

        if threads > 0:  # shards on one node share its cores
            faiss.omp_set_num_threads(threads)
            # Arrow sizes its decoding pool from OMP_NUM_THREADS, which Ray sets to 1
            # in a fractional-CPU actor: the read below would then decode on one core.
            pa.set_cpu_count(threads)
        self.files, self.normalise = files, normalise
        self.x = None  # read by the first count(): an error there reaches the driver as
        # the raysv error itself, where one in __init__ would only kill the actor
        self.labels = np.zeros(0, dtype=np.int64)
        self.dist = np.zeros(0, dtype=np.float32)
        # On a GPU actor the rows live on the GPU (faiss-gpu index, or torch where faiss is
        # the CPU build); only centroids go there and per-centroid sums come back.
        self.backend = kmeans.gpu_backend() if gpu else None
        if gpu and self.backend is None:
            raise ConfigError(
                "k-means shard was given a GPU but neither faiss nor torch can use it "
                "(faiss.get_num_gpus() == 0 and torch.cuda.is_available() is False)"
            )
        self._on_device = None

    @classmethod
    def from_arrays(cls, ids, x: np.ndarray, normalise: bool = False) -> EmbeddingShard:
        """A shard of rows already in memory: ``ids (n,)`` and ``x (n, d)``."""
        from raysv.evaluation.scoring import l2_normalise

        shard = cls([], normalise)
        shard.ids = np.asarray(ids)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != shard.ids.shape[0]:
            raise ConfigError(f"need ids (n,) and x (n, d); got {shard.ids.shape} and {x.shape}")
        shard.x = l2_normalise(x) if normalise else x
        shard.train = shard.x
        return shard

    def _load(self) -> None:
        """[1] One read of all this shard's files (pyarrow reads them in parallel)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from raysv.evaluation.scoring import embedding_matrix, l2_normalise

        files = self.files
        problem = _bad_file(files)  # footers only: names the file before any decoding
        if problem:
            raise ManifestError(problem)
        from raysv.data import fs

        try:  # local paths or URIs of one file system (one output folder's parts)
            store, _ = fs.resolve(files[0])
            paths = [fs.resolve(f)[1] for f in files]
            table = pq.read_table(
                paths if len(paths) > 1 else paths[0],
                columns=["utt_id", "embedding"],
                filesystem=store,
            )
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"{', '.join(files)}: could not read embeddings ({exc})") from None
        self.ids, self.x = embedding_matrix(table, ",".join(files), ids_as_list=False)
        if self.normalise:
            self.x = l2_normalise(self.x)
        self.train = self.x  # rows the Lloyd iterations use (a subsample, like faiss, or all)

    def _device(self):
        """The :class:`~raysv.clustering.kmeans.DeviceAssigner` over the training rows (GPU shards)."""
        if self._on_device is None:
            self._on_device = kmeans.DeviceAssigner(self.train, "cuda", self.backend)
        return self._on_device

    def subsample(self, n: int, seed: int) -> int:
        """Train on ``n`` random rows of this shard (all rows if ``n`` >= its size)."""
        if n >= self.x.shape[0]:
            self.train = self.x
        else:
            rng = np.random.default_rng(seed)
            self.train = self.x[np.sort(rng.choice(self.x.shape[0], size=n, replace=False))]
        self._on_device = None
        return int(self.train.shape[0])

    def count(self) -> int:
        """Rows of this shard (the first call reads its files)."""
        if self.x is None:
            self._load()
        return int(self.x.shape[0])

    def dim(self) -> int:
        """d, the embedding dimension."""
        return int(self.x.shape[1])

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``(min(n, rows), d)``: a seeded sample of the training rows, in row order."""
        rng = np.random.default_rng(seed)
        take = rng.choice(self.train.shape[0], size=min(n, self.train.shape[0]), replace=False)
        return self.train[np.sort(take)]

    def stats(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, tuple]:
        """[2] ``(sums (k, d), counts (k,), objective share, (assign s, sums s, CPU s))``.

        One faiss search per iteration; the objective share comes from its distances.
        """
        t0, cpu0 = time.perf_counter(), time.process_time()
        if self.backend:
            sums, counts, obj = self._device().stats(centroids)
            t1 = time.perf_counter()
            return sums, counts, obj, (t1 - t0, 0.0, time.process_time() - cpu0)
        lab, dist = kmeans.assign(self.train, centroids)
        t1 = time.perf_counter()
        sums, counts = kmeans.partial_stats(self.train, lab, centroids.shape[0])
        obj = float(dist.astype(np.float64).sum())
        return sums, counts, obj, (t1 - t0, time.perf_counter() - t1, time.process_time() - cpu0)

    def objective(self, centroids: np.ndarray) -> float:
        """Sum of squared L2 distances of all this shard's rows to their nearest centroid."""
        return float(self._assign_all(centroids)[1].astype(np.float64).sum())

    def _assign_all(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of every row of the shard (not only the training sample)."""
        if self.backend:
            return kmeans.DeviceAssigner(self.x, "cuda", self.backend).final(centroids)
        return kmeans.assign(self.x, centroids)

    def final_assign(self, centroids: np.ndarray) -> tuple[np.ndarray, float]:
        """[3] Assign every row and keep labels and distances here.

        Returns ``(members per centroid (k,) int64, sum of squared distances)``;
        purification then runs on the kept distances (:meth:`key_histogram` ...).
        """
        self.labels, self.dist = self._assign_all(centroids)
        self._on_device = None  # frees the GPU copy of the training rows
        self.keys = kmeans.distance_keys(self.dist)
        counts = np.bincount(self.labels, minlength=centroids.shape[0]).astype(np.int64)
        return counts, float(self.dist.astype(np.float64).sum())

    def key_histogram(self, high: int | None = None) -> np.ndarray:
        """``(65536,) int64``: see :func:`raysv.clustering.kmeans.key_histogram`."""
        return kmeans.key_histogram(self.keys, high)

    def ties(self, cut: int) -> int:
        """Rows whose distance key equals ``cut``."""
        return int(np.count_nonzero(self.keys == cut))

    def drop_far(self, cut: int | None, quota: int, k: int) -> np.ndarray:
        """Mark rows above the cut (and ``quota`` rows at it) dropped; ``cut`` None
        drops nothing. Returns the kept members per centroid ``(k,) int64``."""
        if cut is None:
            self.kept = np.ones(self.labels.shape[0], dtype=bool)
        else:
            self.kept = ~kmeans.drop_mask(self.keys, cut, quota)
        return np.bincount(self.labels[self.kept], minlength=k).astype(np.int64)

    def labels_table(
        self, sizes: np.ndarray, remap: np.ndarray, min_size: int, round_: int, path: str
    ) -> tuple[int, int, int]:
        """Drop rows of clusters with fewer than ``min_size`` kept members (``sizes``
        from all shards), renumber with ``remap`` and write the pseudo-label table.

        Returns ``(rows, kept rows, largest kept cluster id or -1)``.
        """
        import pyarrow as pa

        from raysv.data import fs
        from raysv.data.schema import PSEUDO_LABELS

        kept = self.kept & (sizes[self.labels] >= min_size)
        new_ids = remap[self.labels]
        table = pa.table(
            {
                "utt_id": self.ids,
                "cluster": new_ids,
                "distance": self.dist,
                "kept": kept,
                "round": np.full(len(self.ids), round_, np.int32),
            },
            schema=PSEUDO_LABELS,
        )
        fs.write_table(table, path)  # a local path or an object-store URI
        top = int(new_ids[kept].max()) if kept.any() else -1
        return table.num_rows, int(kept.sum()), top


def _bad_file(files: list[str]) -> str | None:
    """What is wrong with the first of ``files`` that is not Parquet with ``utt_id``
    and ``embedding`` columns (None if all are); reads only their footers."""
    import pyarrow.parquet as pq

    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception as e:  # noqa: BLE001 - any failure to read the footer
            return f"{f}: not a readable Parquet file of embeddings ({e})"
        missing = [c for c in ("utt_id", "embedding") if c not in names]
        if missing:
            return f"{f}: no column {', '.join(missing)} (has {', '.join(names)})"
    return None


class Shards(ABC):
    """All shards of one embeddings table, called together.

    Every method calls the same method of each shard (:class:`EmbeddingShard`)
    and returns one result per shard, in shard order; only the implementation
    of :meth:`each` differs (in process, or Ray actors). Usable as a context
    manager that stops the shards on leaving it.
    """

    @abstractmethod
    def each(self, method: str, *args, per_shard: list[tuple] | None = None) -> list:
        """``[shard.method(*args, *per_shard[i]) for each shard i]``, in shard order."""

    @abstractmethod
    def __len__(self) -> int: ...

    def stop(self) -> None:  # noqa: B027 - optional: in-process shards need nothing
        """Free the shards (their rows go with them)."""

    def __enter__(self) -> Shards:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def counts(self) -> list[int]:
        """Rows per shard (the first call reads the shards' files)."""
        return self.each("count")

    def dim(self) -> int:
        """d, the embedding dimension."""
        return self.each("dim")[0]

    def subsample(self, targets: list[int], seed: int) -> list[int]:
        """Iterate on ``targets[i]`` seeded random rows of shard i (all if more); rows kept."""
        return self.each("subsample", per_shard=[(t, seed + i) for i, t in enumerate(targets)])

    def sample(self, per: list[int], seed: int) -> np.ndarray:
        """``(sum(per), d) float32``: ``per[i]`` seeded training rows from shard i, stacked."""
        parts = self.each("sample", per_shard=[(int(c), seed + i) for i, c in enumerate(per)])
        return np.concatenate(parts).astype(np.float32)

    def stats(self, centroids: np.ndarray) -> list[tuple]:
        """Per shard ``(sums (k, d), counts (k,), objective share, timings)``: assign-and-sum."""
        return self.each("stats", centroids)

    def objective(self, centroids: np.ndarray) -> float:
        """Sum of squared distances of all rows (not only the training sample) to ``centroids``."""
        return float(sum(self.each("objective", centroids)))

    def final_assign(self, centroids: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Per shard ``(members per centroid (k,), objective)``; labels and distances stay there."""
        return self.each("final_assign", centroids)

    def key_histogram(self, high: int | None = None) -> np.ndarray:
        """``(65536,) int64`` over all shards: see :func:`raysv.clustering.kmeans.key_histogram`."""
        return np.sum(self.each("key_histogram", high), axis=0)

    def ties(self, cut: int) -> list[int]:
        """Rows per shard whose distance key equals ``cut``."""
        return self.each("ties", cut)

    def drop_far(self, cut: int | None, quotas: list[int], k: int) -> np.ndarray:
        """Drop rows above ``cut`` (and ``quotas[i]`` at it in shard i); kept members ``(k,)``."""
        parts = self.each("drop_far", per_shard=[(cut, q, k) for q in quotas])
        return np.sum(parts, axis=0)

    def labels_table(
        self, sizes: np.ndarray, remap: np.ndarray, min_size: int, round_: int, paths: list[str]
    ) -> list[tuple[int, int, int]]:
        """Each shard writes its pseudo-label rows to ``paths[i]``: ``(rows, kept, top id)``."""
        return self.each(
            "labels_table", sizes, remap, min_size, round_, per_shard=[(p,) for p in paths]
        )


class LocalShards(Shards):
    """Shards held in this process: the in-memory implementation (no Ray).

    Same results as Ray actors over the same rows split the same way (tested).
    """

    def __init__(self, shards: list[EmbeddingShard]):
        if not shards:
            raise ConfigError("k-means needs at least one shard")
        self.shards = list(shards)

    @classmethod
    def from_arrays(
        cls, ids, x: np.ndarray, shards: int = 1, normalise: bool = False
    ) -> LocalShards:
        """``x (n, d)`` split into ``shards`` contiguous blocks of rows."""
        ids = np.asarray(ids)
        blocks = np.array_split(np.arange(len(ids)), max(1, min(shards, len(ids))))
        return cls([EmbeddingShard.from_arrays(ids[b], x[b], normalise) for b in blocks])

    @classmethod
    def from_files(cls, groups: list[list[str]], normalise: bool = False) -> LocalShards:
        """One shard per group of Parquet embedding files (see ``split_files``)."""
        return cls([EmbeddingShard(g, normalise) for g in groups])

    def each(self, method: str, *args, per_shard: list[tuple] | None = None) -> list:
        extra = per_shard if per_shard is not None else [()] * len(self.shards)
        if len(extra) != len(self.shards):
            raise ValueError(f"{len(extra)} per-shard arguments for {len(self.shards)} shards")
        return [getattr(s, method)(*args, *e) for s, e in zip(self.shards, extra, strict=True)]

    def __len__(self) -> int:
        return len(self.shards)
