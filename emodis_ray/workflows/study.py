"""`emodis study`: several training seeds per arm, every run evaluated, the arms compared with intervals that
hold both the seeds' and the test set's noise (docs/design.md §7).

An arm is a method name (``mtl``, ``conf``, ...: the base config with that method) or ``NAME=FILE.yaml`` (a
config file, e.g. a search's ``best.yaml``; the study's data settings are kept). Runs live in
``OUT/runs/<arm>/seed<k>/`` and are resumable one by one: a finished run is not trained again, an evaluated
one not evaluated again, so an interrupted study picks up where it stopped. Runs go to the cluster as Ray
tasks, as many at once as the cluster holds: when the arms read a feature cache, one run per train worker's CPU (the
epochs start no Ray Data task; two at once on two cores took 0.53 of the time), else each run's train workers
plus one CPU for Ray Data.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emodis_ray.config import METHODS, Config, ConfigError, load_config, replace

RUNS_DIR = "runs"


@dataclass(frozen=True)
class Arm:
    name: str
    cfg: Config
    source: str  # the method name or the file it came from


def parse_arm(text: str, base: Config) -> Arm:
    """``"conf"`` -> the base config with ``method.name=conf``; ``"best=FILE.yaml"`` -> that file's config
    with the base's data section (cache, batch size)."""
    name, sep, source = text.partition("=")
    if not sep:
        if text not in METHODS:
            raise ConfigError(f"--arm {text!r}: not a method ({', '.join(METHODS)}) and not NAME=FILE.yaml")
        return Arm(name=text, cfg=replace(base, method={"name": text}), source=text)
    if not name or "/" in name:
        raise ConfigError(f"--arm {text!r}: the name before '=' must be a plain word")
    if source in METHODS:
        return Arm(name=name, cfg=replace(base, method={"name": source}), source=source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"--arm {text!r}: {source} is neither a method nor a config file")
    cfg = load_config(path)
    cfg = replace(cfg, data=base.to_dict()["data"], evaluation=base.to_dict()["evaluation"])
    return Arm(name=name, cfg=cfg, source=str(path))


def parse_arms(texts: Sequence[str], base: Config) -> list[Arm]:
    arms = [parse_arm(t, base) for t in texts]
    names = [a.name for a in arms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--arm: the names {', '.join(dupes)} are given twice")
    if not arms:
        raise ConfigError("a study needs at least one --arm")
    return arms


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / RUNS_DIR / arm / f"seed{seed}"


def train_and_evaluate(manifest: str, run: str, cfg: dict[str, Any], n_boot: int, progress: bool,
                       runs_at_once: int = 1) -> str:
    """One (arm, seed): train (or resume, or keep a finished run), then evaluate (unless done). Runs on the
    driver or as a Ray task (``runs_at_once`` runs sharing the cluster); returns the run folder."""
    from emodis_ray.evaluation.evaluate import evaluate_run
    from emodis_ray.evaluation.records import EVALUATION_FILE, LEAKAGE_PREDICTIONS_FILE
    from emodis_ray.train.fit import fit

    path = Path(run)
    fit(Path(manifest), path, replace(Config(), **cfg), progress=progress, runs_at_once=runs_at_once)
    if not ((path / EVALUATION_FILE).exists() and (path / LEAKAGE_PREDICTIONS_FILE).exists()):
        evaluate_run(path, Path(manifest), n_boot=n_boot, progress=progress)
    return run


def run_study(manifest: Path, out: Path, arms: Sequence[Arm], seeds: Sequence[int], n_boot: int = 1000,
              max_concurrent: int | None = None, address: str | None = None, progress: bool = True,
              frozen_trunk: Path | None = None) -> dict[str, Path]:
    """Train and evaluate every (arm, seed), then write ``OUT/study.json``, ``study.md`` and ``study.png``.
    ``frozen_trunk``: a trained run whose trunks stay fixed; only the embeddings and heads train (a screen,
    :mod:`emodis_ray.workflows.screen`)."""
    from emodis_ray.evaluation import study
    from emodis_ray.runtime.session import (
        cached_runs_at_once,
        cluster_cpus,
        cluster_gpus,
        max_concurrent_trials,
        ray_session,
        run_at_once,
    )

    say = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(a, s, run_dir(out, a.name, s)) for a in arms for s in seeds]
    with ray_session(address):
        if frozen_trunk is not None:
            from emodis_ray.workflows.screen import screen_arms

            say(f"study (frozen-trunk screen): {len(arms)} arms x {len(seeds)} seeds = {len(jobs)} runs -> {out}")
            screen_arms(Path(frozen_trunk), manifest, out,
                        [(a.name, replace(a.cfg, train={"seed": s}), run) for a, s, run in jobs], n_boot, say)
            jobs = []
        workers = max(a.cfg.train.workers for a in arms)
        use_gpu = any(a.cfg.train.use_gpu for a in arms)
        if max_concurrent:
            n = max_concurrent
        elif all(a.cfg.data.cache_dir for a in arms):  # epochs read a materialised cache: no data CPU idles
            n = cached_runs_at_once(workers, cluster_cpus(), cluster_gpus(), use_gpu)
        else:
            n = max_concurrent_trials(workers, cluster_cpus(), cluster_gpus(), use_gpu)
        n = max(1, min(n, len(jobs)))
        if jobs:
            say(f"study: {len(arms)} arms x {len(seeds)} seeds = {len(jobs)} runs, {n} at a time -> {out}")
        # 1. Each (arm, seed) trains and evaluates: one at a time here, or as zero-CPU Ray tasks whose train
        #    workers share the CPUs but one, kept for Ray Data (``fit(..., runs_at_once=n)``).
        if n == 1:
            for i, (arm, seed, run) in enumerate(jobs, 1):
                say(f"[{i}/{len(jobs)}] {arm.name}, seed {seed} -> {run}")
                train_and_evaluate(str(manifest), str(run), replace(arm.cfg, train={"seed": seed}).to_dict(), n_boot,
                                   progress)
        else:
            for i, (arm, seed, run) in enumerate(jobs, 1):
                say(f"[{i}/{len(jobs)}] {arm.name}, seed {seed} -> {run}")
            calls = [(f"{arm.name}/{seed}", (str(manifest), str(run), replace(arm.cfg, train={"seed": seed}).to_dict(),
                                             n_boot, False, n)) for arm, seed, run in jobs]
            run_at_once(train_and_evaluate, calls, n, lambda label, _: say(f"      done: {label}"))

    # 2. The figures: per arm and seed, per arm, each arm against the first.
    data = {a.name: [study.load_run(run_dir(out, a.name, s), s) for s in seeds] for a in arms}
    configs = {a.name: {"source": a.source, **{k: v for k, v in a.cfg.to_dict().items()
                                                if k in ("method", "model", "optim", "train", "evaluation")}}
               for a in arms}
    result = study.summarise(data, configs, n_boot=n_boot, screen=frozen_trunk is not None)
    paths = study.write(out, result)
    say(study.markdown(result))
    say(f"study finished in {time.perf_counter() - t0:.0f} s: {paths['md']}, {paths['json']}, {paths['png']}")
    return paths
