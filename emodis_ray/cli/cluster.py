"""Cluster subcommands: `emodis submit` and `emodis jobs` (Ray's Job API)."""

from __future__ import annotations

import argparse

# --- submit / jobs: run commands on a Ray cluster through the Job API --------------------------------


def _cmd_submit(args: argparse.Namespace) -> int:
    from emodis_ray.runtime.jobs import run, submit_command

    return run(submit_command, "submit", args.cmd, address=args.address, wait=not args.no_wait,
               working_dir=args.working_dir, excludes=args.exclude, env=args.env, submission_id=args.job_id)


def add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit", help="run an emodis command on a Ray cluster as a job, follow its logs",
        description="Submit `emodis ARGS...` to a Ray cluster through its Job API: the project folder (without "
                    "data, caches, runs, .venv, .git) travels as the job's working_dir, the logs stream here, and "
                    "the exit code is the job's: 0 when it SUCCEEDED, the command's code when it FAILED, 3 when "
                    "STOPPED. Paths in ARGS are the cluster's: use absolute paths on storage every node shares. "
                    "The token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is always sent.",
        epilog="example: emodis submit --address http://127.0.0.1:8265 -- synth /shared/data --people 8")
    p.add_argument("--address", help="the dashboard URL (default: RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--working-dir", help="folder to ship as the job's working_dir (default: this project's)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="one more gitignore-style pattern to leave out of the working_dir (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable of the job (repeatable)")
    p.add_argument("--job-id", help="the submission id (default: emodis-<command>-<random>)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the emodis command to run")
    p.set_defaults(func=_cmd_submit)


def _cmd_jobs(args: argparse.Namespace) -> int:
    from emodis_ray.runtime.jobs import jobs_command, run

    return run(jobs_command, "jobs", args.action, args.job_id, address=args.address, follow=args.follow)


def add_jobs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list, show, print the logs of, or stop jobs on a Ray cluster",
                       description="Jobs of the cluster at --address / RAY_ADDRESS (the dashboard URL).")
    p.add_argument("action", nargs="?", default="list", choices=["list", "show", "logs", "stop"])
    p.add_argument("job_id", nargs="?", help="a submission id (for show, logs, stop)")
    p.add_argument("--follow", "-f", action="store_true", help="logs: follow until the job ends")
    p.add_argument("--address", help="the dashboard URL (default: RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.set_defaults(func=_cmd_jobs)
