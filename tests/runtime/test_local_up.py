"""The README's cluster steps work right after `make demo`: local-up.sh finds the project's .venv when `ray` is not
on PATH, and its cluster.env puts that environment (ray, emodis) on PATH for what follows."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers.localcluster import ROOT, local_cluster

BARE_PATH = "/usr/local/bin:/usr/bin:/bin"  # a fresh shell: no venv activated


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_local_up_and_submit_work_without_the_venv_on_path() -> None:
    if not (ROOT / ".venv" / "bin" / "ray").exists():
        pytest.skip("needs the project's .venv (make venv)")
    if subprocess.run(["bash", "-c", "command -v ray"], env={"PATH": BARE_PATH}).returncode == 0:
        pytest.skip("a ray on the bare PATH would be used instead of the venv's")
    with local_cluster(workers=0, extra_env={"PATH": BARE_PATH}, ray_cli=None) as c:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VIRTUAL_ENV")}
        env["PATH"] = BARE_PATH
        r = subprocess.run(["bash", "-c", f"source {c.dir / 'c' / 'cluster.env'} && command -v emodis && "
                                          "emodis jobs list"], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[0] == str(ROOT / ".venv" / "bin" / "emodis")
