"""`emodis predict`: emotion predictions, probabilities and embeddings for new clips (Ray Data batch
inference). Clips come from a folder of mp4s or a manifest; bad clips are reported, not fatal."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from emodis_ray.data.ingest import ROW_COLUMNS


def folder_rows(videos: Path) -> pd.DataFrame:
    """Every ``*.mp4`` under ``videos`` as an unlabelled clip; clip id = path without extension.

    A ``.wav`` or ``.m4a`` with the same stem beside a video is used as its audio.
    """
    paths = sorted(p for p in Path(videos).rglob("*.mp4") if p.is_file())
    if not paths:
        raise FileNotFoundError(f"{videos}: no .mp4 files found")

    def audio_of(p: Path) -> str | None:
        for ext in (".wav", ".m4a"):
            if p.with_suffix(ext).exists():
                return str(p.with_suffix(ext).resolve())
        return None

    return pd.DataFrame({
        "clip_id": [str(p.relative_to(videos).with_suffix("")) for p in paths], "split": "predict",
        "emotion_idx": -1, "speaker_idx": -1, "video_abspath": [str(p.resolve()) for p in paths],
        "audio_abspath": [audio_of(p) for p in paths],
    })[ROW_COLUMNS]


def predict_clips(run: Path, out: Path, videos: Path | None = None, manifest: Path | None = None,
                  actors: int | None = None, address: str | None = None) -> pd.DataFrame:
    """Write ``out`` (Parquet): clip id, predicted emotion, one probability per class, both embeddings;
    and ``<out stem>.bad_clips.csv`` for clips that could not be decoded."""
    from emodis_ray.core.checkpoint import MODEL_FILE
    from emodis_ray.data.ingest import BadClipLog, bad_fraction_of, stream_rows, write_bad_clips
    from emodis_ray.data.manifest import read_manifest
    from emodis_ray.evaluation.infer import embed_rows, predictions_frame
    from emodis_ray.runtime.session import pool_size, ray_session
    from emodis_ray.train.run_dir import run_config

    if (videos is None) == (manifest is None):
        raise ValueError("give exactly one of --videos DIR or --manifest FILE")
    cfg = run_config(run)
    rows = folder_rows(videos) if videos is not None else read_manifest(manifest)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    with ray_session(address):
        log = BadClipLog.remote()
        ds = stream_rows(rows, None, cfg, log=log)
        cols = embed_rows(ds, run / MODEL_FILE, cfg.features, batch_size=cfg.data.batch_size, actors=pool_size(actors),
                          use_gpu=cfg.train.use_gpu)
        bad, _ = bad_fraction_of(log, expected=len(rows))
    df = predictions_frame(cols)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    bad_path = out.with_name(out.stem + ".bad_clips.csv")
    write_bad_clips(bad_path, bad)
    print(f"predicted {len(df)} clips in {time.perf_counter() - t0:.0f} s -> {out}"
          + (f"; {len(bad)} bad clips listed in {bad_path}" if bad else ""))
    return df
