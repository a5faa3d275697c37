"""`emodis bench startup`'s arithmetic and report (no Ray): the Welch interval, the verdict, the environment."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from emodis_ray.bench.startup import StartupBench, environ, welch


def test_welch_interval_equals_its_hand_computation() -> None:
    a, b = [32.6, 33.1, 33.5], [35.8, 32.2, 38.4]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # Welch-Satterthwaite
    from scipy.stats import t

    half = t.ppf(0.975, df) * math.sqrt(va + vb)
    d = welch(b, a)
    assert d["mean"] == pytest.approx(np.mean(b) - np.mean(a))
    assert (d["low"], d["high"]) == pytest.approx((d["mean"] - half, d["mean"] + half))
    assert math.isnan(welch([1.0], [2.0, 3.0])["low"])  # one run on a side: no interval


def test_the_report_says_when_a_difference_is_not_detectable() -> None:
    runs = {"local": [{"fit_s": 33.0, "first_report_s": 31.0, "rest_s": 2.0}] * 2,
            "ray_defaults": [{"fit_s": 35.0, "first_report_s": 30.0, "rest_s": 4.5}] * 2}
    res = StartupBench(reps=2, epochs=2, workers=2, runs=runs,
                       diff={"fit_s": {"mean": 2.0, "low": -5.0, "high": 9.0},
                             "rest_s": {"mean": 2.5, "low": 1.5, "high": 3.4}})
    lines = res.format().splitlines()
    assert next(ln for ln in lines if "fit_s:" in ln).endswith("no detectable difference")
    assert next(ln for ln in lines if "rest_s:" in ln).endswith("(95 % Welch)")
    assert any(ln.startswith("(B) Ray Train defaults") and "35.0, 35.0" in ln for ln in lines)


def test_environ_sets_then_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMODIS_T_A", "user")
    monkeypatch.delenv("EMODIS_T_B", raising=False)
    with environ({"EMODIS_T_A": "1", "EMODIS_T_B": "2"}):
        assert (os.environ["EMODIS_T_A"], os.environ["EMODIS_T_B"]) == ("1", "2")
    assert os.environ["EMODIS_T_A"] == "user" and "EMODIS_T_B" not in os.environ
