"""One search trial (the Tune-driver pattern of docs/design.md §9): a Tune function trainable that builds a
``TorchTrainer`` through ``train.fit`` with Tune's ``TuneReportCallback``, then scores the trained model with
the leakage probes on the validation split.

Every epoch's report reaches Tune with the online figures added (the aux heads' leakage, rescaled above
chance with the validation priors) so ASHA can stop a trial early; the trial's last report carries the
probe-based validation leakage and the feasibility verdict. The trainer's run is ``runs/<trial id>``, named
after the trial, so a trial that Tune re-runs after an interruption resumes from its Train checkpoint.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from emodis_ray.config import Config, replace
from emodis_ray.evaluation.stats import chance_levels, leakage
from emodis_ray.search.select import PENALTY, is_feasible, objective_value, run_f1, smoothed_f1
from emodis_ray.search.space import apply_params

TRIAL_FILE, RESULT_FILE, ERROR_FILE = "trial.json", "result.json", "error.txt"
PG_FILE = "placement_groups.txt"  # the Train run's placement groups, for release_trial()


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (sent once through the object store by ``tune.with_parameters``)."""

    manifest: str
    manifest_hash: str
    runs_dir: str
    cfg: dict[str, Any]  # the base config (preset, --set, the space's base) as Config.to_dict()
    floor: float
    val_chances: tuple[float, float]  # (emotion macro-F1, identity accuracy) of the majority class on val
    probe_seed: int = 0
    f1_epochs: int = 1  # a run's emotion F1: the mean of its last f1_epochs epochs
    id_floor: float | None = None  # identity accuracy a feasible trial must reach (None: no identity floor)

    def config(self, params: dict[str, Any]) -> Config:
        return apply_params(replace(Config(), **self.cfg), params)


def online_metrics(row: dict[str, Any], floor: float, chances: tuple[float, float],
                   f1: float | None = None) -> dict[str, float]:
    """Per-epoch figures for the scheduler and the searcher, from the aux heads (no probes yet). ``f1``: the
    emotion F1 to use (e.g. smoothed over recent epochs); default: this epoch's."""
    f1 = float(row.get("val_emo_f1", float("nan"))) if f1 is None else float(f1)
    aux_emo, aux_spk = float(row.get("val_aux_emo_f1", float("nan"))), float(row.get("val_aux_spk_acc", float("nan")))
    online = leakage(aux_emo, aux_spk, chances).score if math.isfinite(aux_emo) and math.isfinite(aux_spk) else 1.0
    f1_ok = f1 if math.isfinite(f1) else 0.0
    online_obj = online + max(0.0, floor - f1_ok)  # ASHA's metric: leakage, and how far F1 is below the floor
    return {"emo_f1": f1_ok, "online_leakage": online, "online_objective": online_obj,
            "leakage": online, "objective": PENALTY + online_obj, "probed": 0.0,
            "epochs_done": float(int(row.get("epoch", -1)) + 1)}


class _TuneReport(TuneReportCallback):
    """``TuneReportCallback`` with the online figures added to every epoch's report."""

    def __init__(self, floor: float, chances: tuple[float, float], f1_epochs: int = 1) -> None:
        super().__init__()
        self.floor, self.chances, self.f1_epochs = floor, chances, f1_epochs
        self.f1s: dict[int, float] = {}  # epoch -> val emotion F1 (a re-run epoch replaces its value)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.f1s[int(metrics[0].get("epoch", -1))] = float(metrics[0].get("val_emo_f1", float("nan")))
        f1 = smoothed_f1([self.f1s[e] for e in sorted(self.f1s)], self.f1_epochs)
        row = {**metrics[0], **online_metrics(metrics[0], self.floor, self.chances, f1)}
        super().after_report(run_context, [row, *metrics[1:]], checkpoint)


def _placement_group_recorder(path: Path) -> list[Any]:
    """A Ray Train callback that writes the worker group's placement group id to ``path`` (one per start).

    Why: when Tune stops a trial early (ASHA) it kills the trial's actor; the Train controller dies with it,
    but the workers' placement group belongs to the job and outlives them. Ray Train's own cleaner finds dead
    controllers through the State API, which needs the dashboard and exactly one Ray instance on the machine
    (two local clusters: it fails); without it the CPUs stay reserved and the next trial hangs. Local clusters
    that emodis starts have the dashboard, but a cluster may not, so the driver also removes the recorded
    groups when the trial ends (:func:`release_trial`). Uses a Train-internal callback
    type (passed through ``RunConfig.callbacks``); on another Ray version nothing is recorded."""
    try:
        from ray.train.v2._internal.execution.callback import WorkerGroupCallback
    except ImportError:
        return []

    class RecordPlacementGroup(WorkerGroupCallback):  # type: ignore[misc]
        def after_worker_group_start(self, worker_group: Any) -> None:
            try:
                pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
                with open(path, "a") as f:
                    f.write(pg.id.hex() + "\n")
            except Exception:  # noqa: BLE001 - bookkeeping must never fail a training run
                pass

    return [RecordPlacementGroup()]


def release_trial(run: Path) -> int:
    """Remove the placement groups a trial's Train run left behind (see :func:`_placement_group_recorder`);
    returns how many were still there. Safe on a finished run: Train removed them already."""
    f = run / PG_FILE
    if not f.exists():
        return 0
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    removed = 0
    for pg_id in dict.fromkeys(f.read_text().split()):
        pg = PlacementGroup(PlacementGroupID.from_hex(pg_id))
        if placement_group_table(pg).get("state", "REMOVED") != "REMOVED":
            remove_placement_group(pg)
            removed += 1
    return removed


def probe_val_leakage(run: Path, cfg: Config, manifest: Path, seed: int = 0) -> dict[str, float]:
    """The leakage measure of a trained run on validation (never test): embeddings of train and val from the
    frozen model; probes trained on train (early-stopped on held-out train rows) and scored on val beside the
    identity-only floors; ``val_leakage`` is the leakage above the floor of the directions the method targets."""
    from emodis_ray.data.cache import find_cache
    from emodis_ray.data.ingest import cache_rows
    from emodis_ray.data.manifest import read_manifest
    from emodis_ray.evaluation.infer import embed_rows
    from emodis_ray.evaluation.leakage import measure_leakage

    ctx = ray.data.DataContext.get_current()  # this trial's process: no progress bars in the search's log
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    df = read_manifest(manifest)
    rows = cache_rows(find_cache(cfg.data.cache_dir, df, cfg.features), ["train", "val"])
    cols = embed_rows(rows, run / "model.pt", cfg.features, batch_size=cfg.data.batch_size, actors=1,
                      use_gpu=cfg.train.use_gpu)
    keys = ("emo_emb", "spk_emb", "emotion", "speaker")
    emb = {s: {k: cols[k][cols["split"] == s] for k in keys} for s in ("train", "val")}
    leak = measure_leakage(emb, scored="val", method_direction=cfg.method.direction,
                           seeds=range(seed, seed + cfg.evaluation.probe_seeds), floor_kind=cfg.evaluation.floor,
                           num_speakers=int(df["speaker_idx"].max()) + 1, n_boot=0,
                           holdout_fraction=cfg.evaluation.probe_holdout,
                           stop_on=cfg.evaluation.probe_stop)
    e, s = leak.directions["emo_from_spk"], leak.directions["spk_from_emo"]
    return {"val_leakage": leak.headline, "probe_emo_from_spk_f1": e.probe, "probe_spk_from_emo_acc": s.probe,
            "leak_emo_from_spk": e.above_floor, "leak_spk_from_emo": s.above_floor,
            "floor_emo_from_spk_f1": e.floor, "floor_spk_from_emo_acc": s.floor,
            "chance_emo_f1": e.chance, "chance_spk_acc": s.chance, "n_val": float(len(emb["val"]["emotion"]))}


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune trainable: train this trial's config with Ray Train, probe it, report the final figures."""
    from emodis_ray.train.fit import fit

    t0 = time.time()
    trial_id = ray.tune.get_context().get_trial_id()  # 1. which trial: it names the run folder and Train run
    run = Path(setup.runs_dir) / trial_id
    run.mkdir(parents=True, exist_ok=True)
    record = {"trial_id": trial_id, "params": params, "manifest": setup.manifest, "manifest_hash": setup.manifest_hash,
              "started": t0}
    try:
        cfg = setup.config(params)
        record |= {"seed": cfg.train.seed, "config_hash": cfg.hash()}
        (run / TRIAL_FILE).write_text(json.dumps(record, indent=1, default=str))
        cfg.save(run / "config.yaml")
        # 2. Ray Train under Tune: every epoch's report goes on to Tune (ASHA may stop the trial here).
        res = fit(Path(setup.manifest), run, cfg, progress=False,
                  callbacks=[_TuneReport(setup.floor, setup.val_chances, setup.f1_epochs),
                             *_placement_group_recorder(run / PG_FILE)])
        t_fit = time.time()
        # 3. The probe-based validation leakage of the final model.
        probe = probe_val_leakage(run, cfg, Path(setup.manifest), setup.probe_seed)
        last = res.final
        f1 = run_f1(res.metrics, setup.f1_epochs)
        spk_acc = smoothed_f1([r.get("val_spk_acc", math.nan) for r in res.metrics], setup.f1_epochs)
        feasible = is_feasible(f1, probe["val_leakage"], setup.floor, spk_acc, setup.id_floor)
        final = {**online_metrics(last, setup.floor, setup.val_chances, f1), **probe,
                 "val_emo_f1": f1, "val_emo_f1_last": float(last.get("val_emo_f1", float("nan"))),
                 "emo_f1": f1 if math.isfinite(f1) else 0.0, "leakage": probe["val_leakage"],
                 "val_spk_acc": spk_acc, "id_floor": setup.id_floor,
                 "feasible": float(feasible), "objective": objective_value(probe["val_leakage"], feasible),
                 "probed": 1.0, "epochs_done": float(cfg.train.epochs), "floor": setup.floor,
                 "fit_s": t_fit - t0, "probe_s": time.time() - t_fit, "first_report_s": res.first_report_s,
                 "trial_s": time.time() - t0}
        (run / RESULT_FILE).write_text(json.dumps(final, indent=1))
        ray.tune.report(final)  # 4. the trial's verdict: what Optuna is told
    except Exception:
        (run / ERROR_FILE).write_text(traceback.format_exc())
        raise


def val_chances(manifest: Path) -> tuple[float, float]:
    """Chance levels of the validation split from the manifest (for the online leakage estimate)."""
    from emodis_ray.data.manifest import read_manifest

    df = read_manifest(manifest)
    val = df[df["split"] == "val"]
    return chance_levels(np.asarray(val["emotion_idx"]), np.asarray(val["speaker_idx"]))
