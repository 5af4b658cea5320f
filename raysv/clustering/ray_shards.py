"""k-means shards as Ray actors: the :class:`~raysv.clustering.shards.Shards` the commands use.

Each actor is an :class:`~raysv.clustering.shards.EmbeddingShard` that reads its
own Parquet files; a call sends the centroids once (``ray.put``) and gets one
``O(k * d)`` result per actor back. This is the clustering's Ray module (Ray is
imported where it is used, so that importing the library does not start it).
"""

from __future__ import annotations

import logging

import numpy as np

from raysv.clustering.sharded import split_files
from raysv.clustering.shards import EmbeddingShard, Shards
from raysv.errors import ConfigError, RaysvError

log = logging.getLogger("raysv")


# Calls that change a shard's state (its training rows, its labels, what it keeps):
# recorded per shard and replayed, in order, on a restarted actor.
STATEFUL = ("subsample", "final_assign", "drop_far")
RESTARTS_PER_SHARD = 3  # a shard that dies more often is failing for a reason of its own
RESTART_TIMEOUT_S = 300.0  # to place a restarted shard and read its files


class RayShards(Shards):
    """Shards held by Ray actors (started by :func:`start_shards`).

    A shard actor that dies (its process or node lost) is started again from
    ``start``, re-reads its files and replays its state-changing calls
    (:data:`STATEFUL`: the seeded subsample, the final assignment, what
    purification dropped), then the call it died in runs again; every call is a
    pure function of that state, so the result equals an uninterrupted run's.
    """

    def __init__(self, actors: list, start=None):
        self.actors = list(actors)
        self.start = start  # start(i) -> a new actor for shard i; None: no recovery
        self.replay: list[list[tuple]] = [[] for _ in self.actors]
        self.restarts = [0] * len(self.actors)

    def each(self, method: str, *args, per_shard: list[tuple] | None = None) -> list:
        import ray

        # arrays sent to every actor go to the object store once, not once per actor
        args = tuple(ray.put(a) if isinstance(a, np.ndarray) else a for a in args)
        extra = per_shard if per_shard is not None else [()] * len(self.actors)
        if len(extra) != len(self.actors):
            raise ValueError(f"{len(extra)} per-shard arguments for {len(self.actors)} shards")
        refs = [
            getattr(a, method).remote(*args, *e) for a, e in zip(self.actors, extra, strict=True)
        ]
        out = [self._get(i, ref, method, args + tuple(extra[i])) for i, ref in enumerate(refs)]
        if method in STATEFUL:
            for i, e in enumerate(extra):
                self.replay[i].append((method, args + tuple(e)))
        return out

    def _get(self, i: int, ref, method: str, call_args: tuple):
        """Shard ``i``'s result, restarting its actor (and replaying) if it died, its
        result was lost with a node, or it died again while being restarted."""
        import ray
        from ray.exceptions import ObjectLostError, RayActorError

        while True:
            try:
                if ref is None:
                    ref = self._restart(i, method, call_args)
                return ray.get(ref)
            except (RayActorError, ObjectLostError) as exc:
                if self.start is None or self.restarts[i] >= RESTARTS_PER_SHARD:
                    raise
                self.restarts[i] += 1
                log.warning(
                    "k-means shard %d of %d lost (%s); starting it again (%d/%d) and "
                    "replaying its %d state call(s)",
                    i + 1,
                    len(self.actors),
                    type(exc).__name__,
                    self.restarts[i],
                    RESTARTS_PER_SHARD,
                    len(self.replay[i]),
                )
                ref = None

    def _restart(self, i: int, method: str, call_args: tuple):
        """A new actor for shard ``i`` with its files read and its state replayed;
        returns the ref of ``method`` called on it. Waits at most
        :data:`RESTART_TIMEOUT_S` for the actor to be placed and read its files."""
        import ray
        from ray.exceptions import GetTimeoutError

        ray.kill(self.actors[i])  # gone already, or unreachable: make sure it stays so
        self.actors[i] = actor = self.start(i)
        try:
            ray.get(actor.count.remote(), timeout=RESTART_TIMEOUT_S)  # reads its files
        except GetTimeoutError:
            ray.kill(actor)
            raise RaysvError(
                f"k-means shard {i + 1} of {len(self.actors)} was lost and could not be "
                f"started again within {RESTART_TIMEOUT_S:.0f} s (no room on the cluster "
                "for its CPUs/GPU, e.g. its node is gone and none replaced it)"
            ) from None
        for name, a in self.replay[i]:
            ray.get(getattr(actor, name).remote(*a))
        return getattr(actor, method).remote(*call_args)

    def __len__(self) -> int:
        return len(self.actors)

    def stop(self) -> None:
        """Kill the shard actors (their rows are freed with them)."""
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


DEVICES = ("auto", "cpu", "gpu")


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"gpu"`` for a requested ``device`` (``auto``: GPU where the Ray cluster has one)."""
    import ray

    from raysv.runtime import ensure_ray

    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    ensure_ray()
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if device == "gpu" and gpus == 0:
        raise ConfigError("k-means device 'gpu' asked for, but the Ray cluster has no GPUs")
    return "gpu" if device == "gpu" or (device == "auto" and gpus > 0) else "cpu"


def default_shards(use_gpu: bool) -> int:
    """One shard per GPU when the shards search on GPUs, else two per node with CPUs.

    Each CPU shard's faiss search uses its half of the node's cores (faiss
    threads). On 2 cores, 1 shard x 2 threads and 2 x 1 searched at the same
    speed (3.3 vs 3.1-3.6 s per iteration, 1M x 192, k = 1000), and two actors
    read their Parquet files in parallel (3.6 vs 5.0 s); per node rather than a
    fixed count, so a bigger cluster gets more shards.
    """
    import ray

    if use_gpu:
        return max(1, int(ray.cluster_resources().get("GPU", 0)))
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    return max(1, 2 * len(nodes))


def start_shards(
    files: list[str],
    shards: int | None,
    normalise: bool,
    cpus: float = 0.5,
    device: str = "auto",
) -> RayShards:
    """Start ``shards`` actors (default :func:`default_shards`), each reading its share of ``files``.

    ``device``: ``"gpu"`` gives each actor a share of the cluster's GPUs (its rows
    then live on the GPU), ``"cpu"`` none, ``"auto"`` GPUs where the cluster has them.
    Actors are spread over the nodes; each uses ``CPUs of the cluster / shards``
    faiss threads. Stop them with ``.stop()`` (or use the result in a ``with``).
    """
    import ray

    from raysv.runtime import ensure_ray

    ensure_ray()
    use_gpu = resolve_device(device) == "gpu"
    if shards is None:
        shards = default_shards(use_gpu)
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    groups = split_files(files, shards)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    opts: dict = {"num_cpus": cpus, "scheduling_strategy": "SPREAD"}
    if use_gpu:  # shards share the GPUs (fractions of one when shards > GPUs)
        opts["num_gpus"] = min(1.0, gpus / len(groups))
        log.info("k-means shards on GPU (%.2f GPU each)", opts["num_gpus"])
    actor_cls = ray.remote(**opts)(EmbeddingShard)
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // len(groups))
    log.info("k-means: %d shard(s), %d faiss thread(s) each", len(groups), threads)
    start = lambda i: actor_cls.remote(groups[i], normalise, threads, use_gpu)  # noqa: E731
    return RayShards([start(i) for i in range(len(groups))], start)
