"""The frozen-trunk screen of `emodis study --frozen-trunk RUN`: the trunks of a trained run stay fixed, their
pooled outputs are computed once for every clip, and per arm and seed only the embedding layers and the heads
train (with the arm's method), so dozens of seeds fit in minutes on two cores.

It is a screen, labelled so in every output: the paper's protocol trains end to end, and a trunk trained
without disentanglement may already hold what a method would have kept out of it. Each screened run leaves
the files of an evaluated run (``evaluation.json``, ``predictions.parquet``, ``leakage_predictions.npz``), so
the study's statistics read it like any other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emodis_ray.config import Config
from emodis_ray.search.screen import SPLITS, num_speakers, train_heads, trunk_features, trunk_kwargs_of

__all__ = ["screen_arms", "screen_run", "trunk_features"]


def screen_run(feats: dict[str, dict[str, np.ndarray]], cfg: Config, trunk_kwargs: dict[str, Any], run: Path,
               n_boot: int = 1000) -> Path:
    """Train the embeddings and heads of one (arm, seed) on fixed trunk features, keep the best validation epoch,
    and evaluate it on test like `emodis evaluate` does. No Ray."""
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
    seed = cfg.train.seed
    screened = train_heads(feats, cfg, trunk_kwargs)
    emb, rows = screened.emb, screened.rows
    (run / "metrics.json").write_text(json.dumps(rows, indent=1))
    leak = measure_leakage({s: emb[s] for s in ("train", "test")}, scored="test", method_direction=cfg.method.direction,
                           seeds=range(cfg.evaluation.probe_seeds), floor_kind=cfg.evaluation.floor,
                           num_emotions=cfg.model.num_emotions, num_speakers=num_speakers(feats), n_boot=n_boot,
                           holdout_fraction=cfg.evaluation.probe_holdout,
                           stop_on=cfg.evaluation.probe_stop)
    te = emb["test"]
    ev = build_evaluation(run=run.name, method=cfg.method.name, spk_dim=cfg.model.spk_dim, emotion=te["emotion"],
                          speaker=te["speaker"], emo_pred=te["emo_pred"], spk_pred=te["spk_pred"], leak=leak.to_dict(),
                          aux_emo_pred=te["aux_emo_pred"], aux_spk_pred=te["aux_spk_pred"], n_boot=n_boot,
                          extra={"screen": True, "best_val_emo_f1": screened.best_val_emo_f1, "seed": seed})
    (run / EVALUATION_FILE).write_text(ev.to_json())
    write_predictions(run / PREDICTIONS_FILE, te, leak.directions["emo_from_spk"].probe_pred[0],
                      leak.directions["spk_from_emo"].probe_pred[0])
    save_predictions(leak, te, run / LEAKAGE_PREDICTIONS_FILE)
    return run


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
