"""`emodis evaluate RUN`: headline figures, leakage probes and their uncertainty for one trained run.

1. Embeddings and predictions of every train/val/test clip from the frozen model (Ray Data batch
   inference, ``evaluation/infer.py``) — read from the feature cache when the run used one.
2. Leakage (``evaluation/leakage.py``): probes of emotion from the speaker embedding and identity from the
   emotion embedding, trained on train (early-stopped on held-out train rows) over ``evaluation.probe_seeds``
   seeds, scored on test beside the identity-only floors; leakage above the floor per direction.
3. Statistics (``evaluation/stats.py``, ``evaluation/records.py``): chance levels from the test priors, the
   leakage score, bootstrap intervals for every headline figure, the emotion confusion matrix.
Writes ``RUN/evaluation.json``, ``RUN/evaluation.md``, ``RUN/predictions.parquet`` (per test clip: truth,
each head's and each probe's prediction) and ``RUN/confusion.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from emodis_ray.config import Config
from emodis_ray.core.checkpoint import MODEL_FILE
from emodis_ray.data.labels import EMOTIONS, SPLITS
from emodis_ray.evaluation.records import (
    EVALUATION_FILE,
    LEAKAGE_PREDICTIONS_FILE,
    PREDICTIONS_FILE,
    Evaluation,
    build_evaluation,
    write_predictions,
)
from emodis_ray.train.run_dir import run_config, run_manifest


def embed_splits(run: Path, manifest: Path, cfg: Config, actors: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{split: columns of ``infer.embed_rows``} for train, val and test, in one pass of one actor pool."""
    from emodis_ray.data.cache import find_cache
    from emodis_ray.data.ingest import cache_rows, stream_rows
    from emodis_ray.data.manifest import read_manifest
    from emodis_ray.evaluation.infer import embed_rows
    from emodis_ray.runtime.session import pool_size

    df = read_manifest(manifest)
    if cfg.data.cache_dir:
        rows = cache_rows(find_cache(cfg.data.cache_dir, df, cfg.features), None)
    else:
        rows = stream_rows(df, None, cfg)
    n = pool_size(actors)
    cols = embed_rows(rows, run / MODEL_FILE, cfg.features, batch_size=cfg.data.batch_size, actors=n,
                      use_gpu=cfg.train.use_gpu)
    return {s: {k: v[cols["split"] == s] for k, v in cols.items()} for s in SPLITS}


def check_finite(emb: dict[str, dict[str, np.ndarray]], run: Path) -> None:
    """No probe is trained, and nothing is written, on embeddings that are not finite (a model whose activations
    overflow on some clips): a one-line error names the run, the split and the first clips."""
    for s, cols in emb.items():
        bad = np.zeros(len(cols["clip_id"]), bool)
        for k in ("emo_emb", "spk_emb"):
            if k in cols and len(cols[k]):
                bad |= ~np.isfinite(cols[k].reshape(len(bad), -1)).all(axis=1)
        if bad.any():
            ids = ", ".join(str(c) for c in cols["clip_id"][bad][:3])
            raise ValueError(f"{run}: the model's embeddings are not finite for {int(bad.sum())} {s} clip(s) "
                             f"(e.g. {ids}); nothing was evaluated")


def evaluate_run(run: Path, manifest: Path | None = None, n_boot: int = 1000, seed: int = 0,
                 actors: int | None = None, progress: bool = True) -> Evaluation:
    """Evaluate a trained run and write its evaluation files into the run folder."""
    from emodis_ray.evaluation.leakage import measure_leakage, save_predictions
    from emodis_ray.evaluation.report import confusion_png, runs_markdown

    say = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    cfg = run_config(run)
    manifest = run_manifest(run, manifest)
    say(f"[1/3] embeddings of train/val/test ({run.name}) ...")
    emb = embed_splits(run, manifest, cfg, actors)
    check_finite(emb, run)
    for s in SPLITS:
        if len(emb[s]["clip_id"]) == 0:
            raise ValueError(f"{manifest}: the {s} split has no decodable clips; the probes need all three")
    counts = ", ".join(f"{s} {len(emb[s]['clip_id'])}" for s in SPLITS)
    say(f"      {counts} clips")
    say(f"[2/3] leakage probes and identity-only floors ({cfg.evaluation.probe_seeds} probe seeds) ...")
    leak = measure_leakage({s: emb[s] for s in ("train", "test")}, scored="test",
                           method_direction=cfg.method.direction,
                           seeds=range(seed, seed + cfg.evaluation.probe_seeds), floor_kind=cfg.evaluation.floor,
                           num_emotions=cfg.model.num_emotions, n_boot=n_boot,
                           holdout_fraction=cfg.evaluation.probe_holdout,
                           stop_on=cfg.evaluation.probe_stop)
    say("[3/3] statistics (bootstrap intervals) ...")
    test, method = emb["test"], cfg.method.name
    ev = build_evaluation(
        run=run.name, method=method, spk_dim=cfg.model.spk_dim, emotion=test["emotion"], speaker=test["speaker"],
        emo_pred=None if method == "stl-speaker" else test["emo_pred"],
        spk_pred=None if method == "stl-emotion" else test["spk_pred"],
        leak=leak.to_dict(), aux_emo_pred=test["aux_emo_pred"], aux_spk_pred=test["aux_spk_pred"], n_boot=n_boot,
        seed=seed,
        extra={"manifest": str(manifest), "config_hash": cfg.hash(), "seed": cfg.train.seed,
               "n_train": int(len(emb["train"]["clip_id"])), "n_val": int(len(emb["val"]["clip_id"]))},
    )
    (run / EVALUATION_FILE).write_text(ev.to_json())
    write_predictions(run / PREDICTIONS_FILE, test, leak.directions["emo_from_spk"].probe_pred[0],
                      leak.directions["spk_from_emo"].probe_pred[0])
    save_predictions(leak, test, run / LEAKAGE_PREDICTIONS_FILE)
    if ev.emo_confusion is not None:
        confusion_png(np.asarray(ev.emo_confusion), EMOTIONS, run / "confusion.png",
                      title=f"{run.name}: emotion (test)")
    (run / "evaluation.md").write_text(f"# Evaluation of `{run.name}`\n\n{runs_markdown([ev])}\n")
    say(summary_line(ev) + f"  [{time.perf_counter() - t0:.0f} s]")
    return ev


def summary_line(ev: Evaluation) -> str:
    parts = [f"{ev.run} ({ev.method}, spk_dim {ev.spk_dim}):"]
    if ev.emo_f1 is not None:
        parts.append(f"emotion F1 {ev.emo_f1.fmt()}")
    if ev.spk_acc is not None:
        parts.append(f"identity acc {ev.spk_acc.fmt()}")
    floors = {k: d.get("floor", float("nan")) for k, d in ev.leakage_detail.get("directions", {}).items()}
    parts.append(f"| emotion from spk emb: probe {ev.probe_emo_from_spk_f1.fmt()}, identity-only floor "
                 f"{100 * floors.get('emo_from_spk', float('nan')):.1f}, chance {100 * ev.chance_emo_f1:.1f}"
                 f" | identity from emo emb: probe {ev.probe_spk_from_emo_acc.fmt()}, floor "
                 f"{100 * floors.get('spk_from_emo', float('nan')):.1f}"
                 f" | leakage above the floor ({'+'.join(ev.leakage_targets)}) {ev.leakage.fmt()}")
    return " ".join(parts)
