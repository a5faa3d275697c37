"""What a search leaves behind: one row per trial (``trials.csv``), the Pareto plot, ``best.yaml`` and
``summary.json``, collected from the Tune experiments and the trials' run folders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from emodis_ray.search.select import choose_best, pareto_mask
from emodis_ray.search.space import Space
from emodis_ray.search.trial import ERROR_FILE, RESULT_FILE, TRIAL_FILE


def fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trial_error(run: Path, trial: Any) -> str:
    f = run / ERROR_FILE
    text = f.read_text() if f.exists() else ""
    if not text and getattr(trial, "error_file", None) and Path(trial.error_file).exists():
        text = Path(trial.error_file).read_text()
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else "error"


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def collect(out: Path, rounds: Sequence[dict[str, Any]], space: Space) -> list[dict[str, Any]]:
    """One row per trial of every round, in start order."""
    rows = []
    for rnd in rounds:
        path = out / rnd["name"]
        if not path.exists() or not tune.Tuner.can_restore(str(path)):
            continue
        for t in tune.ExperimentAnalysis(str(path)).trials:
            run = out / "runs" / t.trial_id
            rec, res = _read(run / TRIAL_FILE), _read(run / RESULT_FILE)
            last = t.last_result or {}
            if t.status == "ERROR":
                status = "error"
            elif res:
                status = "completed"
            elif t.status == "TERMINATED":
                status = "stopped"  # ASHA stopped it before the probes
            else:
                status = "unfinished"
            params = t.config
            row: dict[str, Any] = {"trial_id": t.trial_id, "round": rnd["name"], "status": status,
                                   **{k: params.get(k) for k in space.params}}
            row |= {k: res.get(k, float("nan")) for k in ("val_emo_f1", "val_emo_f1_last", "val_leakage", "val_spk_acc",
                                                          "probe_emo_from_spk_f1", "probe_spk_from_emo_acc")}
            row |= {"feasible": bool(res.get("feasible", 0.0)), "objective": res.get("objective", float("nan")),
                    "online_leakage": last.get("online_leakage", float("nan")),
                    "epochs_done": int(last.get("epochs_done", 0)), "trial_s": res.get("trial_s", float("nan")),
                    "started": rec.get("started", float("nan")), "seed": rec.get("seed"), "run": str(run),
                    "error": trial_error(run, t) if status == "error" else ""}
            rows.append(row)
    rows.sort(key=lambda r: (math.isnan(r["started"]), r["started"]))
    done = [r for r in rows if r["status"] == "completed"]
    for r, on in zip(done, pareto_mask([r["val_emo_f1"] for r in done], [r["val_leakage"] for r in done]),
                     strict=True):
        r["pareto"] = on
    for i, r in enumerate(rows):
        r["order"] = i
        r.setdefault("pareto", False)
    return rows


def write_outputs(out: Path, rows: list[dict[str, Any]], space: Space, floor: float, baseline: dict[str, Any],
                  multi_objective: bool) -> dict[str, Any] | None:
    """trials.csv, pareto.png, best.yaml (when a trial is feasible) and summary.json."""
    best = choose_best(rows)
    cols = ["order", "trial_id", "round", "status", *space.params, "val_emo_f1", "val_leakage", "feasible", "pareto",
            "val_emo_f1_last", "objective", "probe_emo_from_spk_f1", "probe_spk_from_emo_acc", "val_spk_acc",
            "online_leakage", "epochs_done", "trial_s", "seed", "run", "error"]
    pd.DataFrame(rows, columns=cols).to_csv(out / "trials.csv", index=False)
    others = len(rows) - sum(r["status"] == "completed" for r in rows)
    plot_pareto(rows, floor, best, baseline, out / "pareto.png", title=f"{space.study}: {len(rows)} trials"
                + (f" ({others} failed, stopped early or unfinished: not shown)" if others else ""))
    best_file = out / "best.yaml"
    if best is not None:
        text = Path(best["run"], "config.yaml").read_text()
        best_file.write_text(f"# emodis tune ({space.study}): trial {best['trial_id']}, val leakage "
                             f"{100 * best['val_leakage']:.1f} %, val emotion F1 {100 * best['val_emo_f1']:.1f} % "
                             f"(floor {100 * floor:.1f} %)\n"
                             + text)
    elif best_file.exists():
        best_file.unlink()
    summary = {"study": space.study, "floor": floor, "baseline": baseline, "multi_objective": multi_objective,
               "trials": len(rows), "completed": sum(r["status"] == "completed" for r in rows),
               "feasible": sum(bool(r["feasible"]) for r in rows), "best": best}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return best


def plot_pareto(rows: list[dict[str, Any]], floor: float, best: dict[str, Any] | None, baseline: dict[str, Any],
                path: Path, title: str = "") -> None:
    """Validation emotion F1 vs validation leakage: feasible (dots) and infeasible (crosses) trials, the
    Pareto front, the floor, the chosen trial and the MTL baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pc = lambda v: 100 * float(v)  # noqa: E731  (percent, as every figure of the project)
    done = [r for r in rows if r["status"] == "completed"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for feas, style in ((True, {"marker": "o", "color": "tab:blue", "label": "feasible"}),
                        (False, {"marker": "x", "color": "tab:red", "label": "infeasible (F1 below floor)"})):
        pts = [r for r in done if bool(r["feasible"]) == feas]
        if pts:
            ax.scatter([pc(r["val_emo_f1"]) for r in pts], [pc(r["val_leakage"]) for r in pts], s=36, **style)
    front = sorted((r for r in done if r.get("pareto")), key=lambda r: r["val_emo_f1"])
    if front:
        ax.plot([pc(r["val_emo_f1"]) for r in front], [pc(r["val_leakage"]) for r in front], drawstyle="steps-pre",
                color="tab:gray", lw=1, ls="--", marker="o", ms=12, mfc="none", label="Pareto front")
    ax.axvline(pc(floor), color="tab:orange", lw=1, label=f"F1 floor {pc(floor):.1f} %")
    if best is not None:
        ax.scatter([pc(best["val_emo_f1"])], [pc(best["val_leakage"])], marker="*", s=260, facecolor="none",
                   edgecolor="black", lw=1.5, label=f"chosen {best['trial_id']}", zorder=5)
    if "val_leakage" in baseline:
        ax.scatter([pc(baseline["val_emo_f1"])], [pc(baseline["val_leakage"])], marker="D", color="tab:green", s=40,
                   label="MTL baseline")
    ax.set_xlabel("validation emotion macro-F1, % (higher is better)")
    ax.set_ylabel("validation leakage, % (probes; lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
