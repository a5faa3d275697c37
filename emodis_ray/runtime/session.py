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
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

CONNECT_TIMEOUT_S = 30.0  # a cluster named by address that does not answer within this is an error


def connect_timeout() -> float:
    """Seconds a cluster named by address has to answer: ``EMODIS_CONNECT_TIMEOUT_S``, else the default."""
    return float(os.environ.get("EMODIS_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))


# Ray Train settings for a cluster this program starts on this machine, inherited by its processes (a value in the
# environment is kept). The controller polls its workers every 2 s by default, and a run waits for a poll to see its
# workers finish; the preemption watcher (one more process per run) watches for nodes an autoscaler drains, which a
# local cluster has none of. `emodis bench startup` (3 runs each, alternating): the end of a run 2.5 s shorter
# [1.5, 3.4]; the start-up, no detectable difference (docs/design.md §9).
LOCAL_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def use_local_train_env() -> None:
    """Put :data:`LOCAL_TRAIN_ENV` into this process's environment (before it starts a local cluster)."""
    for key, value in LOCAL_TRAIN_ENV.items():
        os.environ.setdefault(key, value)


class ClusterUnreachable(ConnectionError):
    """No Ray cluster answers at the address the user gave; the message says which and what to do."""


def verbose() -> bool:
    """``EMODIS_VERBOSE=1`` (or ``emodis --verbose``): Ray's own INFO lines, progress bars and the workers'
    output on the console, as Ray prints them by default."""
    return os.environ.get("EMODIS_VERBOSE", "") not in ("", "0")


def quiet_ray() -> None:
    """Keep Ray's INFO lines and progress bars off the console (they stay in the session's log files and the
    dashboard): the project prints its own steps, one line per epoch and its own progress bars."""
    if verbose():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # inherited by a local cluster's workers
    # Tune's new console output prints its experiment table and paths at every verbosity; the legacy one obeys
    # RunConfig(verbose=0) (the search prints one line per trial itself)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()  # sent along with every dataset, so remote clusters obey it too
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    log_once("ray_data_progress_manager_disabled")  # spent here: Ray Data would say "Progress bars disabled"
    for handler in logging.getLogger("ray.data").handlers:  # console only: ray-data.log keeps everything
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    # "token authentication is enabled" is news to no one on a cluster this program starts (the warning for a
    # cluster *without* it stays)
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_not_auth_enabled)


def _not_auth_enabled(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled")



def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a GCS or Ray Client address (``ray://host:port``); None for ``auto`` / ``local``."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float | None = None, what: str = "a Ray cluster",
                    hint: str = "start one (`ray start --head`) or unset RAY_ADDRESS to run on a local one",
                    shown: str | None = None) -> None:
    """Fail at once when nothing listens at ``address`` (connection refused), and within ``timeout_s`` (default
    :data:`CONNECT_TIMEOUT_S`, or ``EMODIS_CONNECT_TIMEOUT_S``) when it does not answer, instead of Ray's
    endless reconnect loop (docs/design.md §9). ``shown``: the address as the user gave it, for the message."""
    hp = _host_port(address)
    if hp is None:
        return
    timeout_s = timeout_s or connect_timeout()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(hp, timeout=max(0.5, min(5.0, deadline - time.monotonic()))):
                return
        except ConnectionRefusedError:
            why = "connection refused: nothing listens there"
            break
        except OSError as e:  # a timeout, an unreachable network, a name that does not resolve
            why = f"{e.strerror or type(e).__name__}, tried for {timeout_s:.0f} s"
            if isinstance(e, socket.gaierror) or time.monotonic() + 1.0 >= deadline:
                break
        time.sleep(1.0)
    raise ClusterUnreachable(f"cannot reach {what} at {shown or address} ({why}); {hint}")


@contextlib.contextmanager
def _connect_watchdog(address: str, timeout_s: float) -> Iterator[None]:
    """While ``ray.init`` connects to ``address``: exit with a one-line error after ``timeout_s``, and honour
    SIGINT/SIGTERM, whose Python handlers never run while Ray's connect loop (C++) holds the main thread. The
    handlers' wake-up bytes (``signal.set_wakeup_fd``) reach a thread that does exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    old_fd = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    done = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not done.wait(0.2):
            with contextlib.suppress(BlockingIOError):
                for signo in r.recv(64):
                    if signo in (signal.SIGINT, signal.SIGTERM):
                        print("interrupted while connecting to Ray", file=sys.stderr, flush=True)
                        os._exit(128 + signo)
            if time.monotonic() > deadline:
                print(f"error: the Ray cluster at {address} did not answer within {timeout_s:.0f} s; is it a "
                      "Ray cluster (GCS) address, e.g. HOST:6379?", file=sys.stderr, flush=True)
                os._exit(2)

    t = threading.Thread(target=watch, name="emodis-connect-watchdog", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
        signal.set_wakeup_fd(old_fd)
        r.close()
        w.close()


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                dashboard: bool | None = None, log_to_driver: bool | None = None) -> Iterator[None]:
    """Use the running Ray, or connect to ``address``/``RAY_ADDRESS``, or start a local cluster.

    A local cluster gets the dashboard on 127.0.0.1 (its URL is printed) unless ``dashboard`` is False or
    ``EMODIS_DASHBOARD=0``. Besides letting you watch the run, the dashboard serves the State API, which Ray
    Train's placement-group cleaner polls: without it every Train run's cleaner logs a warning every few
    seconds, and the cleaners of runs that Tune stops early never exit. Only a cluster started here is shut
    down on exit. The workers' output reaches this console only with ``log_to_driver`` (default:
    :func:`verbose`); it is always in the dashboard and the session's log files. A cluster named by address
    that does not answer is a :class:`ClusterUnreachable` error within :data:`CONNECT_TIMEOUT_S`.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet_ray()
    if log_to_driver is None:
        log_to_driver = verbose()
    kwargs: dict[str, object] = {"logging_level": logging.WARNING, "log_to_driver": log_to_driver}
    if address:
        use_token_if_available()
        check_reachable(address)
        with _connect_watchdog(address, connect_timeout()):
            ray.init(address=address, **kwargs)
    else:
        if dashboard is None:
            dashboard = os.environ.get("EMODIS_DASHBOARD", "1") != "0"
        use_local_train_env()
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


RUN_MEMORY_GB = 3.0  # one tiny end-to-end run: its train worker (~1.5 GB), the task that drives it, evaluation


def cached_runs_at_once(workers: int, cpus: float, gpus: float = 0.0, use_gpu: bool = False,
                        memory_gb: float | None = None) -> int:
    """End-to-end runs (train and evaluate) that read a materialised feature cache and fit the cluster at once.

    Their epochs iterate blocks already in the object store and start no Ray Data task, so a run's CPU worker
    keeps one core busy and the data CPU that :func:`max_concurrent_trials` sets aside idles between a run's reads;
    two 1-worker runs at once on two cores kept their epoch time and took 0.53 of the time of one after the other
    (`emodis study --max-concurrent`, 2026-12-03). So: one run per ``workers`` CPUs (per ``workers`` GPUs on GPUs),
    at most one per :data:`RUN_MEMORY_GB` of the cluster's memory. The runs' workers share every CPU but
    :data:`DATA_CPUS` (``fit(..., runs_at_once=n)``), so Ray Data never starves."""
    import ray

    n = max(1, int(cpus // max(workers, 1)))
    if use_gpu:
        n = min(n, max(1, int(gpus // workers)))
    memory_gb = ray.cluster_resources().get("memory", 0) / 2**30 if memory_gb is None else memory_gb
    return max(1, min(n, int(memory_gb // RUN_MEMORY_GB))) if memory_gb else n


def run_at_once(fn: Callable[..., Any], calls: Sequence[tuple[str, tuple[Any, ...]]], n: int,
                on_done: Callable[[str, Any], None] | None = None) -> list[Any]:
    """``fn(*args)`` for each ``(label, args)`` of ``calls``, ``n`` at a time as zero-CPU Ray tasks (the Train
    workers and Ray Data tasks they start hold the CPUs), or one after another on this process when ``n`` is 1.
    ``on_done(label, result)`` as each finishes. Returns the results in the order of ``calls``."""
    if n <= 1:
        out = []
        for label, args in calls:
            out.append(fn(*args))
            if on_done:
                on_done(label, out[-1])
        return out
    import ray

    task = ray.remote(num_cpus=0)(fn)
    results: dict[int, Any] = {}
    pending: dict[Any, int] = {}
    for i, (_, args) in enumerate(calls):
        while len(pending) >= n:
            _finish(pending, results, calls, on_done)
        pending[task.remote(*args)] = i
    while pending:
        _finish(pending, results, calls, on_done)
    return [results[i] for i in range(len(calls))]


def _finish(pending: dict[Any, int], results: dict[int, Any], calls: Sequence[tuple[str, tuple[Any, ...]]],
            on_done: Callable[[str, Any], None] | None) -> None:
    import ray

    done, _ = ray.wait(list(pending), num_returns=1)
    i = pending.pop(done[0])
    results[i] = ray.get(done[0])
    if on_done:
        on_done(calls[i][0], results[i])
