"""Running ``emodis`` commands on a Ray cluster as jobs, through Ray's Job API.

``emodis submit -- train --manifest M --out /shared/runs/r1`` packs the project folder (without data, caches,
runs, virtual environments) as the job's ``working_dir``, submits ``python -m emodis_ray.cli <args>`` to the
cluster's dashboard, follows its logs and exits with the job's outcome. ``emodis jobs`` lists, shows, prints
the logs of, and stops jobs.

Address: ``--address``, else ``RAY_ADDRESS``, else ``http://127.0.0.1:8265`` (the dashboard's URL; a bare
``host:port`` means ``http://host:port``).

Token: clusters with token authentication refuse requests without ``Authorization: Bearer <token>``. The
token is read here from ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else
``~/.ray/auth_token``, and always sent, so it works whether or not ``RAY_AUTH_MODE=token`` is set in the
caller's environment (Ray's client only adds the header when it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ENTRYPOINT = "python -m emodis_ray.cli"
# gitignore-style patterns, relative to the working dir; Ray also honours .gitignore and .rayignore there.
EXCLUDES = [
    ".git", ".venv", "venv", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".ruff_cache",
    "/data", "/runs", "/demo", "/out", "/build", "/dist", "/checkpoints", "/cache",
    "*.mp4", "*.m4a", "*.wav", "*.mat", "*.parquet", "*.pt", "*.ckpt", "*.png",
]
STOPPED_EXIT = 3
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # emodis_ray/
# Ray's client logs every file it leaves out and every websocket close; keep its warnings (a big package).
QUIET_LOGGERS = {"ray._private.runtime_env.packaging": logging.WARNING,
                 "ray._private.runtime_env.working_dir": logging.ERROR,  # ".git is now ignored by default"
                 "ray.dashboard.modules.dashboard_sdk": logging.WARNING,
                 "ray.dashboard.modules.job.sdk": logging.WARNING}


class SubmitError(RuntimeError):
    """A problem talking to the cluster, said in one line for the user."""


# --- connecting ---------------------------------------------------------------------------------------


def resolve_address(address: str | None) -> str:
    addr = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if "://" not in addr:
        if addr == "auto":
            raise SubmitError("emodis submit needs the dashboard URL (e.g. http://127.0.0.1:8265), not 'auto'")
        addr = "http://" + addr
    return addr.rstrip("/")


GCS_PORTS = {6379: "the GCS port of `ray start --head`", 10001: "the Ray Client port"}


def check_dashboard(address: str) -> None:
    """A one-line error, within seconds, when ``address`` is not a dashboard that answers: a GCS or Ray
    Client address (what ``ray.init`` takes) instead of the dashboard URL, or nothing listening."""
    from urllib.parse import urlsplit

    from emodis_ray.runtime.session import ClusterUnreachable, check_reachable

    url = urlsplit(address)
    if url.scheme not in ("http", "https"):
        raise SubmitError(f"{address}: emodis submit talks to the dashboard; give its URL, e.g. "
                          f"http://{url.hostname or '127.0.0.1'}:8265")
    if url.port in GCS_PORTS:
        raise SubmitError(f"{address} is {GCS_PORTS[url.port]}, not the dashboard; emodis submit needs the "
                          f"dashboard URL, e.g. http://{url.hostname}:8265")
    try:
        check_reachable(f"{url.hostname}:{url.port or (443 if url.scheme == 'https' else 80)}",
                        what="the Ray dashboard", shown=address,
                        hint="is the cluster up, and is --address / RAY_ADDRESS its dashboard URL (port 8265 by "
                             "default)?")
    except ClusterUnreachable as e:
        raise SubmitError(str(e)) from None


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for error messages


def read_token() -> Token | None:
    """The token as Ray looks for it: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path_env:
        path = Path(path_env).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path_env}: cannot read the token file ({e.strerror})") from e
        if not value:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path_env}: the token file is empty")
        return Token(value, f"RAY_AUTH_TOKEN_PATH={path_env}")
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file() and default.read_text().strip():
        return Token(default.read_text().strip(), str(default))
    return None


NO_TOKEN_HELP = ("set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token; "
                 "`ray get-auth-token` on the head node prints it")


def auth_error(address: str, token: Token | None, detail: str) -> SubmitError:
    if token is None:
        return SubmitError(f"the Ray cluster at {address} requires an authentication token and none was found: "
                           f"{NO_TOKEN_HELP}")
    return SubmitError(f"the Ray cluster at {address} refused the token from {token.source} ({detail.strip()}); "
                       f"it is not this cluster's token: {NO_TOKEN_HELP}")


class Jobs:
    """A thin wrapper of ``JobSubmissionClient`` that always sends the token and turns errors into
    :class:`SubmitError`."""

    def __init__(self, address: str | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
        self.address = resolve_address(address)
        check_dashboard(self.address)
        self.token = read_token()
        headers = {"Authorization": f"Bearer {self.token.value}"} if self.token else {}
        self.client = self._call(JobSubmissionClient, self.address, headers=headers)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import requests
        from ray.exceptions import AuthenticationError

        try:
            return fn(*args, **kwargs)
        except AuthenticationError as e:
            raise auth_error(self.address, self.token, str(e).splitlines()[0]) from e
        except (ConnectionError, requests.RequestException) as e:
            raise SubmitError(f"cannot reach the Ray dashboard at {self.address} ({e}); is the cluster up, and "
                              f"is --address / RAY_ADDRESS its dashboard URL?") from e
        except RuntimeError as e:
            msg = str(e)
            if "status code 401" in msg or "status code 403" in msg:
                raise auth_error(self.address, self.token, msg) from e
            if "does not exist" in msg or "status code 404" in msg:
                raise SubmitError(msg.splitlines()[0]) from e
            raise

    def submit(self, args: Sequence[str], *, working_dir: Path | None = None, excludes: Sequence[str] = (),
               env: dict[str, str] | None = None, submission_id: str | None = None) -> str:
        runtime_env = build_runtime_env(working_dir, excludes, env)
        sid = submission_id or f"emodis-{args[0] if args else 'job'}-{secrets.token_hex(4)}"
        return self._call(self.client.submit_job, entrypoint=entrypoint(args), runtime_env=runtime_env,
                          submission_id=sid, metadata={"emodis_command": shlex.join(args)})

    def status(self, job_id: str) -> str:
        return str(self._call(self.client.get_job_status, job_id))

    def info(self, job_id: str) -> Any:
        return self._call(self.client.get_job_info, job_id)

    def logs(self, job_id: str) -> str:
        return str(self._call(self.client.get_job_logs, job_id))

    def list(self) -> list[Any]:
        return list(self._call(self.client.list_jobs))

    def stop(self, job_id: str) -> bool:
        return bool(self._call(self.client.stop_job, job_id))

    def follow(self, job_id: str, out: TextIO = sys.stdout, poll_s: float = 1.0) -> str:
        """Print the job's logs as they come until it ends; returns the final status."""
        printed = [0]
        # If the websocket fails (a proxy in between?), poll from where it stopped.
        with contextlib.suppress(Exception):
            asyncio.run(self._tail(job_id, out, printed))
        return self._poll(job_id, out, printed[0], poll_s)

    def _poll(self, job_id: str, out: TextIO, printed: int, poll_s: float) -> str:
        while True:
            text = self.logs(job_id)
            if len(text) > printed:
                out.write(text[printed:])
                out.flush()
                printed = len(text)
            status = self.status(job_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                text = self.logs(job_id)
                out.write(text[printed:])
                out.flush()
                return status
            time.sleep(poll_s)

    async def _tail(self, job_id: str, out: TextIO, printed: list[int]) -> None:
        async for chunk in self.client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            printed[0] += len(chunk)


def project_dir() -> Path | None:
    """The source folder of this package when it runs from a checkout (pyproject.toml beside it)."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "emodis_ray").is_dir() else None


def build_runtime_env(working_dir: Path | None, excludes: Sequence[str] = (),
                      env: dict[str, str] | None = None) -> dict[str, Any]:
    """``working_dir`` (the project folder by default) with the excludes; without a source checkout, the
    installed package alone as a ``py_module``. ``PYTHONUNBUFFERED`` so that logs stream."""
    env_vars = {"PYTHONUNBUFFERED": "1", **(env or {})}
    wd = working_dir or project_dir()
    if wd is not None:
        if not Path(wd).is_dir():
            raise FileNotFoundError(f"working dir {wd} does not exist")
        return {"working_dir": str(wd), "excludes": [*EXCLUDES, *excludes], "env_vars": env_vars}
    return {"py_modules": [str(PACKAGE_DIR)], "excludes": [*EXCLUDES, *excludes],
            "env_vars": env_vars}


def entrypoint(args: Sequence[str]) -> str:
    if not args:
        raise ValueError("nothing to submit: give an emodis command after --, e.g. emodis submit -- synth data/")
    if args[0] in ("submit", "jobs"):
        raise ValueError(f"`emodis {args[0]}` runs on your machine, not as a job")
    return f"{ENTRYPOINT} {shlex.join(args)}"


def exit_code(status: str, info: Any = None) -> int:
    """0 for SUCCEEDED; the remote command's exit code (1 when unknown) for FAILED; 3 for STOPPED."""
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return STOPPED_EXIT
    code = getattr(info, "driver_exit_code", None)
    return int(code) if isinstance(code, int) and code != 0 else 1


# --- the commands -------------------------------------------------------------------------------------


def submit_command(args: Sequence[str], address: str | None = None, wait: bool = True,
                   working_dir: str | None = None, excludes: Sequence[str] = (), env: Sequence[str] = (),
                   submission_id: str | None = None, out: TextIO = sys.stdout) -> int:
    args = list(args[1:] if args and args[0] == "--" else args)
    entrypoint(args)  # validate before connecting
    env_vars = dict(_key_value(e) for e in env)
    relative = [a for a in args[1:] if not a.startswith("-") and "/" in a and "://" not in a and not os.path.isabs(a)]
    if relative:
        print(f"note: {', '.join(relative)}: relative paths resolve in the job's own working dir on the cluster, "
              f"which is deleted with it; use absolute paths on storage every node shares", file=sys.stderr)
    jobs = Jobs(address)
    job_id = jobs.submit(args, working_dir=Path(working_dir) if working_dir else None, excludes=excludes,
                         env=env_vars, submission_id=submission_id)
    print(f"submitted {job_id} to {jobs.address}: emodis {shlex.join(args)}", file=out, flush=True)
    if not wait:
        print(f"follow it with: emodis jobs logs {job_id} --follow", file=out)
        return 0
    try:
        status = jobs.follow(job_id, out)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on. Stop it with: emodis jobs stop {job_id}", file=sys.stderr)
        return 130
    info = jobs.info(job_id)
    why = (info.message or "").split(", last available logs")[0].splitlines()
    print(f"job {job_id} {status}" + (f": {why[0]}" if status != "SUCCEEDED" and why else ""), file=out)
    return exit_code(status, info)


def jobs_command(action: str, job_id: str | None = None, address: str | None = None, follow: bool = False,
                 out: TextIO = sys.stdout) -> int:
    jobs = Jobs(address)
    if action == "list":
        rows = sorted(jobs.list(), key=lambda j: j.start_time or 0)
        print(f"{'SUBMISSION ID':<32} {'STATUS':<10} {'START':<19} {'TIME':>8}  ENTRYPOINT", file=out)
        for j in rows:
            print(f"{(j.submission_id or j.job_id or '-'):<32} {str(j.status):<10} {_when(j.start_time):<19} "
                  f"{_duration(j.start_time, j.end_time):>8}  {_short(j.entrypoint)}", file=out)
        return 0
    if not job_id:
        raise ValueError(f"`emodis jobs {action}` needs a job id (see `emodis jobs list`)")
    if action == "show":
        j = jobs.info(job_id)
        for k, v in (("submission id", j.submission_id), ("status", j.status), ("message", j.message),
                     ("entrypoint", j.entrypoint), ("start", _when(j.start_time)), ("end", _when(j.end_time)),
                     ("duration", _duration(j.start_time, j.end_time)), ("driver exit code", j.driver_exit_code),
                     ("metadata", j.metadata), ("runtime_env", _env_summary(j.runtime_env))):
            print(f"{k + ':':<18}{v}", file=out)
        return 0
    if action == "logs":
        if follow:
            return exit_code(jobs.follow(job_id, out), jobs.info(job_id))
        out.write(jobs.logs(job_id))
        return 0
    if action == "stop":
        stopped = jobs.stop(job_id)
        print(f"{job_id}: {'stop requested' if stopped else 'not running (' + jobs.status(job_id) + ')'}", file=out)
        return 0
    raise ValueError(f"unknown action {action!r}")


def run(fn: Callable[..., int], name: str, *args: Any, **kwargs: Any) -> int:
    """Call a command; a :class:`SubmitError` becomes one line on stderr and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except SubmitError as e:
        print(f"emodis {name}: error: {e}", file=sys.stderr)
        return 2


def _key_value(s: str) -> tuple[str, str]:
    k, sep, v = s.partition("=")
    if not sep or not k:
        raise ValueError(f"--env takes KEY=VALUE, got {s!r}")
    return k, v


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _duration(start: int | None, end: int | None) -> str:
    if not start:
        return "-"
    s = ((end or time.time() * 1000) - start) / 1000
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.0f} min"


def _short(text: str, n: int = 70) -> str:
    text = text.replace(ENTRYPOINT, "emodis")
    return text if len(text) <= n else text[:n - 3] + "..."


def _env_summary(env: dict[str, Any] | None) -> str:
    if not env:
        return "-"
    return ", ".join(f"{k}={v if k != 'excludes' else f'[{len(v)} patterns]'}" for k, v in env.items())
