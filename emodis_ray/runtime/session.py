"""Connecting to Ray, and the CPU budget on it.

:func:`ray_session` is the one place the project starts or joins Ray: a cluster the user names
(``--address`` or ``RAY_ADDRESS``), else a local one it starts. The budget functions below are the one
place that says how many CPUs are left for Ray Data: its read and decode tasks need a whole CPU, and
with none free a job hangs without an error (docs/design.md §9), so trainers, actor pools and concurrent
trials always leave :data:`DATA_CPUS` to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                dashboard: bool | None = None, log_to_driver: bool = True) -> Iterator[None]:
    """Use the running Ray, or connect to ``address``/``RAY_ADDRESS``, or start a local cluster.

    A local cluster gets the dashboard on 127.0.0.1 (its URL is printed) unless ``dashboard`` is False or
    ``EMODIS_DASHBOARD=0``. Besides letting you watch the run, the dashboard serves the State API, which Ray
    Train's placement-group cleaner polls: without it every Train run's cleaner logs a warning every few
    seconds, and the cleaners of runs that Tune stops early never exit. Only a cluster started here is shut
    down on exit. ``log_to_driver=False`` keeps the workers' output off this console (benchmarks).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, object] = {"logging_level": logging.WARNING, "log_to_driver": log_to_driver}
    if address:
        use_token_if_available()
        ray.init(address=address, **kwargs)
    else:
        if dashboard is None:
            dashboard = os.environ.get("EMODIS_DASHBOARD", "1") != "0"
        ctx = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1", **kwargs)
        if dashboard and getattr(ctx, "dashboard_url", None):
            print(f"Ray dashboard: http://{ctx.dashboard_url}", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        ray.shutdown()


def use_token_if_available() -> None:
    """Send the auth token to a cluster named by address when one is at hand (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and RAY_AUTH_MODE is unset: Ray does so by itself only for
    ``address="auto"``, and a token cluster refuses a client without it ("Authentication token is missing")."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray release: RAY_AUTH_MODE=token in the environment does the same
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


DATA_CPUS = 1  # CPUs always left for Ray Data's read and decode tasks


def cluster_cpus() -> int:
    """The CPUs of the running cluster (1 if it reports none)."""
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def pool_size(requested: int | None = None) -> int:
    """Actors of an inference pool: ``requested``, else every CPU but Ray Data's (at least one)."""
    return requested or max(1, cluster_cpus() - DATA_CPUS)


def decoder_count(requested: int | None = None) -> int:
    """Decode workers: ``requested``, else one per CPU (decoding *is* Ray Data's work)."""
    return max(1, requested or cluster_cpus())


def train_worker_cpus(workers: int, cpus: float) -> float:
    """CPUs of each of ``workers`` CPU train workers on ``cpus``: at most one, and never Ray Data's."""
    return max(0.0, min(1.0, (cpus - DATA_CPUS) / workers))


def max_concurrent_trials(workers: int, cpus: float, gpus: float = 0.0, use_gpu: bool = False) -> int:
    """Trials of ``workers`` train workers each that fit at once, leaving Ray Data a CPU per trial; on GPUs
    also at most GPUs ÷ workers."""
    n = max(1, int(cpus // (workers + DATA_CPUS)))
    if use_gpu:
        n = min(n, max(1, int(gpus // workers)))
    return n
