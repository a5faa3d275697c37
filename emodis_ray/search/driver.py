"""The search driver behind `emodis tune`: the floor, the Tuner (Optuna TPE + ASHA, or a grid), resume and
extend. What a search writes is :mod:`emodis_ray.search.outputs`.

Rounds: the first call runs the experiment ``search``; ``--resume`` restores an interrupted round with
``Tuner.restore`` (finished trials are not run again; the one that was running restarts and its Train run
resumes from its checkpoint), and, when more trials are asked for than the search holds, starts a new round
``search-2``, ... whose Optuna searcher loads the persisted study (``optuna.db``), so TPE knows every earlier
trial. Its sampler is seeded with ``seed + trials so far`` so a round does not replay the previous draws.

The search folder ``OUT``::

    search.json          what the search is (space, config, manifest, floor, rounds); checked on --resume
    optuna.db            the Optuna study (SQLite): every told trial; reloaded to extend a search
    confirm/runs/<arm>/seed<k>/  end-to-end runs: the MTL baseline (its floors) and stage 2; screen/: the trunk
    search/, search-2/   Ray Tune experiments (one per round; a round is resumed with Tuner.restore)
    runs/<trial id>/     each trial's run folder: trial.json (params, seed, manifest hash), config.yaml,
                         metrics, model.pt, result.json (validation probes) or error.txt
    trials.csv           every trial: params, val emotion F1, val leakage, feasible, status, error
    pareto.png           emotion F1 vs leakage; feasible/infeasible, the Pareto front and the chosen trial
    best.yaml            the chosen trial's full config (``emodis train --config OUT/best.yaml`` accepts it)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from ray import tune

from emodis_ray.config import Config, replace
from emodis_ray.search.confirm import (
    baseline_seeds_left,
    mtl_config,
    resolve_floors,
    run_arms,
    runs_at_once,
    seeds_of,
    stage2,
    summarise,
)
from emodis_ray.search.outputs import collect, fmt, trial_error, write_outputs
from emodis_ray.search.screen import TRUNK_FILE
from emodis_ray.search.select import asha_schedule, floor_from_baseline, top_k, trial_concurrency
from emodis_ray.search.space import Space
from emodis_ray.search.trial import TrialSetup, release_trial, run_trial, val_chances

STATE_FILE = "search.json"
TRIAL_MEMORY = 64 * 2**20  # the trial driver asks for memory, not CPUs: a 0-CPU request needs some resource
IDENTITY = ("space_digest", "config_hash", "manifest_hash", "multi_objective", "grid", "seed", "stage1")
Say = Callable[..., None]
Stage1 = Literal["screen", "train"]


@dataclass
class SearchResult:
    out: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    floor: float
    wall_s: float
    new_trials: int  # trials started by this call
    interrupted: bool = False
    baseline: dict[str, Any] = field(default_factory=dict)
    confirmed: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage 2: {trial id: means over seeds}
    id_floor: float | None = None


def search(space: Space, manifest: Path, out: Path, cfg: Config, trials: int, *, multi_objective: bool = False,
           resume: bool = False, floor: float | None = None, baseline: Path | None = None, seed: int = 0,
           grid: int | None = None, max_concurrent: int | None = None, progress: bool = True,
           callbacks: Sequence[Any] = (), stage1: Stage1 = "screen", top: int = 3, seeds: int = 3,
           asha: bool | None = None) -> SearchResult:
    """Run (or resume, or extend to ``trials`` trials) a search on ``manifest`` into ``out`` (see the module
    docstring): the floors from an MTL baseline over ``seeds`` seeds (or ``floor`` / a ``baseline`` run); stage 1
    screens ``trials`` configurations (``stage1``: on the baseline's frozen trunk, or end-to-end Train runs) with
    Optuna TPE (or a ``grid`` of that many values per parameter); stage 2 trains the ``top`` best end to end at
    ``seeds`` seeds and chooses by the mean (``top=0``: stage 1's best is chosen). ``asha``: early stopping in
    stage 1 (default: on for end-to-end trials, off for the screen; see `emodis bench tune`)."""
    manifest, out = Path(manifest), Path(out)
    from emodis_ray.data.manifest import manifest_hash, read_manifest
    from emodis_ray.runtime.session import cluster_cpus, cluster_gpus, ray_session

    if stage1 == "screen" and seeds < 1 and baseline is None:
        raise ValueError("the screen needs a trained MTL trunk: --seeds >= 1 or --baseline RUN")
    say: Say = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = manifest.resolve()
    logging.getLogger("optuna").setLevel(logging.WARNING)
    with ray_session():
        cfg = ensure_cache(manifest, out, cfg, say)
        base = space.config(cfg)
        mh = manifest_hash(read_manifest(manifest))
        state = _load_state(out, resume, {
            "space": str(space.path), "space_digest": space.digest(), "config_hash": base.hash(), "manifest_hash": mh,
            "multi_objective": multi_objective, "grid": grid, "seed": seed, "stage1": stage1})
        if state.get("floor") is None:
            # With the screen and a stage 2, the baseline trains one full round of seeds now (the screen needs
            # only the first seed's trunk) and its last seeds beside stage 2's runs, in the same rounds.
            later = stage1 == "screen" and top > 0 and floor is None and baseline is None
            first = min(seeds, runs_at_once([base])) if later else seeds
            state.update(resolve_floors(space, manifest, out, base, floor, baseline, seeds, seed, say, first))
            _save_state(out, state)
        rest = baseline_seeds_left(state, base)
        say(f"floors: emotion F1 {100 * state['floor']:.1f} %, identity {_pc(state.get('id_floor'))} "
            f"({state['baseline'].get('source', 'given')}" + (f"; final once seed(s) {', '.join(map(str, rest))} "
                                                              "train beside stage 2)" if rest else ")"))
        if stage1 == "screen":
            trainable, concurrency = _screen_trainable(space, manifest, out, base, state, seed, max_concurrent, say)
            _save_state(out, state)
        else:
            setup = TrialSetup(manifest=str(manifest), manifest_hash=mh, runs_dir=str(out / "runs"),
                               cfg=base.to_dict(), floor=float(state["floor"]), val_chances=val_chances(manifest),
                               probe_seed=seed, f1_epochs=space.f1_epochs, id_floor=state.get("id_floor"))
            trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                            {"CPU": 0, "memory": TRIAL_MEMORY})
            concurrency = max_concurrent or trial_concurrency(base, cluster_cpus(), cluster_gpus())
        rounds: list[dict[str, Any]] = state["rounds"]
        before = {r["trial_id"] for r in collect(out, rounds, space)}
        interrupted = False

        # 1. An interrupted round first: Tuner.restore runs only what had not finished.
        if rounds and not tune.Tuner.can_restore(str(out / rounds[-1]["name"])):
            rounds.pop()  # interrupted before Tune wrote its state: start that round again
        if rounds and _unfinished(out / rounds[-1]["name"], rounds[-1]["num_samples"]):
            say(f"resuming round {rounds[-1]['name']} ...")
            tuner = tune.Tuner.restore(str(out / rounds[-1]["name"]), trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
            tuner.fit()
            interrupted = _unfinished(out / rounds[-1]["name"], rounds[-1]["num_samples"])

        # 2. A new round for the trials still wanted.
        done = len(collect(out, rounds, space))
        grid_points = _grid(space, grid) if grid else None
        wanted = (len(grid_points) if grid_points is not None else trials) - done
        if wanted > 0 and not interrupted and not (grid_points is not None and rounds):
            name = "search" if not rounds else f"search-{len(rounds) + 1}"
            wants = (stage1 == "train" and grid_points is None) if asha is None else asha
            sched = asha_schedule(base.train.epochs) if wants and not multi_objective else None
            stopping = ("ASHA on the online leakage estimate" if sched is not None
                        else "no early stopping (multi-objective: ASHA ranks by one metric only)"
                        if wants and multi_objective
                        else "no early stopping (fewer than 3 epochs)" if wants else "no early stopping")
            say(f"stage 1, round {name}: {wanted} {'screen' if stage1 == 'screen' else 'end-to-end'} trial(s), "
                f"{concurrency} at a time, {stopping}")
            tuner = _tuner(trainable, space, out, name, sched, wanted, done, seed, multi_objective, grid_points,
                           concurrency, first=not rounds, callbacks=[_Progress(progress, out / "runs"), *callbacks])
            rounds.append({"name": name, "num_samples": wanted})  # the Tuner has written its state: restorable
            _save_state(out, state)
            tuner.fit()
            interrupted = _unfinished(out / name, wanted)

        # 3. Stage 2: the top k end to end over several seeds, chosen by the mean.
        rows = collect(out, rounds, space)
        confirmed: dict[str, dict[str, Any]] = {}
        if top > 0 and not interrupted and seeds > 0:
            picks = top_k(rows, top, list(space.params))
            beside = [("mtl", mtl_config(base), s) for s in rest]
            if picks:
                confirmed = stage2(manifest, out, [(str(r["trial_id"]), _trial_config(r)) for r in picks],
                                   seeds_of(base, seeds), space.f1_epochs, seed, say, beside=beside)
            elif beside:
                run_arms(manifest, out, beside, space.f1_epochs, seed, say)
            if rest:  # every baseline seed is trained now: the final floors (kept runs, nothing trains)
                state.update(resolve_floors(space, manifest, out, base, None, None, seeds, seed, say))
                _save_state(out, state)
                say(f"floors over all {seeds} baseline seeds: emotion F1 {100 * state['floor']:.1f} %, "
                    f"identity {_pc(state.get('id_floor'))}")

    best = write_outputs(out, rows, space, state, multi_objective, confirmed, top > 0 and seeds > 0)
    res = SearchResult(out=out, rows=rows, best=dict(best) if best else None, floor=float(state["floor"]),
                       wall_s=time.perf_counter() - t0, new_trials=len({r["trial_id"] for r in rows} - before),
                       interrupted=interrupted, baseline=state.get("baseline", {}), confirmed=confirmed,
                       id_floor=state.get("id_floor"))
    say(summary(res))
    return res


def _pc(v: float | None) -> str:
    return "none" if v is None else f"{100 * v:.1f} %"


def _trial_config(row: dict[str, Any]) -> Config:
    from emodis_ray.config import load_config

    return load_config(Path(row["run"]) / "config.yaml")


# --- set-up: cache, state, floor ------------------------------------------------------------------------


def ensure_cache(manifest: Path, out: Path, cfg: Config, say: Say) -> Config:
    """Trials read the feature cache: ``data.cache_dir`` (made if missing), or ``OUT/cache``."""
    from emodis_ray.data.ingest import preprocess

    cache = Path(cfg.data.cache_dir or out / "cache").resolve()
    say(f"feature cache {cache} ...")
    preprocess(manifest, cache, cfg, progress=False)  # returns at once when the cache is complete
    return replace(cfg, data={"cache_dir": str(cache)})


def _load_state(out: Path, resume: bool, identity: dict[str, Any]) -> dict[str, Any]:
    path = out / STATE_FILE
    if not path.exists():
        return {**identity, "rounds": [], "floor": None, "baseline": {}}
    if not resume:
        raise ValueError(f"{out} holds a search already: pass --resume to continue or extend it, or another --out")
    state = json.loads(path.read_text())
    diff = [k for k in IDENTITY if state.get(k) != identity[k]]
    if diff:
        raise ValueError(f"{out}: cannot resume: {', '.join(diff)} differ from the search there "
                         f"(same space, config, manifest, mode and seed needed)")
    return state


def _save_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(out / STATE_FILE)


def _screen_trainable(space: Space, manifest: Path, out: Path, base: Config, state: dict[str, Any], seed: int,
                      max_concurrent: int | None, say: Say) -> tuple[Any, int]:
    """Stage 1 on the frozen trunk of the baseline's first run: its features (once), the screened MTL's floors
    (the same config screened at the baseline's seeds), and the trainable (one CPU per trial)."""
    from emodis_ray.runtime.session import cluster_cpus
    from emodis_ray.search.screen import ScreenSetup, screen_trial, screen_val, trunk_features, trunk_kwargs_of

    trunk_run = Path(state["baseline"]["runs"][0])
    feats = trunk_features(trunk_run, manifest, base, out / "screen")
    trunk = trunk_kwargs_of(trunk_run)
    if state.get("screen_floors") is None:
        n = max(1, int(state["baseline"].get("planned", state["baseline"].get("n", 1))))
        mtl = mtl_config(base)
        say(f"screened MTL on the frozen trunk of {trunk_run.name}, {n} seed(s) (the screen's floors) ...")
        per_seed = [{**screen_val(feats, replace(mtl, train={"seed": s}), trunk, seed), "seed": float(s)}
                    for s in seeds_of(base, n)]
        ref = summarise(per_seed)
        given = state["id_floor"] is None  # --floor: the F1 floor as given, shifted to the screen's level
        state["screen_floors"] = {
            "reference": ref,
            "floor": (state["floor"] - state["baseline"].get("val_emo_f1", state["floor"]) + ref["val_emo_f1"]
                      if given else floor_from_baseline(ref["val_emo_f1"], space.tolerance)),
            "id_floor": None if given else floor_from_baseline(ref["val_spk_acc"], space.tolerance)}
    sf = state["screen_floors"]
    say(f"screen floors: emotion F1 {100 * sf['floor']:.1f} %, identity {_pc(sf['id_floor'])} (screened MTL: "
        f"leakage above the floor {100 * sf['reference']['val_leakage']:.1f} %)")
    setup = ScreenSetup(features=str(out / "screen" / TRUNK_FILE), trunk_kwargs=trunk, runs_dir=str(out / "runs"),
                        cfg=base.to_dict(), floors=(float(sf["floor"]), sf["id_floor"]), probe_seed=seed)
    trainable = tune.with_resources(tune.with_parameters(screen_trial, setup=setup), {"CPU": 1})
    return trainable, max_concurrent or max(1, int(cluster_cpus()))


# --- the Tuner --------------------------------------------------------------------------------------------


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _grid(space: Space, n: int) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = [{}]
    for key, p in space.params.items():
        points = [{**pt, key: v} for pt in points for v in p.grid(n)]
    return points


def _tuner(trainable: Any, space: Space, out: Path, name: str, asha: tuple[int, int] | None, n: int, done: int,
           seed: int,
           multi_objective: bool, grid_points: list[dict[str, Any]] | None, concurrency: int, first: bool,
           callbacks: Sequence[Any]) -> tune.Tuner:
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from emodis_ray.runtime.session import verbose

    if not verbose():  # "A new study created in RDB": the search says what it does itself
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    run_config = tune.RunConfig(name=name, storage_path=str(out), failure_config=tune.FailureConfig(max_failures=0),
                                callbacks=list(callbacks), verbose=0)
    scheduler: Any = FIFOScheduler()  # ASHA ranks trials by one metric; two objectives have no single order
    if asha is not None:  # 3. ASHA on the online objective (aux-head leakage + F1 shortfall) reported every epoch
        scheduler = ASHAScheduler(time_attr="epochs_done", metric="online_objective", mode="min", max_t=asha[1],
                                  grace_period=asha[0], reduction_factor=2, stop_last_trials=False)
    if grid_points is not None:  # a grid: every point once, no model
        param_space = {k: tune.grid_search(list(dict.fromkeys(p[k] for p in grid_points))) for k in space.params}
        return tune.Tuner(trainable, param_space=param_space, run_config=run_config, tune_config=tune.TuneConfig(
            num_samples=1, max_concurrent_trials=concurrency, scheduler=scheduler, trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name))
    # 4. Optuna TPE, seeded; the study lives in OUT/optuna.db so a later round (or a restart) knows it.
    sampler = optuna.samplers.TPESampler(seed=seed + done, n_startup_trials=max(2, min(10, (done + n) // 3)))
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    metric, mode = (["emo_f1", "leakage"], ["max", "min"]) if multi_objective else ("objective", "min")
    # Tune wants every parameter in a start point: the ones a point leaves out take their range's middle.
    start = [{**{k: p.grid(1)[0] for k, p in space.params.items()}, **pt} for pt in space.start] if first else []
    searcher = OptunaSearch(space.optuna_space(), metric=metric, mode=mode, sampler=sampler, storage=storage,
                            study_name=space.study, points_to_evaluate=start or None)
    return tune.Tuner(trainable, run_config=run_config, tune_config=tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=n, max_concurrent_trials=concurrency,
        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name))


def _unfinished(path: Path, num_samples: int) -> bool:
    if not path.exists() or not tune.Tuner.can_restore(str(path)):
        return True
    trials = tune.ExperimentAnalysis(str(path)).trials
    return len(trials) < num_samples or any(t.status not in ("TERMINATED", "ERROR") for t in trials)


class _Progress(tune.Callback):
    """One line per trial event on the driver; releases what a stopped or failed trial's Train run left."""

    def __init__(self, progress: bool, runs: Path) -> None:
        self.progress, self.runs = progress, runs  # no function attribute: the Tuner pickles its callbacks

    def say(self, line: str) -> None:
        if self.progress:
            print(line, flush=True)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        params = ", ".join(f"{k.split('.')[-1]}={fmt(v)}" for k, v in trial.config.items())
        self.say(f"  trial {trial.trial_id} started: {params}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        released = release_trial(self.runs / trial.trial_id)  # an early-stopped trial's Train workers
        r = trial.last_result or {}
        if r.get("probed"):
            self.say(f"  trial {trial.trial_id} done: val emotion F1 {100 * r['val_emo_f1']:.1f} %, val leakage "
                     f"{100 * r['val_leakage']:.1f} %, {'feasible' if r['feasible'] else 'INFEASIBLE'} "
                     f"({r['trial_s']:.0f} s)")
        else:
            self.say(f"  trial {trial.trial_id} stopped early at epoch {int(r.get('epochs_done', 0))} "
                     f"(online objective {r.get('online_objective', float('nan')):.3f})"
                     + (f"; released {released} placement group(s)" if released else ""))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        release_trial(self.runs / trial.trial_id)
        self.say(f"  trial {trial.trial_id} FAILED: {trial_error(self.runs / trial.trial_id, trial)}")


def summary(res: SearchResult) -> str:
    counts = pd.Series([r["status"] for r in res.rows]).value_counts().to_dict() if res.rows else {}
    lines = [f"search {res.out}: {len(res.rows)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}), "
             f"{res.new_trials} new, {res.wall_s:.0f} s" + ("; INTERRUPTED: run again with --resume" if res.interrupted
                                                          else "")]
    base = res.baseline
    for name, a in res.confirmed.items():
        lines.append(f"stage 2 {name}: over seeds {a['seeds']}: {_mean_ci(a, 'val_leakage')} leakage above the floor, "
                     f"emotion F1 {_mean_ci(a, 'val_emo_f1')}, identity {_mean_ci(a, 'val_spk_acc')}")
    if res.confirmed and "val_leakage" in base:
        lines.append(f"MTL baseline over seeds {base.get('seeds')}: {_mean_ci(base, 'val_leakage')} leakage, "
                     f"emotion F1 {_mean_ci(base, 'val_emo_f1')}, identity {_mean_ci(base, 'val_spk_acc')}")
    if res.best:
        b = res.best
        how = "the lowest mean over seeds" if res.confirmed else "stage 1's lowest"
        lines.append(f"chosen ({how}): trial {b['trial_id']}: val leakage {100 * b['val_leakage']:.1f} %, "
                     f"val emotion F1 {100 * b['val_emo_f1']:.1f} % (floors: F1 {100 * res.floor:.1f} %, identity "
                     f"{_pc(res.id_floor)}) -> {res.out / 'best.yaml'}")
        if res.confirmed:
            lines.append(f"test figures beside MTL: emodis study --manifest M --cache C --out {res.out / 'confirm'} "
                         f"--arm mtl --arm {b['trial_id']}={res.out / 'best.yaml'} --seeds 5 (keeps the seeds above)")
    else:
        lines.append(f"no feasible configuration (emotion F1 >= {100 * res.floor:.1f} %, identity >= "
                     f"{_pc(res.id_floor)}): no best.yaml")
    lines.append(f"trials.csv, confirm.csv, pareto.png in {res.out}")
    return "\n".join(lines)


def _mean_ci(a: dict[str, Any], k: str) -> str:
    lo, hi = a.get(f"{k}_ci", [float("nan")] * 2)
    return f"{100 * a[k]:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"
