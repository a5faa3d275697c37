"""`emodis bench startup`: the fixed cost of one Ray Train run, with and without ``LOCAL_TRAIN_ENV``.

On a set so small that training takes a few seconds (6 people x 8 clips, 16 px faces, 2 s clips), a run is almost
all start-up and shut-down: Ray Train's controller, workers, dataset manager and split coordinators, each a new
process. Two settings of a local cluster alternate (A B A B ...), each rep on a fresh cluster:
  (A) ``LOCAL_TRAIN_ENV``, what ``ray_session`` gives a cluster it starts (0.5 s controller polls, no preemption
      watcher);
  (B) Ray Train 2.60's own defaults (2 s polls, a preemption watcher per run).
Per run: the ``fit`` call's seconds, the time to its first report (start-up and the first epoch) and the rest (the
last epoch and the run's shut-down, where the controller's polls are waited for). Each difference of the means,
(B) - (A), comes with a 95 % Welch interval: one whose interval spans zero is no detectable difference.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from emodis_ray.config import SynthConfig, load_config, replace

# Ray Train 2.60's own values of what LOCAL_TRAIN_ENV changes (ray/train/v2/_internal/constants.py)
RAY_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}
SYNTH = SynthConfig(people=6, clips_per_person=8, videos_per_person=4, size=64, clip_s_min=1.5, clip_s_max=2.5,
                    short_clip_fraction=0.0, heard_fraction=0.5, unheard_people=0, workers=1, seed=1)


@dataclass
class StartupBench:
    reps: int
    epochs: int
    workers: int
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # "local", "ray_defaults"
    diff: dict[str, dict[str, float]] = field(default_factory=dict)  # per figure: (B) - (A), mean and 95 % interval

    def format(self) -> str:
        lines = [f"start-up benchmark: {self.reps} runs per setting, alternating, each on a fresh local cluster; "
                 f"{self.workers} worker(s), {self.epochs} epochs of a 48-clip set", "",
                 f"{'setting':<26}{'fit s (each run)':<26}{'fit s':>7}{'first report s':>16}{'the rest s':>12}"]
        names = {"local": "(A) LOCAL_TRAIN_ENV", "ray_defaults": "(B) Ray Train defaults"}
        for k, name in names.items():
            rs = self.runs.get(k, [])
            each = ", ".join(f"{r['fit_s']:.1f}" for r in rs)
            lines.append(f"{name:<26}{each:<26}{_mean(rs, 'fit_s'):>7.1f}{_mean(rs, 'first_report_s'):>16.1f}"
                         f"{_mean(rs, 'rest_s'):>12.1f}")
        for key, d in self.diff.items():
            lines.append(("" if key != "fit_s" else "\n") + f"(B) - (A), {key}: {d['mean']:+.1f} [{d['low']:+.1f}, "
                         f"{d['high']:+.1f}] (95 % Welch)" + ("" if d["low"] > 0 or d["high"] < 0 else
                                                              ": no detectable difference"))
        return "\n".join(lines)


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment (a local cluster started inside inherits them), then the old ones."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def welch(b: list[float], a: list[float]) -> dict[str, float]:
    """mean(b) - mean(a) and its 95 % Welch t-interval (NaN bounds with fewer than two runs on a side)."""
    from scipy import stats

    mean = float(np.mean(b) - np.mean(a))
    if min(len(a), len(b)) < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan")}
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    return {"mean": mean, "low": float(ci.low), "high": float(ci.high)}


def bench_startup(reps: int = 3, epochs: int = 2, workers: int = 2, workdir: Path | None = None,
                  progress: bool = True) -> StartupBench:
    """Run (A) and (B) ``reps`` times each, alternating, on a 48-clip synthetic set written into ``workdir``."""
    from emodis_ray.data.ingest import preprocess
    from emodis_ray.data.manifest import write_manifest
    from emodis_ray.data.sources import emovox_manifest
    from emodis_ray.runtime.session import LOCAL_TRAIN_ENV, ray_session
    from emodis_ray.synth.generate import generate
    from emodis_ray.train.fit import fit

    say = print if progress else (lambda *a, **k: None)
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    work = Path(tmp.name if tmp else workdir)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    cfg = replace(load_config("tiny"), labels={"drop_percentile": 0.0}, features={"clip_s": 2.0, "face_size": 16},
                  model={"width": 0.125, "emo_dim": 32, "spk_dim": 16},
                  data={"batch_size": 8, "rows_per_shard": 64, "cache_dir": str(work / "cache")},
                  train={"workers": workers, "epochs": epochs, "seed": 7})
    res = StartupBench(reps=reps, epochs=epochs, workers=workers, runs={"local": [], "ray_defaults": []})
    settings = {"local": LOCAL_TRAIN_ENV, "ray_defaults": RAY_DEFAULTS}
    try:
        for rep in range(reps):
            for name, env in settings.items():
                with environ(env), ray_session(num_cpus=os.cpu_count() or 1, dashboard=False, log_to_driver=False):
                    manifest = work / "manifest.parquet"
                    if not manifest.exists():
                        say("writing a 48-clip synthetic set and its feature cache ...")
                        generate(work / "data", SYNTH, progress=False)
                        df, _ = emovox_manifest(work / "data/senet50-ferplus-logits.mat", work / "data/vox1_meta.csv",
                                                work / "data/videos", cfg.labels)
                        write_manifest(df, manifest)
                        preprocess(manifest, work / "cache", cfg, progress=False)
                    r = fit(manifest, work / f"{name}-{rep}", cfg, progress=False)
                res.runs[name].append({"fit_s": r.elapsed_s, "first_report_s": r.first_report_s,
                                       "rest_s": r.elapsed_s - r.first_report_s})
                say(f"  {name} run {rep + 1}/{reps}: fit {r.elapsed_s:.1f} s, first report {r.first_report_s:.1f} s")
    finally:
        if tmp is not None:
            tmp.cleanup()
    res.diff = {k: welch([r[k] for r in res.runs["ray_defaults"]], [r[k] for r in res.runs["local"]])
                for k in ("fit_s", "first_report_s", "rest_s")}
    return res


def write_json(res: StartupBench, path: Path) -> None:
    Path(path).write_text(json.dumps(asdict(res), indent=1))
