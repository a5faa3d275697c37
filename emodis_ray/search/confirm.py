"""End-to-end runs over several seeds: the MTL baseline that sets a search's floors, and stage 2, which trains
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
from emodis_ray.search.select import mean_interval, run_f1, smoothed_f1

CONFIRM_DIR = "confirm"
VAL_FILE = "val.json"  # a confirm run's validation figures
FIGURES = ("val_emo_f1", "val_spk_acc", "val_leakage", "leak_emo_from_spk", "leak_spk_from_emo")
Say = Callable[..., None]


def confirm_dir(out: Path, arm: str, seed: int) -> Path:
    return out / CONFIRM_DIR / "runs" / arm / f"seed{seed}"


def seeds_of(cfg: Config, n: int) -> list[int]:
    """``n`` distinct training seeds from the config's."""
    return [cfg.train.seed + i for i in range(n)]


def measure_seed(manifest: Path, run: Path, cfg: Config, f1_epochs: int, probe_seed: int) -> dict[str, float]:
    """Train ``cfg`` end to end into ``run`` (or keep a finished run) and measure it on validation: emotion F1
    and identity accuracy (each the mean of the last ``f1_epochs`` epochs) and the probe leakage of the exported
    model above its identity-only floor. Cached in ``run/val.json``."""
    from emodis_ray.search.trial import probe_val_leakage
    from emodis_ray.train.fit import fit

    f = run / VAL_FILE
    if f.exists():
        return dict(json.loads(f.read_text()))
    t0 = time.perf_counter()
    res = fit(manifest, run, cfg, progress=False)
    probe = probe_val_leakage(run, cfg, manifest, probe_seed)
    rows = res.metrics
    figures = {**probe, "val_emo_f1": run_f1(rows, f1_epochs),
               "val_spk_acc": smoothed_f1([r.get("val_spk_acc", math.nan) for r in rows], f1_epochs),
               "seed": float(cfg.train.seed), "run_s": time.perf_counter() - t0}
    tmp = run / (VAL_FILE + ".tmp")
    tmp.write_text(json.dumps(figures, indent=1))
    tmp.replace(f)
    return figures


def run_arm(manifest: Path, out: Path, name: str, cfg: Config, seeds: Sequence[int], f1_epochs: int,
            probe_seed: int, say: Say) -> list[dict[str, float]]:
    """Every seed of one arm (see :func:`measure_seed`), one after another."""
    per_seed = []
    for s in seeds:
        run = confirm_dir(out, name, s)
        fresh = not (run / VAL_FILE).exists()
        fig = measure_seed(manifest, run, replace(cfg, train={"seed": s}), f1_epochs, probe_seed)
        per_seed.append(fig)
        say(f"      {name} seed {s}: val emotion F1 {100 * fig['val_emo_f1']:.1f} %, identity "
            f"{100 * fig['val_spk_acc']:.1f} %, leakage above the floor {100 * fig['val_leakage']:.1f} %"
            + (f" ({fig['run_s']:.0f} s)" if fresh else " (kept)"))
    return per_seed


def summarise(per_seed: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Means over seeds of each figure, with Student-t 95 % intervals (``<figure>_ci``) and the seeds."""
    out: dict[str, Any] = {"seeds": [int(r["seed"]) for r in per_seed], "n": len(per_seed)}
    for k in FIGURES:
        m, lo, hi = mean_interval([r.get(k, math.nan) for r in per_seed])
        out[k], out[f"{k}_ci"] = m, [lo, hi]
    return out


def mtl_baseline(manifest: Path, out: Path, cfg: Config, n_seeds: int, f1_epochs: int, probe_seed: int,
                 say: Say) -> dict[str, Any]:
    """The MTL baseline (the base config, ``method.name=mtl``) over ``n_seeds`` seeds: its means set the floors;
    its first seed's trunk is the one the screen keeps fixed."""
    mtl = replace(cfg, method={"name": "mtl"})
    seeds = seeds_of(cfg, n_seeds)
    say(f"MTL baseline, {n_seeds} seed(s) end to end (sets the emotion-F1 and identity floors) ...")
    summary = summarise(run_arm(manifest, out, "mtl", mtl, seeds, f1_epochs, probe_seed, say))
    return {**summary, "source": f"MTL baseline, {n_seeds} seed(s)",
            "runs": [str(confirm_dir(out, "mtl", s)) for s in seeds]}


def stage2(manifest: Path, out: Path, candidates: Sequence[tuple[str, Config]], seeds: Sequence[int],
           f1_epochs: int, probe_seed: int, say: Say) -> dict[str, dict[str, Any]]:
    """Stage 2: every candidate ``(name, config)`` end to end at every seed; ``{name: summarise(...)}``."""
    arms = {}
    for i, (name, cfg) in enumerate(candidates, 1):
        say(f"stage 2 [{i}/{len(candidates)}]: {name} ({cfg.method.name}) at seeds {', '.join(map(str, seeds))} ...")
        arms[name] = summarise(run_arm(manifest, out, name, cfg, seeds, f1_epochs, probe_seed, say))
    return arms
