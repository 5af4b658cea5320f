"""Starting and reaching Ray: the one place that calls ``ray.init``.

On a laptop or CI, :func:`ensure_ray` starts a local Ray with the machine's
CPUs; under ``ray job submit`` (RAY_ADDRESS set) it joins the cluster.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("raysv")


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Connect to Ray if not connected yet.

    ``address`` (or ``RAY_ADDRESS``) joins an existing cluster; otherwise a
    local instance is started with ``num_cpus`` (default: all cores), no
    dashboard, and logging to the driver kept quiet. First checks that torch
    and torchaudio load together (:func:`raysv.environment.check_environment`),
    so a broken install is one line from the driver, not a traceback from
    inside an actor.
    """
    from raysv.environment import check_environment

    check_environment()
    import ray

    if ray.is_initialized():  # e.g. inside a Ray Tune trial: same Ray Data settings
        _configure_ray_data()
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined Ray cluster at %s", address)
        _configure_ray_data()
        return
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    log.info("started local Ray with %s CPUs", num_cpus or os.cpu_count())
    _configure_ray_data()


def _configure_ray_data() -> None:
    """This driver's Ray Data settings (datasets carry them to Train workers and tasks).

    - progress bars and per-read INFO logs off (our own progress logging is enough);
    - the V1 datasources: Ray 2.60's V2 Parquet reader starts every read with a
      file-listing task that took 1-5 s even for a few dozen local files, and
      packs small files into ONE block. When training re-read its shards with
      ``read_parquet`` every epoch, that cost each epoch several seconds and left
      featurisation one task wide (measured with ``raysv bench input``: 6.1 s vs
      0.8 s an epoch for 56 dialogues on 2 CPUs); training now reads its shards
      in its own tasks (:func:`raysv.training.stream.build_dataset`), embedding
      and clustering inputs still through Ray's reader.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if hasattr(ctx, "use_datasource_v2"):
        ctx.use_datasource_v2 = False
    # Ray Data's per-read INFO lines ("Estimated parquet encoding ratio ...") are noise
    # in a command's output; ``-v`` (raysv at DEBUG) keeps them.
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("ray.data").setLevel(logging.WARNING)
