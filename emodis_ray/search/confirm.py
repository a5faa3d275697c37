"""End-to-end runs over several seeds: the MTL baseline and the floors it sets, and stage 2, which trains
the top k configurations of stage 1 end to end and chooses by the mean over seeds (docs/design.md §8).

One trial measured once is one draw of training noise; a mean over seeds with its interval is a finding. The
runs live in ``OUT/confirm/runs/<arm>/seed<k>/``, the layout of `emodis study`, so
``emodis study --out OUT/confirm --arm mtl --arm <name>=OUT/best.yaml --seeds 5`` keeps the seeds trained here
and adds the rest. Each run is resumable: a finished run is not trained again, a measured one not probed again.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from emodis_ray.config import Config, replace
from emodis_ray.search.select import floor_from_baseline, mean_interval, run_f1, smoothed_f1
from emodis_ray.search.space import Space

CONFIRM_DIR = "confirm"
VAL_FILE = "val.json"  # a confirm run's validation figures
FIGURES = ("val_emo_f1", "val_spk_acc", "val_leakage", "leak_emo_from_spk", "leak_spk_from_emo")
Say = Callable[..., None]


def confirm_dir(out: Path, arm: str, seed: int) -> Path:
    return out / CONFIRM_DIR / "runs" / arm / f"seed{seed}"


def seeds_of(cfg: Config, n: int) -> list[int]:
    """``n`` distinct training seeds from the config's."""
    return [cfg.train.seed + i for i in range(n)]


def measure_seed(manifest: Path, run: Path, cfg: Config, f1_epochs: int, probe_seed: int,
                 runs_at_once: int = 1) -> dict[str, float]:
    """Train ``cfg`` end to end into ``run`` (or keep a finished run) and measure it on validation: emotion F1
    and identity accuracy (each the mean of the last ``f1_epochs`` epochs) and the probe leakage of the exported
    model above its identity-only floor. Cached in ``run/val.json``. ``runs_at_once``: runs sharing the cluster."""
    from emodis_ray.search.trial import probe_val_leakage
    from emodis_ray.train.fit import fit

    f = run / VAL_FILE
    if f.exists():
        return dict(json.loads(f.read_text()))
    t0 = time.perf_counter()
    res = fit(manifest, run, cfg, progress=False, runs_at_once=runs_at_once)
    probe = probe_val_leakage(run, cfg, manifest, probe_seed)
    rows = res.metrics
    figures = {**probe, "val_emo_f1": run_f1(rows, f1_epochs),
               "val_spk_acc": smoothed_f1([r.get("val_spk_acc", math.nan) for r in rows], f1_epochs),
               "seed": float(cfg.train.seed), "run_s": time.perf_counter() - t0}
    tmp = run / (VAL_FILE + ".tmp")
    tmp.write_text(json.dumps(figures, indent=1))
    tmp.replace(f)
    return figures


Job = tuple[str, Config, int]  # (arm, config, training seed)


def run_arms(manifest: Path, out: Path, jobs: Sequence[Job], f1_epochs: int, probe_seed: int,
             say: Say) -> dict[str, list[dict[str, float]]]:
    """Every ``(arm, config, seed)`` job (see :func:`measure_seed`): as many at once as the cluster holds when they
    read a feature cache (``cached_runs_at_once``: two on two cores), else one after another.
    ``{arm: figures per seed, in job order}``."""
    from emodis_ray.runtime.session import run_at_once

    fresh = {(name, s): not (confirm_dir(out, name, s) / VAL_FILE).exists() for name, _, s in jobs}
    n = min(len(jobs), runs_at_once([cfg for _, cfg, _ in jobs]))
    if n > 1 and any(fresh.values()):
        say(f"      {sum(fresh.values())} run(s) to train, {n} at a time")

    def done(label: str, fig: dict[str, float]) -> None:
        name, s = label.rsplit("/", 1)
        say(f"      {name} seed {s}: val emotion F1 {100 * fig['val_emo_f1']:.1f} %, identity "
            f"{100 * fig['val_spk_acc']:.1f} %, leakage above the floor {100 * fig['val_leakage']:.1f} %"
            + (f" ({fig['run_s']:.0f} s)" if fresh[(name, int(s))] else " (kept)"))

    calls = [(f"{name}/{s}", (manifest, confirm_dir(out, name, s), replace(cfg, train={"seed": s}), f1_epochs,
                              probe_seed, n)) for name, cfg, s in jobs]
    per_arm: dict[str, list[dict[str, float]]] = {}
    for (name, _, _), fig in zip(jobs, run_at_once(measure_seed, calls, n, done), strict=True):
        per_arm.setdefault(name, []).append(fig)
    return per_arm


def runs_at_once(cfgs: Sequence[Config]) -> int:
    """How many end-to-end runs of these configs the cluster trains at once: ``cached_runs_at_once`` when every
    one reads a feature cache (an epoch over a cache starts no Ray Data task), else 1."""
    from emodis_ray.runtime.session import cached_runs_at_once, cluster_cpus, cluster_gpus

    if not cfgs or not all(c.data.cache_dir for c in cfgs):
        return 1
    return cached_runs_at_once(max(c.train.workers for c in cfgs), cluster_cpus(), cluster_gpus(),
                               cfgs[0].train.use_gpu)


def summarise(per_seed: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Means over seeds of each figure, with Student-t 95 % intervals (``<figure>_ci``) and the seeds."""
    out: dict[str, Any] = {"seeds": [int(r["seed"]) for r in per_seed], "n": len(per_seed)}
    for k in FIGURES:
        m, lo, hi = mean_interval([r.get(k, math.nan) for r in per_seed])
        out[k], out[f"{k}_ci"] = m, [lo, hi]
    return out


def mtl_config(cfg: Config) -> Config:
    return replace(cfg, method={"name": "mtl"})


def mtl_baseline(manifest: Path, out: Path, cfg: Config, seeds: Sequence[int], f1_epochs: int, probe_seed: int,
                 say: Say, planned: int | None = None) -> dict[str, Any]:
    """The MTL baseline (the base config, ``method.name=mtl``) at ``seeds``: its means set the floors; its first
    seed's trunk is the one the screen keeps fixed. ``planned``: the baseline's seeds in all, when the rest train
    later (beside stage 2: see `search`)."""
    n = planned or len(seeds)
    later = f"; {n - len(seeds)} more beside stage 2" if n > len(seeds) else ""
    say(f"MTL baseline, {len(seeds)} seed(s) end to end{later} (sets the emotion-F1 and identity floors) ...")
    per_seed = run_arms(manifest, out, [("mtl", mtl_config(cfg), s) for s in seeds], f1_epochs, probe_seed, say)
    return {**summarise(per_seed["mtl"]), "source": f"MTL baseline, {len(seeds)} seed(s)", "planned": n,
            "runs": [str(confirm_dir(out, "mtl", s)) for s in seeds]}


def stage2(manifest: Path, out: Path, candidates: Sequence[tuple[str, Config]], seeds: Sequence[int],
           f1_epochs: int, probe_seed: int, say: Say, beside: Sequence[Job] = ()) -> dict[str, dict[str, Any]]:
    """Stage 2: every candidate ``(name, config)`` end to end at every seed; ``{name: summarise(...)}``.
    ``beside``: other jobs trained in the same rounds (the baseline's last seeds), not summarised here."""
    for i, (name, cfg) in enumerate(candidates, 1):
        say(f"stage 2 [{i}/{len(candidates)}]: {name} ({cfg.method.name}) at seeds {', '.join(map(str, seeds))}")
    if beside:
        say(f"      with {len(beside)} baseline run(s) beside them: "
            + ", ".join(f"{name} seed {s}" for name, _, s in beside))
    jobs = [*beside, *((name, cfg, s) for name, cfg in candidates for s in seeds)]
    per_arm = run_arms(manifest, out, jobs, f1_epochs, probe_seed, say)
    return {name: summarise(per_arm[name]) for name, _ in candidates}


def baseline_f1(run: Path, f1_epochs: int = 1) -> float:
    """A training run's validation emotion F1 (``metrics.json``): its last epoch's, or the mean of its last
    ``f1_epochs`` epochs."""
    return run_f1(_run_metrics(run), f1_epochs)


def _run_metrics(run: Path) -> list[dict[str, Any]]:
    """A finished training run's per-epoch rows (``metrics.json``), each with ``val_emo_f1``."""
    f = run / "metrics.json"
    if not f.exists():
        raise FileNotFoundError(f"{run}: no metrics.json: is it a finished `emodis train` run?")
    rows = json.loads(f.read_text())
    if not rows or "val_emo_f1" not in rows[-1]:
        raise ValueError(f"{f}: no val_emo_f1 in its last epoch")
    return list(rows)


def resolve_floors(space: Space, manifest: Path, out: Path, cfg: Config, floor: float | None,
                   baseline: Path | None, seeds: int, probe_seed: int, say: Say,
                   first: int | None = None) -> dict[str, Any]:
    """``{"floor", "id_floor", "baseline"}``: the emotion-F1 and identity floors, each the MTL baseline's mean
    over ``seeds`` seeds minus the space's tolerance (over its ``first`` seeds only, when the rest train later:
    :func:`baseline_seeds_left`); from one ``baseline`` run when given; ``floor`` replaces the F1 floor and drops
    the identity floor. The baseline is trained whenever a trunk or a reference is needed."""
    info: dict[str, Any] = {"source": "given"}
    if baseline is not None:
        rows = _run_metrics(Path(baseline))
        info = {"source": f"baseline {baseline}", "val_emo_f1": run_f1(rows, space.f1_epochs),
                "runs": [str(Path(baseline).resolve())],
                "val_spk_acc": smoothed_f1([r.get("val_spk_acc", float("nan")) for r in rows], space.f1_epochs)}
    elif seeds > 0:
        info = mtl_baseline(manifest, out, cfg, seeds_of(cfg, seeds)[:first], space.f1_epochs, probe_seed, say,
                            planned=seeds)
    if floor is not None:
        return {"floor": float(floor), "id_floor": None, "baseline": {**info, "source": "given"}}
    if "val_emo_f1" not in info:
        raise ValueError("no floor: give --floor, --baseline RUN or --seeds >= 1 (an MTL baseline)")
    f1_floor = floor_from_baseline(info["val_emo_f1"], space.tolerance)
    id_floor = floor_from_baseline(info["val_spk_acc"], space.tolerance) if "val_spk_acc" in info else None
    return {"floor": f1_floor, "id_floor": id_floor, "baseline": info}


def baseline_seeds_left(state: dict[str, Any], cfg: Config) -> list[int]:
    """The MTL baseline's seeds still to train: those planned beyond the runs it has."""
    info = state.get("baseline", {})
    return seeds_of(cfg, int(info.get("planned", 0)))[len(info.get("runs", [])):]
