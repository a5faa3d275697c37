"""`emodis submit` and `emodis jobs`: the pure parts, then real jobs on a local two-node cluster with the
dashboard (token authentication on), driven through the command line as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers.localcluster import LocalCluster, local_cluster

from emodis_ray.cli import build_parser
from emodis_ray.runtime import jobs as submit

EMODIS = [sys.executable, "-m", "emodis_ray.cli"]


# --- pure -----------------------------------------------------------------------------------------------


def test_address_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert submit.resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265/")
    assert submit.resolve_address(None) == "http://10.0.0.5:8265"
    assert submit.resolve_address("127.0.0.1:9000") == "http://127.0.0.1:9000"
    with pytest.raises(submit.SubmitError, match="dashboard URL"):
        submit.resolve_address("auto")


def test_token_lookup_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert submit.read_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert submit.read_token() == submit.Token("from-home", str(tmp_path / ".ray" / "auth_token"))
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert submit.read_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submit.read_token().value == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(submit.SubmitError, match="cannot read"):
        submit.read_token()


def test_entrypoint_and_runtime_env() -> None:
    assert submit.entrypoint(["synth", "/data x", "--people", "4"]) == \
        "python -m emodis_ray.cli synth '/data x' --people 4"
    for bad in ([], ["submit", "--", "x"], ["jobs"]):
        with pytest.raises(ValueError):
            submit.entrypoint(bad)
    env = submit.build_runtime_env(None, ["*.npz"], {"A": "1"})
    assert Path(env["working_dir"]) == submit.project_dir()
    assert (submit.project_dir() / "pyproject.toml").is_file()
    for pattern in (".git", ".venv", "/data", "/runs", "/demo", "*.parquet", "*.npz"):
        assert pattern in env["excludes"]
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "A": "1"}
    with pytest.raises(FileNotFoundError):
        submit.build_runtime_env(Path("/nonexistent/dir"))


def test_exit_codes() -> None:
    class Info:
        driver_exit_code = 7

    assert submit.exit_code("SUCCEEDED") == 0
    assert submit.exit_code("FAILED", Info()) == 7
    assert submit.exit_code("FAILED", None) == 1
    assert submit.exit_code("STOPPED") == submit.STOPPED_EXIT


def test_cli_parses_the_command_after_the_double_dash() -> None:
    args = build_parser().parse_args(["submit", "--address", "http://h:1", "--no-wait", "--",
                                      "synth", "out", "--people", "3"])
    assert args.cmd[-4:] == ["synth", "out", "--people", "3"] and args.no_wait and args.address == "http://h:1"
    args = build_parser().parse_args(["jobs", "logs", "emodis-x", "-f"])
    assert (args.action, args.job_id, args.follow) == ("logs", "emodis-x", True)
    assert build_parser().parse_args(["jobs"]).action == "list"


def test_relative_paths_get_a_note_and_an_unreachable_dashboard_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    rc = submit.run(submit.submit_command, "submit", ["--", "synth", "data/x", "--set", "synth.people=3"],
                    address="http://127.0.0.1:9")
    err = capsys.readouterr().err
    assert rc == 2
    assert "note: data/x: relative paths resolve in the job's own working dir" in err
    assert "emodis submit: error: cannot reach the Ray dashboard at http://127.0.0.1:9" in err


# --- on a real cluster ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(workers=1, head_cpus=2, node_cpus=2) as c:
        yield c


def emodis(cluster: LocalCluster, *args: str, env: dict[str, str | None] | None = None,
           timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The real command line, in a fresh process (no RAY_AUTH_MODE: the token is sent regardless);
    ``env`` values of None remove the variable."""
    e = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    e["RAY_ADDRESS"] = cluster.dashboard
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return subprocess.run([*EMODIS, *args], env=e, capture_output=True, text=True, timeout=timeout,
                          cwd=cluster.dir)


def _job_id(out: str) -> str:
    return next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))


def _client(cluster: LocalCluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard, headers={"Authorization": f"Bearer {cluster.token()}"})


SYNTH_ARGS: Sequence[str] = (
    "--people", "6", "--clips-per-person", "8", "--seed", "1", "--workers", "1", "--quiet",
    "--set", "synth.videos_per_person=4", "--set", "synth.size=64", "--set", "synth.clip_s_min=1.5",
    "--set", "synth.clip_s_max=2.5", "--set", "synth.short_clip_fraction=0.0", "--set", "synth.heard_fraction=0.5",
    "--set", "synth.unheard_people=0",
)


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_submit_runs_a_job_and_its_status_and_logs_come_back(cluster: LocalCluster) -> None:
    data = cluster.dir / "shared" / "data"  # absolute: the job's cwd is its unpacked working_dir
    r = emodis(cluster, "submit", "--", "synth", str(data), *SYNTH_ARGS)
    assert r.returncode == 0, r.stdout + r.stderr
    job = _job_id(r.stdout)
    assert "synth took" in r.stdout and f"job {job} SUCCEEDED" in r.stdout  # the logs streamed here
    assert (data / "senet50-ferplus-logits.mat").is_file() and (data / "vox1_meta.csv").is_file()
    client = _client(cluster)  # the same job, straight from the Job API
    info = client.get_job_info(job)
    assert str(info.status) == "SUCCEEDED" and info.driver_exit_code == 0
    assert info.entrypoint.startswith("python -m emodis_ray.cli synth ")
    assert "synth took" in client.get_job_logs(job)
    listed = emodis(cluster, "jobs", "list")
    assert listed.returncode == 0 and job in listed.stdout and "SUCCEEDED" in listed.stdout
    shown = emodis(cluster, "jobs", "show", job)
    assert "status:           SUCCEEDED" in shown.stdout and "excludes=" in shown.stdout


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_failing_job_fails_the_submit_with_its_exit_code(cluster: LocalCluster) -> None:
    r = emodis(cluster, "submit", "--no-wait", "--", "config", "--set", "nope.x=1")
    assert r.returncode == 0, r.stderr
    job = _job_id(r.stdout)
    logs = emodis(cluster, "jobs", "logs", job, "--follow")
    assert logs.returncode == 2, logs.stdout + logs.stderr  # the remote `emodis config` exit code
    assert "unknown key: nope" in logs.stdout
    assert str(_client(cluster).get_job_status(job)) == "FAILED"


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_jobs_stop(cluster: LocalCluster) -> None:
    r = emodis(cluster, "submit", "--no-wait", "--", "synth", str(cluster.dir / "slow"), "--people", "40",
               "--clips-per-person", "40", "--workers", "1", "--quiet")
    job = _job_id(r.stdout)
    stop = emodis(cluster, "jobs", "stop", job)
    assert stop.returncode == 0 and "stop requested" in stop.stdout, stop.stdout + stop.stderr
    follow = emodis(cluster, "jobs", "logs", job, "--follow")
    assert follow.returncode == submit.STOPPED_EXIT
    assert str(_client(cluster).get_job_status(job)) == "STOPPED"


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_a_client_without_the_right_token_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    r = emodis(cluster, "jobs", "list", env={"HOME": str(tmp_path), "RAY_AUTH_TOKEN": None,
                                              "RAY_AUTH_TOKEN_PATH": None})
    assert r.returncode == 2
    assert "requires an authentication token and none was found" in r.stderr and "Traceback" not in r.stderr
    r = emodis(cluster, "jobs", "list", env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert r.returncode == 2 and "refused the token from RAY_AUTH_TOKEN" in r.stderr
    r = emodis(cluster, "jobs", "list")  # the token of ~/.ray/auth_token, RAY_AUTH_MODE unset
    assert r.returncode == 0, r.stderr


def _has_train() -> bool:
    return "train" in build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_submit_a_tiny_training(cluster: LocalCluster) -> None:
    if not _has_train():
        pytest.skip("`emodis train` is not part of this build")
    shared = cluster.dir / "shared"  # one local path all nodes share: data, run folder, Train storage
    data = shared / "data"
    if not (data / "vox1_meta.csv").exists():
        r = emodis(cluster, "synth", str(data), *SYNTH_ARGS)  # locally: no Ray needed with --workers 1
        assert r.returncode == 0, r.stderr
    manifest = shared / "manifest.parquet"
    r = emodis(cluster, "manifest", "emovox", "--mat", str(data / "senet50-ferplus-logits.mat"),
               "--meta", str(data / "vox1_meta.csv"), "--videos", str(data / "videos"), "--out", str(manifest),
               "--set", "labels.drop_percentile=0.0")
    assert r.returncode == 0, r.stderr
    run = shared / "runs" / "tiny"
    storage = ["--storage", str(shared / "checkpoints")] if "--storage" in emodis(cluster, "train", "--help").stdout \
        else []
    r = emodis(cluster, "submit", "--", "train", "--manifest", str(manifest), "--out", str(run), *storage,
               "--set", "train.epochs=1", "--set", "train.workers=1", "--set", "features.clip_s=2.0",
               "--set", "features.face_size=16", "--set", "model.width=0.125", "--set", "model.emo_dim=32",
               "--set", "model.spk_dim=16", "--set", "data.batch_size=8", timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job = _job_id(r.stdout)
    assert str(_client(cluster).get_job_status(job)) == "SUCCEEDED"
    assert "epoch 1/1" in _client(cluster).get_job_logs(job)
    assert (run / "metrics.json").is_file() and (run / "model.pt").is_file()
    if storage:
        assert any((shared / "checkpoints").rglob("checkpoint.pt"))

