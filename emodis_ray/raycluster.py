"""Connecting to Ray: a cluster the user names (``--address`` or ``RAY_ADDRESS``), else a local one we start."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                dashboard: bool = False) -> Iterator[None]:
    """Use the running Ray, or connect to ``address``/``RAY_ADDRESS``, or start a local cluster.

    Only a cluster started here is shut down on exit.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, object] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))
