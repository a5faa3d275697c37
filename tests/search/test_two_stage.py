"""The two-stage search's rules (no Ray): the identity floor, stage 2's candidates and choice, the objective's
direction in the screen, and the shipped spaces loading from an installed wheel."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emodis_ray.config import load_config, replace
from emodis_ray.search.screen import screen_val
from emodis_ray.search.select import choose_best, choose_confirmed, is_feasible, mean_interval, top_k

ROOT = Path(__file__).resolve().parents[2]


def _row(tid: str, f1: float, acc: float, leak: float, lr: float, floor: float = 0.5, id_floor: float = 0.7,
         status: str = "completed") -> dict[str, Any]:
    return {"trial_id": tid, "status": status, "val_emo_f1": f1, "val_spk_acc": acc, "val_leakage": leak,
            "optim.lr": lr, "feasible": is_feasible(f1, leak, floor, acc, id_floor)}


def test_identity_floor_makes_a_trial_infeasible() -> None:
    assert is_feasible(0.6, 0.1, 0.5, 0.75, 0.7)
    assert not is_feasible(0.6, 0.1, 0.5, 0.69, 0.7)  # identity below its floor
    assert not is_feasible(0.6, 0.1, 0.5, math.nan, 0.7)
    assert is_feasible(0.6, 0.1, 0.5, 0.1, None)  # no identity floor given
    # the trial with the lowest leakage gave up identity: never chosen
    rows = [_row("a", 0.6, 0.40, 0.05, 1e-3), _row("b", 0.6, 0.80, 0.20, 2e-3), _row("c", 0.6, 0.75, 0.30, 3e-3)]
    assert not rows[0]["feasible"]
    assert choose_best(rows)["trial_id"] == "b"  # type: ignore[index]


def test_top_k_takes_the_lowest_feasible_distinct_configs() -> None:
    rows = [_row("a", 0.6, 0.8, 0.30, 1e-3), _row("b", 0.6, 0.8, 0.10, 2e-3), _row("c", 0.6, 0.8, 0.10, 2e-3),
            _row("d", 0.4, 0.8, 0.01, 4e-3), _row("e", 0.6, 0.8, 0.20, 5e-3),
            _row("f", 0.6, 0.8, 0.0, 6e-3, status="error")]
    picks = top_k(rows, 2, ["optim.lr"])
    assert [r["trial_id"] for r in picks] == ["b", "e"]  # c repeats b's config; d is infeasible; f failed
    assert [r["trial_id"] for r in top_k(rows, 9, ["optim.lr"])] == ["b", "e", "a"]


def test_stage2_chooses_the_lowest_feasible_mean() -> None:
    arms = {"x": {"val_emo_f1": 0.60, "val_spk_acc": 0.80, "val_leakage": 0.20},
            "y": {"val_emo_f1": 0.60, "val_spk_acc": 0.60, "val_leakage": 0.05},  # identity below the floor
            "z": {"val_emo_f1": 0.61, "val_spk_acc": 0.79, "val_leakage": 0.15}}
    assert choose_confirmed(arms, 0.55, 0.78) == "z"
    assert choose_confirmed(arms, 0.55, 0.795) == "x"
    assert choose_confirmed(arms, 0.7, 0.0) is None
    m, lo, hi = mean_interval([0.1, 0.2, 0.3])
    assert m == pytest.approx(0.2) and lo == pytest.approx(0.2 - 4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert hi - m == pytest.approx(m - lo)


def _features(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Trunk features of 6 speakers with skewed emotion priors: emotion and identity both readable."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", 240), ("val", 120), ("test", 60)):
        spk = rng.integers(0, 6, n)
        emo = np.where(rng.random(n) < 0.5, spk % 5, rng.integers(0, 5, n))
        h = rng.normal(size=(n, 128)).astype(np.float32)  # the pooled width of two trunks at width 0.125
        h[np.arange(n), emo] += 2.0
        h[np.arange(n), 5 + spk] += 2.0
        out[split] = {"h": h, "emotion": emo.astype(np.int64), "speaker": spk.astype(np.int64),
                      "clip_id": np.array([f"{split}{i}" for i in range(n)])}
    return out


@pytest.mark.parametrize("direction,key", [("spk2emo", "leak_emo_from_spk"), ("emo2spk", "leak_spk_from_emo")])
def test_screen_objective_is_the_targeted_direction_above_its_floor(direction: str, key: str) -> None:
    cfg = replace(load_config("tiny"), model={"emo_dim": 16, "spk_dim": 8},
                  method={"name": "conf", "direction": direction}, train={"epochs": 2, "seed": 1},
                  evaluation={"probe_seeds": 1})
    res = screen_val(_features(), cfg, {"width": 0.125})
    assert res["val_leakage"] == res[key]
    floor_key, probe_key = ("floor_emo_from_spk_f1", "probe_emo_from_spk_f1") if key.endswith("spk") else \
        ("floor_spk_from_emo_acc", "probe_spk_from_emo_acc")
    want = max(0.0, (res[probe_key] - res[floor_key]) / (1 - res[floor_key]))
    assert res[key] == pytest.approx(want)
    assert res["n_val"] == 120 and 0 <= res["val_spk_acc"] <= 1


@pytest.mark.timeout(300)
def test_spaces_load_from_an_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel, install it into a folder, and load every shipped space by name from outside the checkout."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, cwd=tmp_path, timeout=240)
    wheel = next(wheels.glob("emodis_ray-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, cwd=tmp_path, timeout=120)
    code = ("import emodis_ray, sys; from emodis_ray.search.space import load_space, shipped_spaces; "
            "assert emodis_ray.__file__.startswith(sys.argv[1]), emodis_ray.__file__; "
            "print(sorted(load_space(n).study for n in ('gr', 'alt', 'conf', 'all')))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['all', 'alt', 'conf', 'gr']"
