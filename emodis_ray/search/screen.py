"""The frozen-trunk screen: the trunks of one trained run stay fixed, their pooled outputs are computed once for
every clip, and per configuration only the embedding layers and the heads train (with the configuration's
method, loss weights, learning rates, adversary and speaker-embedding size). One screened configuration costs
seconds on one core where an end-to-end run costs minutes.

Two users: stage 1 of `emodis tune` (:func:`screen_trial`, a Tune trainable scored on the validation split) and
`emodis study --frozen-trunk` (:mod:`emodis_ray.workflows.screen`, scored on test). A screen is labelled so in
every output: the paper's protocol trains end to end, and a trunk trained without disentanglement may already
hold what a method would have kept out of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emodis_ray.config import Config, replace

TRUNK_FILE = "trunk_features.npz"
SPLITS = ("train", "val", "test")
Features = dict[str, dict[str, np.ndarray]]  # {split: {"h" [N, F], "emotion" [N], "speaker" [N], "clip_id" [N]}}


def trunk_features(trunk_run: Path, manifest: Path, cfg: Config, out: Path) -> Features:
    """The frozen trunks' pooled outputs of every clip, from the feature cache (or the stream), computed once
    (Ray Data batch inference) and kept in ``out/trunk_features.npz``."""
    path = out / TRUNK_FILE
    if not path.exists():
        from emodis_ray.core.checkpoint import MODEL_FILE
        from emodis_ray.data.cache import find_cache
        from emodis_ray.data.ingest import cache_rows, stream_rows
        from emodis_ray.data.manifest import read_manifest
        from emodis_ray.evaluation.infer import embed_rows
        from emodis_ray.runtime.session import pool_size

        df = read_manifest(manifest)
        rows = (cache_rows(find_cache(cfg.data.cache_dir, df, cfg.features), None)
                if cfg.data.cache_dir else stream_rows(df, None, cfg))
        cols = embed_rows(rows, trunk_run / MODEL_FILE, cfg.features, batch_size=cfg.data.batch_size,
                          actors=pool_size(), trunk=True)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (TRUNK_FILE + ".tmp.npz")
        np.savez_compressed(tmp, trunk=cols["trunk"], emotion=cols["emotion"], speaker=cols["speaker"],
                            split=cols["split"].astype(str), clip_id=cols["clip_id"].astype(str))
        tmp.replace(path)
    return load_features(path)


def load_features(path: Path) -> Features:
    z = np.load(path, allow_pickle=False)
    split = z["split"].astype(str)
    return {s: {"h": z["trunk"][split == s], "emotion": z["emotion"][split == s],
                "speaker": z["speaker"][split == s], "clip_id": z["clip_id"][split == s]} for s in SPLITS}


def trunk_kwargs_of(trunk_run: Path) -> dict[str, Any]:
    """The trunk's shape from a run's ``model.pt`` (what every screened configuration must share)."""
    import torch

    from emodis_ray.core.checkpoint import MODEL_FILE

    kw = torch.load(trunk_run / MODEL_FILE, map_location="cpu", weights_only=True)["model_kwargs"]
    return {k: kw[k] for k in ("width", "pooling", "in_channels") if k in kw}


def _batches(d: dict[str, np.ndarray], batch_size: int, order: np.ndarray) -> Iterator[dict[str, Any]]:
    """Batches of the loop's contract with the trunk features in the audio slot."""
    import torch

    for i in range(0, len(order), batch_size):
        sel = order[i:i + batch_size]
        b = len(sel)
        yield {"audio": torch.from_numpy(d["h"][sel]), "faces": torch.zeros(b, 1), "mask": torch.ones(b, 1),
               "emotion": torch.from_numpy(d["emotion"][sel].astype(np.int64)),
               "speaker": torch.from_numpy(d["speaker"][sel].astype(np.int64))}


def num_speakers(feats: Features) -> int:
    """Speakers over every split (the identity heads' width)."""
    return int(max(feats[s]["speaker"].max() for s in SPLITS if len(feats[s]["speaker"]))) + 1


@dataclass
class Screened:
    """One screened configuration: its per-epoch validation rows, the best epoch's validation emotion F1 and
    the embeddings and head predictions of every split from that epoch."""

    rows: list[dict[str, float]]
    best_val_emo_f1: float
    emb: Features  # {split: predict(..., embeddings=True) columns + clip_id}


def train_heads(feats: Features, cfg: Config, trunk_kwargs: dict[str, Any],
                on_epoch: Callable[[dict[str, float]], None] | None = None) -> Screened:
    """Train the embeddings and heads of ``cfg`` on fixed trunk features for ``cfg.train.epochs`` epochs (one
    thread, seed ``cfg.train.seed``), keep the epoch with the best validation emotion F1, and embed every split.
    ``on_epoch`` gets each epoch's validation row. No Ray."""
    import torch

    from emodis_ray.core.checkpoint import model_kwargs_of
    from emodis_ray.core.loop import metrics, predict, run_epoch, seed_everything
    from emodis_ray.core.methods import build_method, build_schedulers
    from emodis_ray.core.model import HeadsOnly, build_model

    seed, bs = cfg.train.seed, cfg.data.batch_size
    kwargs = {**model_kwargs_of(cfg, num_speakers(feats)), **trunk_kwargs}  # the trunk's shape, this config's heads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_everything(seed)
        model = HeadsOnly(build_model(**kwargs))
        method = build_method(**asdict(cfg.method))
        opt = method.optimizers(model, cfg.optim.lr, cfg.optim.aux_lr, cfg.optim.weight_decay)
        sched = build_schedulers(opt, cfg.optim.lr_decay)
        tr, va = feats["train"], feats["val"]
        best: tuple[float, dict[str, Any] | None] = (-np.inf, None)
        rows = []
        for epoch in range(cfg.train.epochs):
            order = np.random.default_rng([seed, epoch]).permutation(len(tr["h"]))
            ep = run_epoch(model, _batches(tr, bs, order), _batches(va, bs, np.arange(len(va["h"]))), method, opt,
                           sched, epoch, cfg.train.epochs, "cpu", contextlib.nullcontext(), 0)
            val = metrics(ep.pred, cfg.model.num_emotions)
            row = {"epoch": float(epoch + 1), **{f"val_{k}": v for k, v in val.items()}}
            rows.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if val["emo_f1"] > best[0] or best[1] is None:
                best = (val["emo_f1"], {k: t.clone() for k, t in model.state_dict().items()})
        model.load_state_dict(best[1])
        emb = {s: {**predict(model, _batches(feats[s], 256, np.arange(len(feats[s]["h"]))), "cpu", embeddings=True),
                   "clip_id": feats[s]["clip_id"]} for s in SPLITS}
    finally:
        torch.set_num_threads(threads)
    return Screened(rows=rows, best_val_emo_f1=float(best[0]), emb=emb)


def screen_val(feats: Features, cfg: Config, trunk_kwargs: dict[str, Any], probe_seed: int = 0,
               on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict[str, float]:
    """One configuration screened and measured on the validation split (never test): emotion F1 and identity
    accuracy of the best validation epoch, and the leakage probes (trained on train, early-stopped on held-out
    train rows, scored on val) above their identity-only floors; ``val_leakage`` is the direction(s) the
    method targets."""
    from emodis_ray.core.scores import accuracy
    from emodis_ray.evaluation.leakage import measure_leakage

    s = train_heads(feats, cfg, trunk_kwargs, on_epoch)
    leak = measure_leakage({k: s.emb[k] for k in ("train", "val")}, scored="val",
                           method_direction=cfg.method.direction,
                           seeds=range(probe_seed, probe_seed + cfg.evaluation.probe_seeds),
                           floor_kind=cfg.evaluation.floor, num_emotions=cfg.model.num_emotions,
                           num_speakers=num_speakers(feats), n_boot=0, holdout_fraction=cfg.evaluation.probe_holdout,
                           stop_on=cfg.evaluation.probe_stop)
    e, p = leak.directions["emo_from_spk"], leak.directions["spk_from_emo"]
    va = s.emb["val"]
    return {"val_emo_f1": s.best_val_emo_f1, "val_spk_acc": accuracy(va["speaker"], va["spk_pred"]),
            "val_leakage": leak.headline, "leak_emo_from_spk": e.above_floor, "leak_spk_from_emo": p.above_floor,
            "probe_emo_from_spk_f1": e.probe, "probe_spk_from_emo_acc": p.probe,
            "floor_emo_from_spk_f1": e.floor, "floor_spk_from_emo_acc": p.floor, "n_val": float(len(va["emotion"]))}


@dataclass(frozen=True)
class ScreenSetup:
    """What every screen trial shares (sent once through the object store by ``tune.with_parameters``)."""

    features: str  # the trunk features (.npz)
    trunk_kwargs: dict[str, Any]
    runs_dir: str
    cfg: dict[str, Any]  # the base config as Config.to_dict()
    floors: tuple[float, float]  # (emotion F1, identity accuracy) a feasible trial must reach
    probe_seed: int = 0

    def config(self, params: dict[str, Any]) -> Config:
        from emodis_ray.search.space import apply_params

        return apply_params(replace(Config(), **self.cfg), params)


def screen_trial(params: dict[str, Any], setup: ScreenSetup) -> None:
    """The stage-1 Tune trainable: screen this trial's config on the frozen trunk, report every epoch (for a
    scheduler) and then the validation verdict (what Optuna is told)."""
    import ray.tune

    from emodis_ray.search.select import PENALTY, is_feasible, objective_value
    from emodis_ray.search.trial import ERROR_FILE, RESULT_FILE, TRIAL_FILE

    t0 = time.time()
    trial_id = ray.tune.get_context().get_trial_id()  # 1. which trial: it names the run folder
    run = Path(setup.runs_dir) / trial_id
    run.mkdir(parents=True, exist_ok=True)
    try:
        cfg = setup.config(params)
        (run / TRIAL_FILE).write_text(json.dumps({"trial_id": trial_id, "params": params, "seed": cfg.train.seed,
                                                  "config_hash": cfg.hash(), "started": t0, "screen": True},
                                                 indent=1, default=str))
        cfg.save(run / "config.yaml")
        f1_floor, id_floor = setup.floors

        last = {"online_objective": 1.0}

        def report(row: dict[str, float]) -> None:  # 2. each epoch: the aux heads' figures, provisional
            aux = float(row.get("val_aux_emo_f1", math.nan))
            online = (aux if math.isfinite(aux) else 1.0) + max(0.0, f1_floor - row["val_emo_f1"])
            last["online_objective"] = online
            ray.tune.report({"epochs_done": row["epoch"], "emo_f1": row["val_emo_f1"], "online_objective": online,
                             "leakage": online, "objective": PENALTY + online, "probed": 0.0})

        res = screen_val(load_features(Path(setup.features)), cfg, setup.trunk_kwargs, setup.probe_seed, report)
        feasible = is_feasible(res["val_emo_f1"], res["val_leakage"], f1_floor, res["val_spk_acc"], id_floor)
        final = {**res, **last, "feasible": float(feasible), "objective": objective_value(res["val_leakage"], feasible),
                 "emo_f1": res["val_emo_f1"], "leakage": res["val_leakage"], "probed": 1.0,
                 "epochs_done": float(cfg.train.epochs), "floor": f1_floor, "id_floor": id_floor,
                 "trial_s": time.time() - t0}
        (run / RESULT_FILE).write_text(json.dumps(final, indent=1))
        ray.tune.report(final)  # 3. the verdict
    except Exception:
        (run / ERROR_FILE).write_text(traceback.format_exc())
        raise
