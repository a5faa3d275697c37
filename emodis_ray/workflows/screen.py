"""The frozen-trunk screen of `emodis study --frozen-trunk RUN`: the trunks of a trained run stay fixed, their
pooled outputs are computed once for every clip, and per arm and seed only the embedding layers and the heads
train (with the arm's method), so dozens of seeds fit in minutes on two cores.

It is a screen, labelled so in every output: the paper's protocol trains end to end, and a trunk trained
without disentanglement may already hold what a method would have kept out of it. Each screened run leaves
the files of an evaluated run (``evaluation.json``, ``predictions.parquet``, ``leakage_predictions.npz``), so
the study's statistics read it like any other.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from emodis_ray.config import Config

TRUNK_FILE = "trunk_features.npz"
SPLITS = ("train", "val", "test")


def trunk_features(trunk_run: Path, manifest: Path, cfg: Config, out: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {"h", "emotion", "speaker", "clip_id"}}``: the frozen trunks' pooled outputs of every clip, from
    the feature cache (or the stream), computed once and kept in ``out/trunk_features.npz``."""
    path = out / TRUNK_FILE
    if not path.exists():
        from emodis_ray.core.checkpoint import MODEL_FILE
        from emodis_ray.data.cache import find_cache
        from emodis_ray.data.ingest import cache_rows, stream_rows
        from emodis_ray.data.manifest import manifest_hash, read_manifest
        from emodis_ray.evaluation.infer import embed_rows
        from emodis_ray.runtime.session import pool_size

        df = read_manifest(manifest)
        rows = (cache_rows(find_cache(cfg.data.cache_dir, manifest_hash(df), cfg.features), None)
                if cfg.data.cache_dir else stream_rows(df, None, cfg))
        cols = embed_rows(rows, trunk_run / MODEL_FILE, cfg.features, batch_size=cfg.data.batch_size,
                          actors=pool_size(), trunk=True)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, trunk=cols["trunk"], emotion=cols["emotion"], speaker=cols["speaker"],
                            split=cols["split"].astype(str), clip_id=cols["clip_id"].astype(str))
    z = np.load(path, allow_pickle=False)
    split = z["split"].astype(str)
    return {s: {"h": z["trunk"][split == s], "emotion": z["emotion"][split == s],
                "speaker": z["speaker"][split == s], "clip_id": z["clip_id"][split == s]} for s in SPLITS}


def _batches(d: dict[str, np.ndarray], batch_size: int, order: np.ndarray) -> Iterator[dict[str, Any]]:
    """Batches of the loop's contract with the trunk features in the audio slot."""
    import torch

    for i in range(0, len(order), batch_size):
        sel = order[i:i + batch_size]
        b = len(sel)
        yield {"audio": torch.from_numpy(d["h"][sel]), "faces": torch.zeros(b, 1), "mask": torch.ones(b, 1),
               "emotion": torch.from_numpy(d["emotion"][sel].astype(np.int64)),
               "speaker": torch.from_numpy(d["speaker"][sel].astype(np.int64))}


def screen_run(feats: dict[str, dict[str, np.ndarray]], cfg: Config, trunk_kwargs: dict[str, Any], run: Path,
               n_boot: int = 1000) -> Path:
    """Train the embeddings and heads of one (arm, seed) on fixed trunk features, keep the best validation epoch,
    and evaluate it on test like `emodis evaluate` does. No Ray."""
    import torch

    from emodis_ray.core.checkpoint import model_kwargs_of
    from emodis_ray.core.loop import metrics, predict, run_epoch, seed_everything
    from emodis_ray.core.methods import build_method, build_schedulers
    from emodis_ray.core.model import HeadsOnly, build_model
    from emodis_ray.evaluation.leakage import measure_leakage, save_predictions
    from emodis_ray.evaluation.records import (
        EVALUATION_FILE,
        LEAKAGE_PREDICTIONS_FILE,
        PREDICTIONS_FILE,
        build_evaluation,
        write_predictions,
    )

    if (run / EVALUATION_FILE).exists() and (run / LEAKAGE_PREDICTIONS_FILE).exists():
        return run
    run.mkdir(parents=True, exist_ok=True)
    cfg.save(run / "config.yaml")
    seed, bs = cfg.train.seed, cfg.data.batch_size
    num_speakers = int(max(feats[s]["speaker"].max() for s in SPLITS)) + 1
    kwargs = {**model_kwargs_of(cfg, num_speakers), **trunk_kwargs}  # the trunk's shape, the arm's heads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_everything(seed)
        model = HeadsOnly(build_model(**kwargs))
        method = build_method(**asdict(cfg.method))
        opt = method.optimizers(model, cfg.optim.lr, cfg.optim.aux_lr, cfg.optim.weight_decay)
        sched = build_schedulers(opt, cfg.optim.lr_decay)
        tr, va = feats["train"], feats["val"]
        best, rows = (-np.inf, None), []
        for epoch in range(cfg.train.epochs):
            order = np.random.default_rng([seed, epoch]).permutation(len(tr["h"]))
            ep = run_epoch(model, _batches(tr, bs, order), _batches(va, bs, np.arange(len(va["h"]))), method, opt,
                           sched, epoch, cfg.train.epochs, "cpu", contextlib.nullcontext(), 0)
            val = metrics(ep.pred, cfg.model.num_emotions)
            rows.append({"epoch": epoch + 1, **{f"val_{k}": v for k, v in val.items()}})
            if val["emo_f1"] > best[0]:
                best = (val["emo_f1"], {k: t.clone() for k, t in model.state_dict().items()})
        model.load_state_dict(best[1])
        emb = {}
        for s in SPLITS:
            pred = predict(model, _batches(feats[s], 256, np.arange(len(feats[s]["h"]))), "cpu", embeddings=True)
            emb[s] = {**pred, "clip_id": feats[s]["clip_id"]}
    finally:
        torch.set_num_threads(threads)
    (run / "metrics.json").write_text(json.dumps(rows, indent=1))
    leak = measure_leakage({s: emb[s] for s in ("train", "test")}, scored="test", method_direction=cfg.method.direction,
                           seeds=range(cfg.evaluation.probe_seeds), floor_kind=cfg.evaluation.floor,
                           num_emotions=cfg.model.num_emotions, num_speakers=num_speakers, n_boot=n_boot,
                           holdout_fraction=cfg.evaluation.probe_holdout,
                           stop_on=cfg.evaluation.probe_stop)
    te = emb["test"]
    ev = build_evaluation(run=run.name, method=cfg.method.name, spk_dim=cfg.model.spk_dim, emotion=te["emotion"],
                          speaker=te["speaker"], emo_pred=te["emo_pred"], spk_pred=te["spk_pred"], leak=leak.to_dict(),
                          aux_emo_pred=te["aux_emo_pred"], aux_spk_pred=te["aux_spk_pred"], n_boot=n_boot,
                          extra={"screen": True, "best_val_emo_f1": best[0], "seed": seed})
    (run / EVALUATION_FILE).write_text(ev.to_json())
    write_predictions(run / PREDICTIONS_FILE, te, leak.directions["emo_from_spk"].probe_pred[0],
                      leak.directions["spk_from_emo"].probe_pred[0])
    save_predictions(leak, te, run / LEAKAGE_PREDICTIONS_FILE)
    return run


def trunk_kwargs_of(trunk_run: Path) -> dict[str, Any]:
    """The trunk's shape from a run's ``model.pt`` (what the screened arms must share)."""
    import torch

    from emodis_ray.core.checkpoint import MODEL_FILE

    kw = torch.load(trunk_run / MODEL_FILE, map_location="cpu", weights_only=True)["model_kwargs"]
    return {k: kw[k] for k in ("width", "pooling", "in_channels") if k in kw}


def screen_arms(trunk_run: Path, manifest: Path, out: Path, jobs: Sequence[tuple[str, Config, Path]],
                n_boot: int, say: Any) -> None:
    """Every job of the screen: ``(name, config with its seed, run folder)``."""
    feats = trunk_features(trunk_run, manifest, jobs[0][1], out)
    trunk = trunk_kwargs_of(trunk_run)
    counts = ", ".join(f"{len(feats[s]['h'])} {s}" for s in SPLITS)
    say(f"screen: trunk features of {counts} clips from {trunk_run}")
    for i, (name, cfg, run) in enumerate(jobs, 1):
        say(f"[{i}/{len(jobs)}] screen {name}, seed {cfg.train.seed}")
        screen_run(feats, cfg, trunk, run, n_boot)
