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
import yaml
from ray import tune

from emodis_ray.config import load_config, replace
from emodis_ray.search.select import choose_best, choose_confirmed, pareto_mask
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


def write_outputs(out: Path, rows: list[dict[str, Any]], space: Space, state: dict[str, Any], multi_objective: bool,
                  confirmed: dict[str, dict[str, Any]], two_stage: bool) -> dict[str, Any] | None:
    """trials.csv, confirm.csv (stage 2), pareto.png, best.yaml (when a configuration is feasible) and
    summary.json. With two stages the choice is stage 2's (the lowest mean over seeds among candidates whose
    means meet the floors); else stage 1's best trial."""
    floor, id_floor, baseline = float(state["floor"]), state.get("id_floor"), state.get("baseline", {})
    screen = state.get("screen_floors") or {}
    s1_floor, s1_id = float(screen.get("floor", floor)), screen.get("id_floor", id_floor) if screen else id_floor
    cols = ["order", "trial_id", "round", "status", *space.params, "val_emo_f1", "val_spk_acc", "val_leakage",
            "feasible", "pareto", "val_emo_f1_last", "objective", "probe_emo_from_spk_f1", "probe_spk_from_emo_acc",
            "online_leakage", "epochs_done", "trial_s", "seed", "run", "error"]
    pd.DataFrame(rows, columns=cols).to_csv(out / "trials.csv", index=False)
    best: dict[str, Any] | None
    if two_stage:
        name = choose_confirmed(confirmed, floor, -math.inf if id_floor is None else float(id_floor))
        by_id = {str(r["trial_id"]): r for r in rows}
        best = None if name is None else {
            **{f"stage1_{k}": by_id[name][k] for k in ("val_emo_f1", "val_spk_acc", "val_leakage")},
            **by_id[name], **{k: v for k, v in confirmed[name].items()}}
        table = [{"arm": "mtl", "role": "baseline", **_flat(baseline)}] + [
            {"arm": n, "role": "chosen" if n == name else "candidate", **_flat(a)} for n, a in confirmed.items()]
        pd.DataFrame(table).to_csv(out / "confirm.csv", index=False)
    else:
        chosen = choose_best(rows)
        best = dict(chosen) if chosen else None
    others = len(rows) - sum(r["status"] == "completed" for r in rows)
    reference = {**screen["reference"], "label": "MTL screened"} if screen else baseline
    plot_pareto(rows, s1_floor, best, reference, out / "pareto.png",
                title=f"{space.study}: {len(rows)} {'screened ' if screen else ''}trials"
                + (f" ({others} failed, stopped early or unfinished: not shown)" if others else ""),
                confirmed=confirmed, floors=(floor, id_floor), baseline_e2e=baseline)
    best_file = out / "best.yaml"
    if best is not None:
        cfg = load_config(Path(best["run"]) / "config.yaml")
        cfg = replace(cfg, data={"cache_dir": ""})  # a plain config: no path of the data it was found on
        how = (f"mean over {best.get('n')} seeds (stage 2)" if two_stage else "one trial (stage 1)")
        best_file.write_text(f"# emodis tune ({space.study}): trial {best['trial_id']}, {how}: val leakage above "
                             f"the floor {100 * best['val_leakage']:.1f} %, val emotion F1 "
                             f"{100 * best['val_emo_f1']:.1f} % (floor {100 * floor:.1f} %)\n"
                             + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    elif best_file.exists():
        best_file.unlink()
    summary = {"study": space.study, "floor": floor, "id_floor": id_floor, "screen_floors": screen or None,
               "baseline": baseline, "multi_objective": multi_objective, "trials": len(rows),
               "completed": sum(r["status"] == "completed" for r in rows),
               "feasible": sum(bool(r["feasible"]) for r in rows), "confirmed": confirmed, "best": best,
               "stage1_floors": {"floor": s1_floor, "id_floor": s1_id}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return best


def _flat(a: dict[str, Any]) -> dict[str, Any]:
    """One confirm.csv row: each figure's mean and interval, the seeds."""
    row: dict[str, Any] = {"seeds": " ".join(map(str, a.get("seeds", [])))}
    for k in ("val_leakage", "val_emo_f1", "val_spk_acc", "leak_spk_from_emo"):
        if k in a:
            row[k], (row[f"{k}_low"], row[f"{k}_high"]) = a[k], a.get(f"{k}_ci", [math.nan, math.nan])
    return row


CANDIDATE_COLOURS = ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown")  # green is MTL's


def plot_pareto(rows: list[dict[str, Any]], floor: float, best: dict[str, Any] | None, baseline: dict[str, Any],
                path: Path, title: str = "", confirmed: dict[str, dict[str, Any]] | None = None,
                floors: tuple[float, float | None] | None = None, baseline_e2e: dict[str, Any] | None = None) -> None:
    """Left: stage 1, validation emotion F1 vs validation leakage: feasible (dots) and infeasible (crosses)
    trials, the Pareto front, the floor, the chosen trial and the MTL reference (``baseline``: screened, for a
    screen). Right (with stage 2): each candidate's and the end-to-end MTL baseline's (``baseline_e2e``) mean over
    seeds with 95 % intervals on both axes, and the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pc = lambda v: 100 * float(v)  # noqa: E731  (percent, as every figure of the project)
    done = [r for r in rows if r["status"] == "completed"]
    fig, axes = plt.subplots(1, 2 if confirmed else 1, figsize=(12, 4.8) if confirmed else (6.5, 4.5), squeeze=False)
    ax = axes[0][0]
    for feas, style in ((True, {"marker": "o", "color": "tab:blue", "label": "feasible"}),
                        (False, {"marker": "x", "color": "tab:red", "label": "infeasible (below a floor)"})):
        pts = [r for r in done if bool(r["feasible"]) == feas]
        if pts:
            ax.scatter([pc(r["val_emo_f1"]) for r in pts], [pc(r["val_leakage"]) for r in pts], s=36, **style)
    front = sorted((r for r in done if r.get("pareto")), key=lambda r: r["val_emo_f1"])
    if front:
        ax.plot([pc(r["val_emo_f1"]) for r in front], [pc(r["val_leakage"]) for r in front], drawstyle="steps-pre",
                color="tab:gray", lw=1, ls="--", marker="o", ms=12, mfc="none", label="Pareto front")
    ax.axvline(pc(floor), color="tab:orange", lw=1, label=f"F1 floor {pc(floor):.1f} %")
    if best is not None:
        x, y = best.get("stage1_val_emo_f1", best["val_emo_f1"]), best.get("stage1_val_leakage", best["val_leakage"])
        ax.scatter([pc(x)], [pc(y)], marker="*", s=260, facecolor="none", edgecolor="black", lw=1.5,
                   label=f"chosen {best['trial_id']}", zorder=5)
    if "val_leakage" in baseline:
        ax.scatter([pc(baseline["val_emo_f1"])], [pc(baseline["val_leakage"])], marker="D", color="tab:green", s=40,
                   label=str(baseline.get("label", "MTL baseline")) + (f", mean of {baseline['n']} seeds"
                                                                       if baseline.get("n", 1) > 1 else ""))
    ax.set_xlabel("validation emotion macro-F1, % (higher is better)")
    ax.set_ylabel("validation leakage above the floor, % (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if confirmed:
        ax2 = axes[0][1]
        base = baseline_e2e or {}
        arms = {"MTL baseline": base, **confirmed} if "val_leakage_ci" in base else dict(confirmed)
        for i, (name, a) in enumerate(arms.items()):
            (xl, xh), (yl, yh) = a["val_emo_f1_ci"], a["val_leakage_ci"]
            chosen = best is not None and name == best["trial_id"]
            ax2.errorbar([pc(a["val_emo_f1"])], [pc(a["val_leakage"])],
                         xerr=[[pc(a["val_emo_f1"] - xl)], [pc(xh - a["val_emo_f1"])]],
                         yerr=[[pc(a["val_leakage"] - yl)], [pc(yh - a["val_leakage"])]],
                         fmt="D" if name == "MTL baseline" else ("*" if chosen else "o"), ms=12 if chosen else 7,
                         color="tab:green" if name == "MTL baseline" else CANDIDATE_COLOURS[i % 5], capsize=3,
                         label=f"{name}{' (chosen)' if chosen else ''}, {a['n']} seeds")
        if floors is not None:
            ax2.axvline(pc(floors[0]), color="tab:orange", lw=1, label=f"F1 floor {pc(floors[0]):.1f} %")
        ax2.set_xlabel("validation emotion macro-F1, %, mean over seeds")
        ax2.set_ylabel("validation leakage above the floor, %, mean")
        ax2.set_title("stage 2: end to end, 95 % intervals over seeds", fontsize=9)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
