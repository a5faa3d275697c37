"""User mistakes end in one line and exit 2 before Ray starts; an unreachable cluster fails in bounded time and
SIGTERM/Ctrl-C are honoured. Each case runs the real console entry point in a subprocess, which records every
``ray.init`` call (the real one still runs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from helpers.media import make_clip

# Runs `emodis ARGS`; prints RAY_INIT to stderr whenever ray.init is called.
ENTRY = """
import sys
import ray
real = ray.init
def init(*a, **k):
    print("RAY_INIT", file=sys.stderr, flush=True)
    return real(*a, **k)
ray.init = init
from emodis_ray.cli import main
sys.exit(main(sys.argv[1:]))
"""


def emodis(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> tuple[int, str, float]:
    full_env = {**os.environ, "EMODIS_DASHBOARD": "0", **env}
    if "RAY_ADDRESS" not in env:
        full_env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", ENTRY, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stderr, time.perf_counter() - t0


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("emodis ")]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid manifest of six real 2 s clips: two speakers, train/val/test."""
    root = tmp_path_factory.mktemp("clips")
    rows = []
    for i in range(6):
        make_clip(root / f"c{i}.mp4", 2.0)
        rows.append({"clip_id": f"c{i}", "video_path": f"c{i}.mp4", "speaker": f"s{i % 2}",
                     "emotion": ["neutral", "happiness", "sadness"][i % 3], "split": ["train", "val", "test"][i // 2]})
    pd.DataFrame(rows).to_csv(root / "clips.csv", index=False)
    rc, err, _ = emodis(["manifest", "table", str(root / "clips.csv"), "--out", str(root / "m.parquet")], root)
    assert rc == 0, err
    return root / "m.parquet"


@pytest.mark.parametrize("command", [
    ["train", "--out", "{out}", "--set", "train.workers=0"],
    ["train", "--out", "{out}", "--epochs", "0"],
    ["preprocess", "--out", "{out}", "--set", "data.rows_per_shard=0"],
    ["preprocess", "--out", "{out}", "--set", "features.hop_s=0"],
    ["tune", "--space", "gr", "--trials", "1", "--out", "{out}", "--set", "data.batch_size=0"],
    ["study", "--arm", "mtl", "--out", "{out}", "--set", "data.max_bad_fraction=-1"],
], ids=lambda c: " ".join(c[:1] + c[-1:]))
def test_a_config_range_violation_exits_2_at_once_without_ray(command: list[str], manifest: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [a.format(out=out) for a in command] + ["--manifest", str(manifest)]
    rc, err, took = emodis(args, tmp_path)
    assert rc == 2, err
    (line,) = error_lines(err)
    key = command[-1].split("=")[0] if "=" in command[-1] else "train.epochs"
    assert f"error: {key}: expected" in line
    assert "RAY_INIT" not in err and "Traceback" not in err
    assert took < 30  # interpreter + imports; nothing waits for a cluster
    assert not out.exists()  # nothing written for a run that never started


def test_a_negative_stage2_size_exits_2_without_ray(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, err, _ = emodis(["tune", "--space", "conf", "--trials", "4", "--top", "-1", "--manifest", str(manifest),
                         "--out", str(out)], tmp_path)
    assert rc == 2 and "RAY_INIT" not in err and "Traceback" not in err
    (line,) = error_lines(err)
    assert "--top must be >= 0, got -1" in line
    assert not out.exists()


def test_a_missing_manifest_is_named_before_ray_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc, err, _ = emodis(["train", "--manifest", str(tmp_path / "missing.parquet"), "--out", str(out)], tmp_path)
    assert rc == 2 and "RAY_INIT" not in err
    (line,) = error_lines(err)
    assert "missing.parquet: no such manifest file" in line
    assert not out.exists()  # no config.yaml left behind


def test_a_header_only_clip_table_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "clips.csv").write_text("clip_id,video_path,speaker,emotion,split\n")
    rc, err, _ = emodis(["manifest", "table", str(tmp_path / "clips.csv"), "--out", str(tmp_path / "m.parquet")],
                        tmp_path)
    assert rc == 2 and "Traceback" not in err
    (line,) = error_lines(err)
    assert "clips.csv" in line and "no rows" in line


def test_an_unknown_search_space_is_named_before_ray(manifest: Path, tmp_path: Path) -> None:
    rc, err, _ = emodis(["tune", "--space", "nosuch", "--trials", "1", "--manifest", str(manifest), "--out",
                         str(tmp_path / "t")], tmp_path)
    assert rc == 2 and "RAY_INIT" not in err
    (line,) = error_lines(err)
    assert "nosuch" in line and "gr" in line  # names the shipped spaces


# --- an unreachable cluster -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (not a Ray GCS)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def test_nothing_listening_at_ray_address_fails_within_the_timeout(manifest: Path, tmp_path: Path) -> None:
    rc, err, took = emodis(["preprocess", "--manifest", str(manifest), "--out", str(tmp_path / "c")], tmp_path,
                           timeout=60, RAY_ADDRESS=f"127.0.0.1:{_free_port()}", EMODIS_CONNECT_TIMEOUT_S="4")
    assert rc == 2, err
    (line,) = error_lines(err)
    assert "cannot reach a Ray cluster at 127.0.0.1:" in line and "connection refused" in line
    assert "RAY_INIT" not in err  # known unreachable before Ray is asked
    assert took < 15  # refused: no need to wait for the timeout


@pytest.mark.timeout(120)
def test_a_silent_ray_address_fails_within_the_timeout(manifest: Path, tmp_path: Path, silent_server: int) -> None:
    rc, err, took = emodis(["preprocess", "--manifest", str(manifest), "--out", str(tmp_path / "c")], tmp_path,
                           timeout=90, RAY_ADDRESS=f"127.0.0.1:{silent_server}", EMODIS_CONNECT_TIMEOUT_S="6")
    assert rc == 2, err
    assert f"the Ray cluster at 127.0.0.1:{silent_server} did not answer within 6 s" in err
    assert took < 6 + 20


@pytest.mark.timeout(120)
def test_sigterm_is_honoured_while_connecting(manifest: Path, tmp_path: Path, silent_server: int) -> None:
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{silent_server}", "EMODIS_CONNECT_TIMEOUT_S": "120"}
    p = subprocess.Popen([sys.executable, "-c", ENTRY, "preprocess", "--manifest", str(manifest), "--out",
                          str(tmp_path / "c")], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    for line in p.stderr:  # wait until Ray's connect loop holds the main thread
        if line.strip() == "RAY_INIT":
            break
    time.sleep(3)
    t0 = time.perf_counter()
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=30)
    assert rc == 128 + signal.SIGTERM and time.perf_counter() - t0 < 10
    assert "interrupted while connecting to Ray" in p.stderr.read()


def test_submit_to_a_gcs_address_says_to_use_the_dashboard_url(tmp_path: Path) -> None:
    rc, err, took = emodis(["submit", "--address", "127.0.0.1:6379", "--", "config"], tmp_path)
    assert rc == 2 and took < 30
    (line,) = error_lines(err)
    assert "GCS port" in line and "http://127.0.0.1:8265" in line
    rc, err, _ = emodis(["jobs", "list", "--address", f"http://127.0.0.1:{_free_port()}"], tmp_path,
                        EMODIS_CONNECT_TIMEOUT_S="3")
    assert rc == 2 and "cannot reach the Ray dashboard" in err and "Traceback" not in err


# --- Ctrl-C -----------------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_ctrl_c_during_training_exits_130_and_says_how_to_resume(manifest: Path, tmp_path: Path) -> None:
    env = {**os.environ, "EMODIS_DASHBOARD": "0"}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.Popen([sys.executable, "-c", ENTRY, "train", "--manifest", str(manifest), "--out",
                          str(tmp_path / "run"), "--epochs", "50", "--num-cpus", "2"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    for line in p.stdout:  # wait until Ray Train reports its first epoch: the trainer is running
        if line.startswith("epoch 1/50"):
            break
    p.send_signal(signal.SIGINT)
    rest = p.communicate(timeout=120)[0]
    assert p.returncode == 130, rest
    assert "emodis train: interrupted; run the same command again to resume" in rest


def test_a_corrupt_model_given_to_predict_is_named_before_ray(tmp_path: Path) -> None:
    from emodis_ray.config import load_config

    run = tmp_path / "run"
    run.mkdir()
    load_config("tiny").save(run / "config.yaml")
    (run / "model.pt").write_bytes(b"PK\x03\x04 not really a zip archive")
    (tmp_path / "clips").mkdir()
    make_clip(tmp_path / "clips" / "a.mp4", 2.0)
    rc, err, _ = emodis(["predict", "--run", str(run), "--videos", str(tmp_path / "clips"), "--out",
                         str(tmp_path / "p.parquet")], tmp_path)
    assert rc == 2 and "RAY_INIT" not in err and "Traceback" not in err
    (line,) = error_lines(err)
    assert str(run / "model.pt") in line
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_too_many_bad_clips_is_one_line_naming_the_list(tmp_path: Path) -> None:
    rows = []
    for i in range(4):
        (tmp_path / f"c{i}.mp4").write_text("not a video\n")
        rows.append({"clip_id": f"c{i}", "video_path": f"c{i}.mp4", "speaker": f"s{i % 2}", "emotion": "neutral",
                     "split": ["train", "train", "val", "test"][i]})
    pd.DataFrame(rows).to_csv(tmp_path / "clips.csv", index=False)
    rc, err, _ = emodis(["manifest", "table", str(tmp_path / "clips.csv"), "--out", str(tmp_path / "m.parquet")],
                        tmp_path)
    assert rc == 0, err
    rc, err, _ = emodis(["preprocess", "--manifest", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "cache"),
                         "--num-cpus", "2", "--quiet"], tmp_path, timeout=200)
    assert rc == 2, err
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert "4 of 4 clips" in line and "bad_clips-" in line and line.rstrip().endswith("for each clip and reason")
