"""`emodis bench tune`: what Tune adds per trial, what a screened configuration costs beside an end-to-end one,
whether ASHA helps the screen, and how fast TPE finds what a grid finds.

On one feature cache and one config, in one run:
  (a) a bare ``TorchTrainer`` run (``train.fit``) of MTL: the timing reference, and the trunk the screen keeps;
  (b) the same config as one end-to-end Tune trial (the trial function of ``emodis tune --stage1 train``);
  (c) a grid over two parameters of a space, screened on (a)'s frozen trunk, every trial to the end (FIFO);
  (d) the same grid under ASHA (rung metric: the online objective, the aux head's leakage plus any F1 shortfall);
  (e) Optuna TPE over the same two parameters on the screen, ``trials`` trials.
Figures: (b)'s fit over (a)'s and Tune's gap per trial; the screen's seconds per configuration beside (b)'s;
ASHA's wall time beside FIFO's, the trials it stopped and whether it stopped any of FIFO's best three, with the
rank correlation of the rung metric at ASHA's grace epoch with the final objective; TPE's trials to come
within 10 % of the grid's best validation leakage above the floor (target: a third of the grid or fewer).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emodis_ray.config import Config, replace

WITHIN = 0.10  # "within 10 % of the grid's best"
TOP = 3  # ASHA must not cut FIFO's best three


@dataclass
class TuneBench:
    config: str
    cpus: int
    epochs: int
    params: list[str]
    grid_size: int
    tpe_trials: int
    floor: float = float("nan")
    bare: dict[str, float] = field(default_factory=dict)
    tuned: dict[str, float] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    asha: dict[str, Any] = field(default_factory=dict)
    tpe: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        nan = float("nan")
        b, t = {"fit_s": nan, "startup_s": nan, **self.bare}, {"fit_s": nan, "startup_s": nan, "probe_s": nan,
                                                              "trial_s": nan, "tune_gap_s": nan, **self.tuned}
        g = {"trials": 0, "wall_s": nan, "best_leakage": nan, "best_trial": None, "trial_s": nan, **self.grid}
        a = {"wall_s": nan, "stopped": 0, "cut_top": [], "rung_spearman": nan, "best_leakage": nan, **self.asha}
        p = {"trials": 0, "wall_s": nan, "target": nan, "leakage_by_trial": [], **self.tpe}
        reached = p.get("trials_to_target")
        lines = [
            f"tune benchmark: {self.config}; {self.cpus} CPUs; end-to-end trials {self.epochs} epochs",
            f"  space: {', '.join(self.params)}; grid {self.grid_size} points; TPE {self.tpe_trials} trials", "",
            f"{'':<38}{'fit s':>8}{'start-up s':>12}{'probes s':>10}",
            f"{'(a) bare TorchTrainer (train.fit)':<38}{b['fit_s']:>8.1f}{b['startup_s']:>12.1f}{'-':>10}",
            f"{'(b) same config as a Tune trial':<38}{t['fit_s']:>8.1f}{t['startup_s']:>12.1f}{t['probe_s']:>10.1f}",
            "",
            f"Tune+Train overhead per trial: fit {self.ratios.get('fit_ratio', nan):.2f}x the bare run "
            f"({t['fit_s'] - b['fit_s']:+.1f} s), Tune's own gap between trials {t['tune_gap_s']:.1f} s",
            f"cost per configuration: screen {g['trial_s']:.1f} s per trial ({g['wall_s'] / max(1, g['trials']):.1f} s "
            f"of wall per configuration, trials in parallel) vs end to end {t['trial_s']:.1f} s: "
            f"{self.ratios.get('screen_speedup', nan):.0f}x cheaper",
            f"(c) screen grid, FIFO: {g['trials']} trials in {g['wall_s']:.0f} s; best val leakage above the floor "
            f"{100 * g['best_leakage']:.1f} % (trial {g['best_trial']})",
            f"(d) screen grid, ASHA: {a['wall_s']:.0f} s ({self.ratios.get('asha_wall_ratio', nan):.2f}x FIFO), "
            f"{a['stopped']} stopped; of FIFO's best {TOP} it stopped {len(a['cut_top'])}; best found "
            f"{100 * a['best_leakage']:.1f} %; rung metric at epoch {a.get('grace')} vs final objective: Spearman "
            f"{a['rung_spearman']:.2f}",
            f"(e) TPE on the screen: {p['trials']} trials in {p['wall_s']:.0f} s; leakage per trial (%) "
            + ", ".join("-" if x is None else f"{100 * x:.1f}" for x in p["leakage_by_trial"]),
            f"trials to reach <= {100 * p['target']:.1f} % (grid best + {WITHIN:.0%}): "
            + (f"{reached} (target <= {self.grid_size // 3})" if reached else f"not within {p['trials']} trials"),
        ]
        return "\n".join(lines)


def _centre(space: Any) -> dict[str, Any]:
    """The one-point grid: each parameter's middle (geometric for log-uniform, the first value of a choice)."""
    return {k: p.grid(1)[0] for k, p in space.params.items()}


def trials_to_target(rows: list[dict[str, Any]], target: float) -> int | None:
    """1-based index of the first feasible completed trial whose leakage is at most ``target``."""
    for i, r in enumerate(rows, 1):
        if r["status"] == "completed" and r["feasible"] and float(r["val_leakage"]) <= target + 1e-12:
            return i
    return None


def cut_winners(fifo: list[dict[str, Any]], asha: list[dict[str, Any]], params: list[str], k: int = TOP) -> list[str]:
    """The parameter points among FIFO's best ``k`` (lowest validation leakage, feasible) that ASHA stopped."""
    key = lambda r: repr([r.get(p) for p in params])  # noqa: E731
    best = sorted((r for r in fifo if r["status"] == "completed" and r["feasible"]), key=lambda r: r["val_leakage"])[:k]
    stopped = {key(r) for r in asha if r["status"] == "stopped"}
    return [key(r) for r in best if key(r) in stopped]


def rung_spearman(out: Path, rows: list[dict[str, Any]], epoch: int) -> float:
    """Rank correlation, over the completed trials of a search, of the online objective reported at ``epoch``
    with the final objective (validation leakage above the floor): is the rung metric an early read of it?"""
    from ray import tune
    from scipy import stats

    by_id = {r["trial_id"]: r for r in rows if r["status"] == "completed"}
    early, final = [], []
    for df in tune.ExperimentAnalysis(str(out / "search")).trial_dataframes.values():
        if df.empty or "online_objective" not in df or df["trial_id"].iloc[0] not in by_id:
            continue
        at = df[(df["epochs_done"] == epoch) & (df["probed"] == 0)]
        if len(at):
            early.append(float(at["online_objective"].iloc[0]))
            final.append(float(by_id[df["trial_id"].iloc[0]]["val_leakage"]))
    return float(stats.spearmanr(early, final).statistic) if len(early) > 2 else float("nan")


def bench_tune(space_path: Path, params: list[str], cfg: Config, grid_values: int = 5, tpe_trials: int = 8,
               epochs: int = 3, manifest: Path | None = None, workdir: Path | None = None, seed: int = 0,
               progress: bool = True) -> TuneBench:
    from emodis_ray.bench.train import synthetic_manifest
    from emodis_ray.data.ingest import preprocess
    from emodis_ray.runtime.session import ray_session
    from emodis_ray.search.driver import search
    from emodis_ray.search.select import asha_schedule
    from emodis_ray.search.space import load_space
    from emodis_ray.train.fit import fit

    say = print if progress else (lambda *a, **k: None)
    space = load_space(space_path, cfg).restrict(params)
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    work = Path(tmp.name if tmp else workdir).resolve()  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    try:
        # the dashboard serves the State API that Ray Train's cleaner needs to let go of ASHA-stopped trials
        with ray_session(num_cpus=cpus, dashboard=True, log_to_driver=False):
            if manifest is None:
                manifest = synthetic_manifest(work, cfg, say, progress)
            cache = Path(cfg.data.cache_dir or work / "cache").resolve()
            say("feature cache ...")
            preprocess(manifest, cache, cfg, progress=False)
            cfg = replace(cfg, data={"cache_dir": str(cache)})
            e2e = replace(cfg, train={"epochs": epochs})
            mtl_space = dataclasses.replace(space, base={**space.base, "method.name": "mtl"})
            centre = _centre(mtl_space)
            what = (f"{space.study} space, {cfg.model.width} width, {cfg.features.face_size} px faces, "
                    f"{cfg.train.workers} worker(s), screen {cfg.train.epochs} epochs")
            res = TuneBench(config=what, cpus=cpus, epochs=epochs, params=list(params),
                            grid_size=grid_values ** len(params), tpe_trials=tpe_trials)

            say(f"(a) bare TorchTrainer run of MTL at {centre} ...")
            t0 = time.perf_counter()
            bare = fit(manifest, work / "bare", mtl_space.config(e2e, centre), progress=False)
            bare_s = time.perf_counter() - t0
            steady = _steady_epoch(bare.metrics)
            res.bare = {"fit_s": bare_s, "first_report_s": bare.first_report_s,
                        "startup_s": bare.first_report_s - steady, "epoch_s": steady}

            say("(b) the same config as one end-to-end Tune trial ...")
            one = search(mtl_space, manifest, work / "trial", e2e, 1, grid=1, floor=0.0, seed=seed, progress=progress,
                         stage1="train", top=0, seeds=0)
            res.tuned = _trial_timing(Path(one.rows[0]["run"])) if one.rows else {}

            say(f"(c) screen grid, {res.grid_size} trials, every one to the end ...")
            common = {"baseline": work / "bare", "seed": seed, "progress": progress, "top": 0, "seeds": 0}
            grid = search(space, manifest, work / "grid", cfg, res.grid_size, grid=grid_values, **common)
            res.floor = grid.floor
            done = [r for r in grid.rows if r["status"] == "completed"]
            best = min((r for r in done if r["feasible"]), key=lambda r: r["val_leakage"], default=None)
            res.grid = {"trials": len(grid.rows), "wall_s": grid.wall_s,
                        "trial_s": sum(r["trial_s"] for r in done) / max(1, len(done)),
                        "best_leakage": best["val_leakage"] if best else float("nan"),
                        "best_trial": best["trial_id"] if best else None}
            res.tuned["tune_gap_s"] = _gap(done, cpus)

            say("(d) the same grid under ASHA ...")
            asha = search(space, manifest, work / "asha", cfg, res.grid_size, grid=grid_values, asha=True, **common)
            sched = asha_schedule(cfg.train.epochs)
            a_best = min((r for r in asha.rows if r["status"] == "completed" and r["feasible"]),
                         key=lambda r: r["val_leakage"], default=None)
            res.asha = {"wall_s": asha.wall_s, "stopped": sum(r["status"] == "stopped" for r in asha.rows),
                        "cut_top": cut_winners(grid.rows, asha.rows, list(space.params)),
                        "grace": sched[0] if sched else None,
                        "rung_spearman": rung_spearman(work / "grid", grid.rows, sched[0]) if sched else float("nan"),
                        "best_leakage": a_best["val_leakage"] if a_best else float("nan")}

            say(f"(e) TPE on the screen, {tpe_trials} trials ...")
            tpe = search(space, manifest, work / "tpe", cfg, tpe_trials, **common)
            target = res.grid["best_leakage"] * (1 + WITHIN)
            res.tpe = {"trials": len(tpe.rows), "wall_s": tpe.wall_s, "target": target,
                       "leakage_by_trial": [r["val_leakage"] if r["status"] == "completed" else None for r in tpe.rows],
                       "trials_to_target": trials_to_target(tpe.rows, target),
                       "best_leakage": tpe.best["val_leakage"] if tpe.best else float("nan")}
            res.ratios = {"fit_ratio": res.tuned.get("fit_s", float("nan")) / bare_s,
                          "screen_speedup": res.tuned.get("trial_s", float("nan")) / max(1e-9, res.grid["trial_s"]),
                          "asha_wall_ratio": asha.wall_s / max(1e-9, grid.wall_s),
                          "trials_to_target_over_grid": (res.tpe["trials_to_target"] or float("nan")) / res.grid_size}
    finally:
        if tmp is not None:
            tmp.cleanup()
    return res


def _steady_epoch(rows: list[dict[str, Any]]) -> float:
    walls = [r["wall_time"] for r in rows if "wall_time" in r]
    gaps = sorted(b - a for a, b in zip(walls[:-1], walls[1:], strict=True))
    return gaps[len(gaps) // 2] if gaps else 0.0


def _gap(rows: list[dict[str, Any]], concurrent: int = 1) -> float:
    """Tune's own share per trial: the search's span over the trials minus their summed time, per trial, with
    ``concurrent`` trials at a time."""
    if len(rows) < 2:
        return float("nan")
    span = max(r["started"] + r["trial_s"] for r in rows) - min(r["started"] for r in rows)
    return (span * concurrent - sum(r["trial_s"] for r in rows)) / len(rows)


def _trial_timing(run: Path) -> dict[str, float]:
    """A trial's fit time, start-up (to the first report, minus a steady epoch) and probe time."""
    res = json.loads((run / "result.json").read_text())
    rows = [json.loads(line) for line in (run / "reports.jsonl").read_text().splitlines() if line.strip()]
    return {"fit_s": res["fit_s"], "probe_s": res["probe_s"], "trial_s": res["trial_s"],
            "first_report_s": res["first_report_s"], "startup_s": res["first_report_s"] - _steady_epoch(rows)}


def write_json(res: TuneBench, path: Path) -> None:
    Path(path).write_text(json.dumps(asdict(res), indent=1, default=str))
