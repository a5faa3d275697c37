"""`emodis reproduce`: the paper's grid — methods × speaker-embedding sizes — trained, evaluated, reported.

Cells are run folders ``OUT/<method>-d<spk_dim>``. A cell that already has its ``evaluation.json`` is
not trained or evaluated again, and one with a finished ``model.pt`` is only evaluated, so an
interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from emodis_ray.config import METHODS, Config, replace

GRID_METHODS: tuple[str, ...] = METHODS  # every method, in report order
PAPER_SPK_DIMS: tuple[int, ...] = (2048, 256, 64)


def default_spk_dims(cfg: Config) -> tuple[int, ...]:
    """The paper's sizes (2048, 256, 64) scaled with the emotion embedding: (128, 16, 4) in ``tiny``."""
    scale = cfg.model.emo_dim / 2048
    return tuple(max(4, round(d * scale)) for d in PAPER_SPK_DIMS)


def cell_dir(out: Path, method: str, spk_dim: int) -> Path:
    return out / f"{method}-d{spk_dim}"


def reproduce(manifest: Path, out: Path, cfg: Config, methods: Sequence[str] = GRID_METHODS,
              spk_dims: Sequence[int] | None = None, address: str | None = None, progress: bool = True) -> Path:
    """Train and evaluate every cell, then write ``OUT/report.md`` (Table 1, Fig. 3a/3b, significance)."""
    from emodis_ray.evaluation.evaluate import evaluate_run
    from emodis_ray.evaluation.report import report_runs
    from emodis_ray.runtime.session import ray_session
    from emodis_ray.train.fit import fit

    dims = tuple(spk_dims) if spk_dims else default_spk_dims(cfg)
    cells = [(m, d) for d in dims for m in methods]
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    t0 = time.perf_counter()
    runs = []
    with ray_session(address):
        for i, (method, dim) in enumerate(cells, 1):
            run = cell_dir(out, method, dim)
            runs.append(run)
            head = f"[{i}/{len(cells)}] {method}, spk_dim {dim}"
            if (run / "evaluation.json").exists():
                print(f"{head}: done earlier, kept")
                continue
            cell_cfg = replace(cfg, method={"name": method}, model={"spk_dim": dim})
            if not (run / "model.pt").exists():
                print(f"{head}: training ...")
                fit(manifest, run, cell_cfg, progress=progress)
            print(f"{head}: evaluating ...")
            evaluate_run(run, manifest, progress=progress)
            print(f"      {time.perf_counter() - t0:.0f} s so far")
    report = report_runs(runs, out, title="The paper's grid: methods × speaker-embedding size")
    print(f"grid finished in {time.perf_counter() - t0:.0f} s; report: {report}")
    return report
