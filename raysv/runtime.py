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
    dashboard, and logging to the driver kept quiet.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined Ray cluster at %s", address)
        return
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    log.info("started local Ray with %s CPUs", num_cpus or os.cpu_count())
    _quiet_ray_data()


def _quiet_ray_data() -> None:
    """Turn off Ray Data's progress bars (our own progress logging is enough)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
