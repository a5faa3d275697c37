"""A multi-node Ray cluster on this machine for the tests, started and stopped with cluster/local-up.sh and
cluster/local-down.sh (which end only this cluster's processes, never other Ray clusters of the machine).

Ports come from a random base checked free, temp dirs from a fresh folder, so that two test runs (or other
people's ``ray.init`` clusters) on one machine do not collide.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
RAY_CLI = str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class LocalCluster:
    dir: Path
    gcs_address: str  # for ray.init(address=...)
    dashboard: str  # http://127.0.0.1:PORT: the Job API
    metrics_ports: list[int]
    env: dict[str, str]  # the environment the nodes run with (PATH, RAY_AUTH_MODE...)

    def token(self) -> str:
        env_token = self.env.get("RAY_AUTH_TOKEN")
        return env_token or (Path.home() / ".ray" / "auth_token").read_text().strip()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_base(nodes: int) -> tuple[int, int]:
    """A base port P with P..P+10*(nodes+1)+10 and the worker ranges free, and a free dashboard port."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 29000, 10)
        ports = [base, base + 1, *(base + 10 + 10 * i + k for i in range(nodes) for k in range(6))]
        ports += [base + 1000 + 100 * i + k for i in range(nodes) for k in (0, 50, 99)]
        dash = rng.randrange(31000, 32000)
        if all(_free(p) for p in [*ports, dash]):
            return base, dash
    raise RuntimeError("no free port range found")


@contextlib.contextmanager
def local_cluster(workers: int = 1, head_cpus: int = 1, node_cpus: int = 1,
                  extra_env: dict[str, str] | None = None, ray_cli: str | None = RAY_CLI) -> Iterator[LocalCluster]:
    """A head and ``workers`` worker nodes; stopped (every process of it) on exit. ``ray_cli=None``: let
    local-up.sh find ``ray`` itself (on PATH, else the project's .venv)."""
    base, dash = _free_base(workers + 1)
    tmp = Path(tempfile.mkdtemp(prefix="emx-", dir="/tmp"))  # short: Unix socket paths max 107 bytes
    env = {
        **os.environ,
        "EMODIS_LOCAL_DIR": str(tmp / "c"),
        "EMODIS_LOCAL_PORT": str(base),
        "EMODIS_DASHBOARD_PORT": str(dash),
        "EMODIS_HEAD_CPUS": str(head_cpus),
        "EMODIS_NODE_CPUS": str(node_cpus),
        "EMODIS_OBJECT_STORE_MB": "150",
        **({"RAY": ray_cli} if ray_cli else {}),
        "RAY_metrics_report_interval_ms": "1000",  # custom metrics reach the endpoint within ~1 s
        **(extra_env or {}),
    }
    env.pop("RAY_ADDRESS", None)
    if not ray_cli:
        env.pop("RAY", None)
    up = subprocess.run(["bash", str(CLUSTER / "local-up.sh"), str(workers)], env=env, capture_output=True,
                        text=True, timeout=120)
    try:
        if up.returncode != 0:
            raise RuntimeError(f"local-up.sh failed:\n{up.stdout}\n{up.stderr}")
        state = dict(line.removeprefix("export ").split("=", 1)
                     for line in (tmp / "c" / "cluster.env").read_text().splitlines() if line.startswith("export"))
        node_env = {**env, "RAY_AUTH_MODE": "token",
                    "PATH": f"{Path(ray_cli or RAY_CLI).parent}:{env.get('PATH', '')}"}
        yield LocalCluster(dir=tmp, gcs_address=state["EMODIS_GCS_ADDRESS"], dashboard=state["RAY_ADDRESS"],
                           metrics_ports=[int(p) for p in state["EMODIS_METRICS_PORTS"].strip('"').split()],
                           env=node_env)
    finally:
        subprocess.run(["bash", str(CLUSTER / "local-down.sh")], env=env, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
