"""The selection rule of a search, pure: a run's F1, the emotion-F1 floor, feasibility, the value Optuna
minimises, the chosen trial, the Pareto front, ASHA's schedule and how many trials fit at once
(docs/design.md §8).

The objective is the probe-based *validation* leakage (probes trained on train, early-stopped and scored on
val; the test split is never read), subject to an emotion-F1 floor: by default the MTL baseline's validation
F1 minus the space's tolerance. Infeasible trials are reported to Optuna with a penalty and are never chosen.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from emodis_ray.config import Config
from emodis_ray.runtime.session import max_concurrent_trials

PENALTY = 1.0  # added to an infeasible trial's leakage in the objective told to Optuna


def smoothed_f1(per_epoch: Sequence[float], k: int = 1) -> float:
    """A run's emotion F1: the mean of its last ``k`` finite per-epoch values (NaN when there are none). On a
    small validation split one epoch's F1 swings by several points; a short mean steadies the floor and the
    feasibility verdict."""
    vals = [float(v) for v in per_epoch if v is not None and math.isfinite(float(v))][-max(1, k):]
    return sum(vals) / len(vals) if vals else float("nan")


def run_f1(rows: Sequence[Mapping[str, Any]], k: int = 1) -> float:
    """:func:`smoothed_f1` of a training run's per-epoch metric rows (their ``val_emo_f1``)."""
    return smoothed_f1([r.get("val_emo_f1", float("nan")) for r in rows], k)


def floor_from_baseline(baseline_emo_f1: float, tolerance: float) -> float:
    """The emotion-F1 floor: the baseline's validation F1 minus the tolerance."""
    return float(baseline_emo_f1) - float(tolerance)


def is_feasible(emo_f1: float | None, leakage: float | None, floor: float, spk_acc: float | None = None,
                id_floor: float | None = None) -> bool:
    """A trial is feasible when it has both validation figures, its emotion F1 meets ``floor`` and, when an
    identity floor is given, its identity accuracy meets ``id_floor``."""
    if emo_f1 is None or leakage is None or not math.isfinite(emo_f1) or not math.isfinite(leakage):
        return False
    if id_floor is not None and (spk_acc is None or not math.isfinite(spk_acc) or spk_acc < id_floor):
        return False
    return emo_f1 >= floor


def objective_value(leakage: float, feasible: bool) -> float:
    """What Optuna minimises: the leakage, plus :data:`PENALTY` when infeasible (infeasible always ranks last)."""
    return float(leakage) + (0.0 if feasible else PENALTY)


def choose_best(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The completed, feasible trial with the lowest validation leakage (ties: higher emotion F1, then the
    earlier trial); None when no trial is feasible. Rows need ``status``, ``feasible``, ``val_leakage``,
    ``val_emo_f1``."""
    ok = [(i, r) for i, r in enumerate(rows) if r.get("status") == "completed" and bool(r.get("feasible"))]
    if not ok:
        return None
    return min(ok, key=lambda ir: (float(ir[1]["val_leakage"]), -float(ir[1]["val_emo_f1"]), ir[0]))[1]


def top_k(rows: Sequence[Mapping[str, Any]], k: int, params: Sequence[str]) -> list[Mapping[str, Any]]:
    """Stage 2's candidates: the ``k`` completed feasible trials with the lowest validation leakage, one per
    distinct configuration (same ranking as :func:`choose_best`)."""
    ok = [(i, r) for i, r in enumerate(rows) if r.get("status") == "completed" and bool(r.get("feasible"))]
    ok.sort(key=lambda ir: (float(ir[1]["val_leakage"]), -float(ir[1]["val_emo_f1"]), ir[0]))
    out: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    for _, r in ok:
        key = repr([r.get(p) for p in params])
        if key not in seen and len(out) < k:
            seen.add(key)
            out.append(r)
    return out


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean over seeds and its Student-t interval ``(mean, low, high)``; one value: an unbounded interval."""
    from scipy import stats

    v = [float(x) for x in values if math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan, math.nan
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, -math.inf, math.inf
    sd = statistics.stdev(v)  # exact arithmetic: seeds that agree to the last bits give 0, not a precision warning
    half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * sd / math.sqrt(len(v))
    return m, m - half, m + half


def choose_confirmed(arms: Mapping[str, Mapping[str, float]], f1_floor: float,
                     id_floor: float) -> str | None:
    """Stage 2's choice: among the candidates (``{name: {"val_emo_f1", "val_spk_acc", "val_leakage"}}`` as means
    over seeds) whose mean emotion F1 and identity accuracy meet the floors, the lowest mean validation leakage
    (ties: higher F1, then the earlier candidate); None when none is feasible."""
    ok = [(i, n, a) for i, (n, a) in enumerate(arms.items())
          if is_feasible(a["val_emo_f1"], a["val_leakage"], f1_floor, a["val_spk_acc"], id_floor)]
    if not ok:
        return None
    return min(ok, key=lambda t: (t[2]["val_leakage"], -t[2]["val_emo_f1"], t[0]))[1]


def asha_schedule(epochs: int, reduction_factor: int = 2) -> tuple[int, int] | None:
    """ASHA's ``(grace_period, max_t)`` in epochs, or None when a run is too short to stop early (< 3 epochs).
    ``max_t`` is one epoch short of the run, so no rung sits on the last epoch: a trial that trained to the end
    is never stopped before its probes."""
    if epochs < 3:
        return None
    max_t = epochs - 1
    return min(max(1, epochs // 4), max(1, max_t // reduction_factor)), max_t


def pareto_mask(emo_f1: Sequence[float], leakage: Sequence[float]) -> list[bool]:
    """Which points no other point dominates (emotion F1 at least as high and leakage at least as low, one
    of them strictly); NaN points are never on the front."""
    pts = list(zip(emo_f1, leakage, strict=True))
    out = []
    for i, (f, lk) in enumerate(pts):
        if not (math.isfinite(f) and math.isfinite(lk)):
            out.append(False)
            continue
        out.append(not any(j != i and math.isfinite(g) and math.isfinite(m) and g >= f and m <= lk
                           and (g > f or m < lk) for j, (g, m) in enumerate(pts)))
    return out


def trial_concurrency(cfg: Config, cpus: float, gpus: float = 0.0) -> int:
    """Concurrent trials that fit the cluster: each trial's workers (one CPU each, or one GPU each) plus one
    whole CPU left for its Ray Data tasks (without it Ray Data starves and the run hangs; docs/design.md §9)."""
    return max_concurrent_trials(cfg.train.workers, cpus, gpus, cfg.train.use_gpu)
