"""Connecting to Ray: a cluster the user names (``--address`` or ``RAY_ADDRESS``), else a local one we start."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                dashboard: bool | None = None) -> Iterator[None]:
    """Use the running Ray, or connect to ``address``/``RAY_ADDRESS``, or start a local cluster.

    A local cluster gets the dashboard on 127.0.0.1 (its URL is printed) unless ``dashboard`` is False or
    ``EMODIS_DASHBOARD=0``. Besides letting you watch the run, the dashboard serves the State API, which Ray
    Train's placement-group cleaner polls: without it every Train run's cleaner logs a warning every few
    seconds, and the cleaners of runs that Tune stops early never exit. Only a cluster started here is shut
    down on exit.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, object] = {"logging_level": logging.WARNING, "log_to_driver": True}
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


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))
