"""`emodis evaluate RUN`: headline figures, leakage probes and their uncertainty for one trained run.

1. Embeddings and predictions of every train/val/test clip from the frozen model (Ray Data batch
   inference, ``evaluation/infer.py``) — read from the feature cache when the run used one.
2. Probes (``evaluation/probe.py``): emotion from the speaker embedding, identity from the emotion embedding,
   trained on train, early-stopped on val, scored on test.
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
    from emodis_ray.data.manifest import manifest_hash, read_manifest
    from emodis_ray.evaluation.infer import embed_rows
    from emodis_ray.runtime.session import pool_size

    df = read_manifest(manifest)
    if cfg.data.cache_dir:
        rows = cache_rows(find_cache(cfg.data.cache_dir, manifest_hash(df), cfg.features), None)
    else:
        rows = stream_rows(df, None, cfg)
    n = pool_size(actors)
    cols = embed_rows(rows, run / MODEL_FILE, cfg.features, batch_size=cfg.data.batch_size, actors=n,
                      use_gpu=cfg.train.use_gpu)
    return {s: {k: v[cols["split"] == s] for k, v in cols.items()} for s in SPLITS}


def evaluate_run(run: Path, manifest: Path | None = None, n_boot: int = 1000, seed: int = 0,
                 actors: int | None = None, progress: bool = True) -> Evaluation:
    """Evaluate a trained run and write its evaluation files into the run folder."""
    from emodis_ray.evaluation.probe import run_probes
    from emodis_ray.evaluation.report import confusion_png, runs_markdown

    say = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    cfg = run_config(run)
    manifest = run_manifest(run, manifest)
    say(f"[1/3] embeddings of train/val/test ({run.name}) ...")
    emb = embed_splits(run, manifest, cfg, actors)
    for s in SPLITS:
        if len(emb[s]["clip_id"]) == 0:
            raise ValueError(f"{manifest}: the {s} split has no decodable clips; the probes need all three")
    counts = ", ".join(f"{s} {len(emb[s]['clip_id'])}" for s in SPLITS)
    say(f"      {counts} clips")
    say("[2/3] leakage probes (emotion from speaker emb., identity from emotion emb.) ...")
    probes = run_probes({s: {k: emb[s][k] for k in ("emo_emb", "spk_emb", "emotion", "speaker")} for s in SPLITS},
                        seed=seed)
    say("[3/3] statistics (bootstrap intervals) ...")
    test, method = emb["test"], cfg.method.name
    ev = build_evaluation(
        run=run.name, method=method, spk_dim=cfg.model.spk_dim, emotion=test["emotion"], speaker=test["speaker"],
        emo_pred=None if method == "stl-speaker" else test["emo_pred"],
        spk_pred=None if method == "stl-emotion" else test["spk_pred"],
        probe_emo_from_spk_pred=probes.emo_from_spk_pred, probe_spk_from_emo_pred=probes.spk_from_emo_pred,
        aux_emo_pred=test["aux_emo_pred"], aux_spk_pred=test["aux_spk_pred"], n_boot=n_boot, seed=seed,
        extra={"manifest": str(manifest), "config_hash": cfg.hash(), "seed": cfg.train.seed,
               "n_train": int(len(emb["train"]["clip_id"])), "n_val": int(len(emb["val"]["clip_id"]))},
    )
    (run / EVALUATION_FILE).write_text(ev.to_json())
    write_predictions(run / PREDICTIONS_FILE, test, probes)
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
    parts.append(f"| probes: emotion from spk {ev.probe_emo_from_spk_f1.fmt()} (chance {100 * ev.chance_emo_f1:.1f}), "
                 f"identity from emo {ev.probe_spk_from_emo_acc.fmt()} (chance {100 * ev.chance_spk_acc:.1f})"
                 f" | leakage {ev.leakage.fmt()}")
    return " ".join(parts)
