"""`emodis bench tune`: what Tune adds per trial, and how fast TPE finds what a grid finds.

On one feature cache and one config, in one run:
  (a) a bare ``TorchTrainer`` run (``train.fit``) of the grid's centre point;
  (b) a grid search (``values`` per parameter over two parameters of a space) under Tune, the same trial
      function as ``emodis tune`` (the centre point is one of its trials);
  (c) an Optuna TPE search (with ASHA) over the same two parameters, ``trials`` trials.
Overhead per trial: the centre trial's training (trial start to the end of ``fit``) over (a), its start-up
(trial start to the first report, minus one steady epoch) beside (a)'s, and Tune's own gap per trial (the
grid's wall time per trial minus the mean trial time). Search efficiency: how many TPE trials it takes to
reach a validation leakage within 10 % of the grid's best feasible one (target: a third of the grid's size).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emodis_ray.config import Config, replace

WITHIN = 0.10  # "within 10 % of the grid's best"


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
    tpe: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        nan = float("nan")
        b, t = {"fit_s": nan, "startup_s": nan, **self.bare}, {"fit_s": nan, "startup_s": nan, "probe_s": nan,
                                                              "tune_gap_s": nan, **self.tuned}
        g, p = self.grid, self.tpe
        reached = p.get("trials_to_target")
        lines = [
            f"tune benchmark: {self.config}; {self.cpus} CPUs, {self.epochs} epochs per trial",
            f"  space: {', '.join(self.params)}; grid {self.grid_size} points; TPE {self.tpe_trials} trials; "
            f"F1 floor {self.floor:.3f}", "",
            f"{'':<34}{'fit s':>8}{'start-up s':>12}{'probes s':>10}",
            f"{'(a) bare TorchTrainer (train.fit)':<34}{b['fit_s']:>8.1f}{b['startup_s']:>12.1f}{'-':>10}",
            f"{'(b) same config as a Tune trial':<34}{t['fit_s']:>8.1f}{t['startup_s']:>12.1f}{t['probe_s']:>10.1f}",
            "",
            f"Tune+Train overhead per trial: fit {self.ratios.get('fit_ratio', nan):.2f}x the bare run "
            f"({t['fit_s'] - b['fit_s']:+.1f} s), Tune's own gap between trials {t['tune_gap_s']:.1f} s",
            f"grid: {g['trials']} trials in {g['wall_s']:.0f} s; best feasible val leakage {g['best_leakage']:.4f} "
            f"(trial {g['best_trial']})",
            f"TPE:  {p['trials']} trials in {p['wall_s']:.0f} s ({p['stopped']} stopped by ASHA); leakage per trial "
            + ", ".join("-" if x is None else f"{x:.3f}" for x in p["leakage_by_trial"]),
            f"trials to reach <= {p['target']:.4f} (grid best + {WITHIN:.0%}): "
            + (f"{reached} (target <= {self.grid_size // 3})" if reached else f"not within {p['trials']} trials"),
        ]
        return "\n".join(lines)


def _centre(space: Any, n: int) -> dict[str, Any]:
    """The grid point in the middle of each parameter's ``n`` values."""
    return {k: (vals := p.grid(n))[len(vals) // 2] for k, p in space.params.items()}


def trials_to_target(rows: list[dict[str, Any]], target: float) -> int | None:
    """1-based index of the first feasible completed trial whose leakage is at most ``target``."""
    for i, r in enumerate(rows, 1):
        if r["status"] == "completed" and r["feasible"] and float(r["val_leakage"]) <= target + 1e-12:
            return i
    return None


def bench_tune(space_path: Path, params: list[str], cfg: Config, grid_values: int = 3, tpe_trials: int = 6,
               epochs: int = 3, manifest: Path | None = None, workdir: Path | None = None, floor: float | None = None,
               seed: int = 0, progress: bool = True) -> TuneBench:
    from emodis_ray.bench.train import synthetic_manifest
    from emodis_ray.data.ingest import preprocess
    from emodis_ray.runtime.session import ray_session
    from emodis_ray.search.driver import search
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
            cfg = replace(cfg, data={"cache_dir": str(cache)}, train={"epochs": epochs})
            centre = _centre(space, grid_values)
            what = (f"{space.study} space, {cfg.model.width} width, {cfg.features.face_size} px faces, "
                    f"{cfg.train.workers} worker(s)")
            res = TuneBench(config=what, cpus=cpus, epochs=epochs, params=list(params),
                            grid_size=grid_values ** len(params), tpe_trials=tpe_trials)

            say(f"(a) bare TorchTrainer run of the grid's centre {centre} ...")
            t0 = time.perf_counter()
            bare = fit(manifest, work / "bare", space.config(cfg, centre), progress=False)
            bare_s = time.perf_counter() - t0
            steady = _steady_epoch(bare.metrics)
            res.bare = {"fit_s": bare_s, "first_report_s": bare.first_report_s,
                        "startup_s": bare.first_report_s - steady, "epoch_s": steady}

            say(f"(b) grid search, {res.grid_size} trials ...")
            grid = search(space, manifest, work / "grid", cfg, res.grid_size, grid=grid_values, floor=floor,
                              seed=seed, progress=progress)
            res.floor = grid.floor
            done = [r for r in grid.rows if r["status"] == "completed"]
            match = [r for r in done if all(_close(r[k], v) for k, v in centre.items())]
            res.tuned = _trial_timing(Path(match[0]["run"])) if match else {}
            res.tuned["tune_gap_s"] = _gap(done)
            best = min((r for r in done if r["feasible"]), key=lambda r: r["val_leakage"], default=None)
            res.grid = {"trials": len(grid.rows), "wall_s": grid.wall_s,
                        "best_leakage": best["val_leakage"] if best else float("nan"),
                        "best_trial": best["trial_id"] if best else None}

            say(f"(c) TPE search, {tpe_trials} trials ...")
            tpe = search(space, manifest, work / "tpe", cfg, tpe_trials, floor=grid.floor, seed=seed,
                             progress=progress)
            target = res.grid["best_leakage"] * (1 + WITHIN)
            res.tpe = {"trials": len(tpe.rows), "wall_s": tpe.wall_s, "target": target,
                       "stopped": sum(r["status"] == "stopped" for r in tpe.rows),
                       "leakage_by_trial": [r["val_leakage"] if r["status"] == "completed" else None for r in tpe.rows],
                       "trials_to_target": trials_to_target(tpe.rows, target),
                       "best_leakage": tpe.best["val_leakage"] if tpe.best else float("nan")}
            res.ratios = {"fit_ratio": res.tuned.get("fit_s", float("nan")) / bare_s,
                          "trials_to_target_over_grid": (res.tpe["trials_to_target"] or float("nan")) / res.grid_size}
    finally:
        if tmp is not None:
            tmp.cleanup()
    return res


def _close(a: Any, b: Any) -> bool:
    if isinstance(b, float):
        return abs(float(a) - b) <= 1e-9 * max(1.0, abs(b))
    return bool(a == b)


def _steady_epoch(rows: list[dict[str, Any]]) -> float:
    walls = [r["wall_time"] for r in rows if "wall_time" in r]
    gaps = sorted(b - a for a, b in zip(walls[:-1], walls[1:], strict=True))
    return gaps[len(gaps) // 2] if gaps else 0.0


def _gap(rows: list[dict[str, Any]]) -> float:
    """Median time from one trial's end to the next one's start (one trial at a time): Tune's own share."""
    rows = sorted(rows, key=lambda r: r["started"])
    gaps = sorted(b["started"] - (a["started"] + a["trial_s"]) for a, b in zip(rows[:-1], rows[1:], strict=True))
    return gaps[len(gaps) // 2] if gaps else float("nan")


def _trial_timing(run: Path) -> dict[str, float]:
    """A trial's fit time, start-up (to the first report, minus a steady epoch) and probe time."""
    res = json.loads((run / "result.json").read_text())
    rows = [json.loads(line) for line in (run / "reports.jsonl").read_text().splitlines() if line.strip()]
    return {"fit_s": res["fit_s"], "probe_s": res["probe_s"], "trial_s": res["trial_s"],
            "first_report_s": res["first_report_s"], "startup_s": res["first_report_s"] - _steady_epoch(rows)}


def write_json(res: TuneBench, path: Path) -> None:
    Path(path).write_text(json.dumps(asdict(res), indent=1, default=str))
