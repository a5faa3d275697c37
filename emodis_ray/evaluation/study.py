"""The figures of a study: several training seeds per arm (method or config), every run evaluated on the same
test clips; per arm the mean and SD over seeds, each arm against the first with a 95 % interval from a
hierarchical bootstrap (seeds, then test clips), and a Stuart–Maxwell test per seed (docs/design.md §7).

Pure: it reads what `emodis evaluate` left in each run folder (``evaluation.json``, ``predictions.parquet``,
``leakage_predictions.npz``) and writes ``study.json``, ``study.md`` and ``study.png``.

The hierarchical bootstrap draws, per resample, the seeds of every arm with replacement and one resample of
the test clips shared by all runs (the arms are compared on the same clips), and recomputes each figure
from the per-clip predictions: the primary heads' scores, and the leakage above the floor from every probe
seed's and floor probe's predictions. Its interval therefore holds both sources of noise: training seeds and
the finite test set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emodis_ray.data.labels import EMOTIONS
from emodis_ray.evaluation.leakage import above_floor
from emodis_ray.evaluation.records import (
    LEAKAGE_PREDICTIONS_FILE,
    PREDICTIONS_FILE,
    Evaluation,
    load_evaluation,
)
from emodis_ray.evaluation.stats import ALPHA_STUART_MAXWELL, _accuracy_rows, _interval, _macro_f1_rows, stuart_maxwell

DIRECTIONS = ("emo_from_spk", "spk_from_emo")
# figure -> how a run reports it (the seed table of study.json)
SEED_FIGURES = ("emo_f1", "spk_acc", "probe_emo_from_spk_f1", "floor_shuffled_emo_from_spk_f1",
                "floor_prior_emo_from_spk_f1", "chance_emo_f1", "leak_emo_from_spk_above_floor",
                "probe_spk_from_emo_acc", "floor_shuffled_spk_from_emo_acc", "floor_prior_spk_from_emo_acc",
                "chance_spk_acc", "leak_spk_from_emo_above_floor", "leak_targeted_above_floor")
DIFF_FIGURES = ("leak_emo_from_spk_above_floor", "leak_spk_from_emo_above_floor", "emo_f1", "spk_acc")


@dataclass
class RunData:
    """One evaluated run: its record and the per-clip arrays the bootstrap resamples."""

    seed: int
    run: Path
    evaluation: Evaluation
    clip_id: np.ndarray  # [N] test clips, in a fixed order (sorted)
    emotion: np.ndarray  # [N]
    speaker: np.ndarray  # [N]
    emo_pred: np.ndarray  # [N]
    spk_pred: np.ndarray  # [N]
    leak: dict[str, dict[str, np.ndarray]]  # direction -> y, probe [S, N], shuffled [S, N], prior [N]

    def figures(self) -> dict[str, float]:
        """The seed's row of ``study.json``."""
        ev, det = self.evaluation, self.evaluation.leakage_detail.get("directions", {})
        e, s = det.get("emo_from_spk", {}), det.get("spk_from_emo", {})
        val = lambda est: float("nan") if est is None else est.value  # noqa: E731
        return {"seed": self.seed, "run": str(self.run), "n_test": ev.n_test,
                "emo_f1": val(ev.emo_f1), "spk_acc": val(ev.spk_acc),
                "probe_emo_from_spk_f1": e.get("probe"), "floor_shuffled_emo_from_spk_f1": e.get("floor_shuffled"),
                "floor_prior_emo_from_spk_f1": e.get("floor_prior"), "chance_emo_f1": ev.chance_emo_f1,
                "leak_emo_from_spk_above_floor": ev.leakage_emo_from_spk,
                "probe_spk_from_emo_acc": s.get("probe"), "floor_shuffled_spk_from_emo_acc": s.get("floor_shuffled"),
                "floor_prior_spk_from_emo_acc": s.get("floor_prior"), "chance_spk_acc": ev.chance_spk_acc,
                "leak_spk_from_emo_above_floor": ev.leakage_spk_from_emo,
                "leak_targeted_above_floor": ev.leakage.value, "targets": list(ev.leakage_targets),
                "floor_kind": e.get("floor_kind"), "probe_logloss_emo_from_spk": e.get("probe_logloss"),
                "floor_shuffled_logloss_emo_from_spk": e.get("floor_shuffled_logloss")}


def load_run(run: Path, seed: int) -> RunData:
    """An evaluated run's record and per-clip arrays, clips sorted by id."""
    ev = load_evaluation(run)
    pred = pd.read_parquet(run / PREDICTIONS_FILE)
    order = np.argsort(pred["clip_id"].to_numpy())
    npz = np.load(run / LEAKAGE_PREDICTIONS_FILE)
    leak = {d: {k: npz[f"{d}.{k}"][..., order] for k in ("y", "probe", "shuffled", "prior")} for d in DIRECTIONS}
    col = lambda k: pred[k].to_numpy()[order]  # noqa: E731
    return RunData(seed=seed, run=run, evaluation=ev, clip_id=col("clip_id"), emotion=col("emotion"),
                   speaker=col("speaker"), emo_pred=col("emo_pred"), spk_pred=col("spk_pred"), leak=leak)


def resampled_figures(r: RunData, idx: np.ndarray, num_emotions: int = len(EMOTIONS)) -> dict[str, np.ndarray]:
    """Each figure of :data:`DIFF_FIGURES` on every clip resample of ``idx`` [B, N] ([B] each)."""
    def rows(metric: str, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return _macro_f1_rows(idx, y, pred, num_emotions) if metric == "f1" else _accuracy_rows(idx, y, pred)

    out = {"emo_f1": rows("f1", r.emotion, r.emo_pred), "spk_acc": rows("acc", r.speaker, r.spk_pred)}
    kind = r.evaluation.leakage_detail.get("directions", {}).get("emo_from_spk", {}).get("floor_kind", "shuffled")
    for d, metric in (("emo_from_spk", "f1"), ("spk_from_emo", "acc")):
        a = r.leak[d]
        probe = np.mean([rows(metric, a["y"], p) for p in a["probe"]], axis=0)
        floor = (np.mean([rows(metric, a["y"], p) for p in a["shuffled"]], axis=0) if kind == "shuffled"
                 else rows(metric, a["y"], a["prior"]))
        out[f"leak_{d}_above_floor"] = above_floor(probe, floor)
    return out


def hierarchical_diffs(arms: Mapping[str, Sequence[RunData]], n_boot: int = 1000, alpha: float = 0.05,
                       seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Each arm against the first: the difference of the seed means of every figure of :data:`DIFF_FIGURES`,
    ``[estimate, lo, hi]``, the interval from resampling seeds (per arm) and then test clips (shared)."""
    names = list(arms)
    runs = [r for a in names for r in arms[a]]
    n = {len(r.clip_id) for r in runs}
    if len(n) != 1 or any(not np.array_equal(r.clip_id, runs[0].clip_id) for r in runs):
        raise ValueError("every run of a study must be evaluated on the same test clips")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n.pop(), size=(n_boot, len(runs[0].clip_id)))  # [B, N] shared clip resamples
    boot = {a: [resampled_figures(r, idx) for r in arms[a]] for a in names}  # arm -> seed -> figure -> [B]
    point = {a: {f: float(np.mean([r.figures()[f] for r in arms[a]])) for f in DIFF_FIGURES} for a in names}
    out: dict[str, dict[str, list[float]]] = {}
    for a in names[1:]:
        out[a] = {}
        for f in DIFF_FIGURES:
            draws = []
            for arm in (a, names[0]):
                k = len(boot[arm])
                pick = rng.integers(0, k, size=(n_boot, k))  # [B, k] the seeds of each resample
                per_seed = np.stack([b[f] for b in boot[arm]])  # [k, B]
                draws.append(per_seed[pick, np.arange(n_boot)[:, None]].mean(1))  # [B]
            est = point[a][f] - point[names[0]][f]
            diff = draws[0] - draws[1]
            lo, hi = _interval(diff[np.isfinite(diff)], alpha) if np.isfinite(diff).any() else (math.nan, math.nan)
            out[a][f"d_{f}"] = [est, lo, hi]
    return out


def stuart_maxwell_per_seed(arms: Mapping[str, Sequence[RunData]]) -> dict[str, list[dict[str, Any]]]:
    """Each arm's emotion predictions against the first arm's run of the same training seed."""
    names = list(arms)
    first = {r.seed: r for r in arms[names[0]]}
    out: dict[str, list[dict[str, Any]]] = {}
    for a in names[1:]:
        out[a] = [{"seed": r.seed, **stuart_maxwell(r.emo_pred, first[r.seed].emo_pred).to_dict()}
                  for r in arms[a] if r.seed in first]
    return out


def summarise(arms: Mapping[str, Sequence[RunData]], configs: Mapping[str, Mapping[str, Any]],
              n_boot: int = 1000, screen: bool = False) -> dict[str, Any]:
    """``study.json``'s content (see the module docstring for the statistics)."""
    out: dict[str, Any] = {"screen": screen, "protocol": "frozen-trunk screen" if screen else "end to end",
                           "n_test": len(next(iter(arms.values()))[0].clip_id), "arms": {}}
    for name, runs in arms.items():
        seeds = [r.figures() for r in runs]
        nums = [f for f in SEED_FIGURES if all(isinstance(s.get(f), (int, float)) for s in seeds)]
        out["arms"][name] = {
            "config": dict(configs.get(name, {})), "seeds": seeds,
            "mean": {f: float(np.nanmean([s[f] for s in seeds])) for f in nums},
            "sd": {f: float(np.nanstd([s[f] for s in seeds], ddof=1)) if len(seeds) > 1 else 0.0 for f in nums}}
    out["vs_first"] = hierarchical_diffs(arms, n_boot=n_boot) if len(arms) > 1 else {}
    out["stuart_maxwell"] = stuart_maxwell_per_seed(arms) if len(arms) > 1 else {}
    return out


# --- outputs --------------------------------------------------------------------------------------------


def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}"


def markdown(study: Mapping[str, Any]) -> str:
    """``study.md``: the per-arm table (mean ± SD over seeds) and each arm against the first."""
    names = list(study["arms"])
    k = {a: len(study["arms"][a]["seeds"]) for a in names}
    screen = " — **frozen-trunk screen**, not the paper's end-to-end protocol" if study.get("screen") else ""
    lines = [f"# Study{screen}", "",
             f"{len(names)} arms, seeds per arm: {', '.join(f'{a} {k[a]}' for a in names)}; "
             f"{study['n_test']} test clips. Figures in %, mean ± SD over training seeds. Leakage above the "
             "identity-only floor: (probe − floor)/(1 − floor), floored at 0 (lower is better).", "",
             "| arm | emotion F1 | identity acc | probe emo←spk | floor shuffled / prior | chance | leakage emo←spk "
             "above floor | probe spk←emo | floor shuffled / prior | leakage spk←emo above floor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a in names:
        m, s = study["arms"][a]["mean"], study["arms"][a]["sd"]
        ms = lambda f, m=m, s=s: f"{_pct(m.get(f))} ± {_pct(s.get(f))}"  # noqa: E731
        lines.append(f"| {a} | {ms('emo_f1')} | {ms('spk_acc')} | {ms('probe_emo_from_spk_f1')} | "
                     f"{_pct(m.get('floor_shuffled_emo_from_spk_f1'))} / "
                     f"{_pct(m.get('floor_prior_emo_from_spk_f1'))} | "
                     f"{_pct(m.get('chance_emo_f1'))} | {ms('leak_emo_from_spk_above_floor')} | "
                     f"{ms('probe_spk_from_emo_acc')} | {_pct(m.get('floor_shuffled_spk_from_emo_acc'))} / "
                     f"{_pct(m.get('floor_prior_spk_from_emo_acc'))} | {ms('leak_spk_from_emo_above_floor')} |")
    if study.get("vs_first"):
        first = names[0]
        lines += ["", f"## Against {first}", "",
                  "Difference of seed means (arm − first), points, 95 % interval from a hierarchical bootstrap "
                  "(seeds, then test clips). An interval that spans 0 is no detectable difference.", "",
                  "| arm | Δ leakage emo←spk above floor | Δ leakage spk←emo above floor | Δ emotion F1 | "
                  "Δ identity acc | removed of the first's emo←spk leakage | Stuart–Maxwell rejects (α 0.01) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        base = study["arms"][first]["mean"].get("leak_emo_from_spk_above_floor", math.nan)
        for a, d in study["vs_first"].items():
            cell = lambda f, d=d: (f"{100 * d[f][0]:+.1f} [{100 * d[f][1]:+.1f}, {100 * d[f][2]:+.1f}]"  # noqa: E731
                                   + ("" if d[f][1] <= 0 <= d[f][2] else " *"))
            mine = study["arms"][a]["mean"].get("leak_emo_from_spk_above_floor", math.nan)
            removed = f"{1 - mine / base:.0%}" if base and math.isfinite(base) and base > 0 else "—"
            sm = study.get("stuart_maxwell", {}).get(a, [])
            rej = f"{sum(bool(x['reject']) for x in sm)} of {len(sm)} seeds" if sm else "—"
            lines.append(f"| {a} | {cell('d_leak_emo_from_spk_above_floor')} | "
                         f"{cell('d_leak_spk_from_emo_above_floor')} | {cell('d_emo_f1')} | {cell('d_spk_acc')} | "
                         f"{removed} | {rej} |")
        lines += ["", "`*`: the interval excludes 0."]
    return "\n".join(lines) + "\n"


def plot(study: Mapping[str, Any], path: Path) -> Path:
    """Each arm's seeds as points, their mean with the bootstrap interval of the difference to the first arm
    around it, and the identity-only floors (emotion from the speaker embedding) as lines."""
    from matplotlib.figure import Figure

    names = list(study["arms"])
    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(1, 3)
    panels = (("leak_emo_from_spk_above_floor", "leakage emo←spk above floor (%)"),
              ("emo_f1", "emotion macro-F1 (%)"), ("probe_emo_from_spk_f1", "probe emo←spk F1 (%)"))
    for ax, (f, title) in zip(axes, panels, strict=True):
        for i, a in enumerate(names):
            vals = [100 * s[f] for s in study["arms"][a]["seeds"] if s.get(f) is not None and math.isfinite(s[f])]
            ax.scatter([i] * len(vals), vals, s=14, alpha=0.6, color=f"C{i}")
            if vals:
                mean = float(np.mean(vals))
                diff = study.get("vs_first", {}).get(a, {}).get(f"d_{f}")
                err = None if diff is None else [[100 * (diff[0] - diff[1])], [100 * (diff[2] - diff[0])]]
                ax.errorbar([i + 0.15], [mean], yerr=err, fmt="D", color=f"C{i}", capsize=3)
        if f == "probe_emo_from_spk_f1":
            first = study["arms"][names[0]]["mean"]
            for key, style, label in (("floor_shuffled_emo_from_spk_f1", "--", "shuffled floor"),
                                      ("floor_prior_emo_from_spk_f1", "-.", "prior floor"),
                                      ("chance_emo_f1", ":", "chance")):
                if key in first and math.isfinite(first[key]):
                    ax.axhline(100 * first[key], ls=style, color="gray", lw=1, label=label)
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    note = (f"points: seeds; diamonds: means; bars: 95 % interval of the difference to {names[0]} "
            "(hierarchical bootstrap), drawn around the mean")
    fig.suptitle(("frozen-trunk screen. " if study.get("screen") else "") + note, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write(out: Path, study: Mapping[str, Any]) -> dict[str, Path]:
    """``study.json``, ``study.md``, ``study.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "study.json", "md": out / "study.md", "png": out / "study.png"}
    paths["json"].write_text(json.dumps(study, indent=1, allow_nan=True, default=str))
    paths["md"].write_text(markdown(study))
    plot(study, paths["png"])
    return paths


__all__ = ["RunData", "load_run", "hierarchical_diffs", "stuart_maxwell_per_seed", "summarise", "markdown",
           "plot", "write", "ALPHA_STUART_MAXWELL"]
