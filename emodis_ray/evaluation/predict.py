"""`emodis predict`: emotion predictions, probabilities and embeddings for new clips (Ray Data batch
inference). Clips come from a folder of mp4s or a manifest; bad clips are reported, not fatal."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from emodis_ray.data.ingest import ROW_COLUMNS

#: Why a ``*.mp4`` entry of a folder is not predicted (besides the decoder's own reasons).
SKIP_REASONS = ("not_a_file", "dangling_link", "link_loop", "unreadable")


def entry_problem(path: Path) -> tuple[str, str] | None:
    """None when ``path`` is a regular file or a link to one; else (reason, one-line detail)."""
    try:
        st = path.stat()  # follows links
    except OSError as e:
        link = f"a symbolic link to {_readlink(path)}" if path.is_symlink() else ""
        if e.errno == errno.ELOOP:
            return "link_loop", f"{path}: {link} that leads back to itself (a loop of links)"
        if e.errno == errno.ENOENT and link:
            return "dangling_link", f"{path}: {link}, which does not exist"
        return "unreadable", f"{path}: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, socket or device)"
        return "not_a_file", f"{path}: {kind}, not a video file"
    return None


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def folder_rows(videos: Path) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Every ``*.mp4`` under ``videos`` (any letter case: ``.MP4``, ``.Mp4``) as an unlabelled clip, and the
    entries so named that are not video files (a folder, a dangling link, a loop of links), each as a
    bad-clip record (``clip_id``, ``reason`` from :data:`SKIP_REASONS`, ``detail``): none is dropped silently.

    Clip id = path relative to ``videos`` without the extension (with it, for names that differ only in the
    extension's case). A ``.wav`` or ``.m4a`` with the same stem beside a video is used as its audio.
    Symbolic links to folders are not followed.
    """
    videos = Path(videos)
    if not videos.is_dir():
        raise FileNotFoundError(f"{videos}: not a folder")
    paths, skipped = [], []
    for p in sorted(q for q in videos.rglob("*") if q.suffix.lower() == ".mp4"):
        problem = entry_problem(p)
        if problem is None:
            paths.append(p)
        else:
            skipped.append({"clip_id": str(p.relative_to(videos).with_suffix("")), "reason": problem[0],
                            "detail": problem[1]})
    if not paths:
        listed = "; ".join(f"{b['clip_id']} ({b['reason']})" for b in skipped[:5])
        raise FileNotFoundError(f"{videos}: no .mp4 files found" + (f", only entries that are not video files: "
                                                                    f"{listed}" if skipped else ""))
    ids = [str(p.relative_to(videos).with_suffix("")) for p in paths]
    twice = Counter(ids)
    ids = [str(p.relative_to(videos)) if twice[i] > 1 else i for p, i in zip(paths, ids, strict=True)]

    def audio_of(p: Path) -> str | None:
        for ext in (".wav", ".m4a"):
            if p.with_suffix(ext).exists():
                return str(p.with_suffix(ext).resolve())
        return None

    rows = pd.DataFrame({
        "clip_id": ids, "split": "predict",
        "emotion_idx": -1, "speaker_idx": -1, "video_abspath": [str(p.resolve()) for p in paths],
        "audio_abspath": [audio_of(p) for p in paths], "track_abspath": None,
    })[ROW_COLUMNS]
    return rows, skipped


def predict_clips(run: Path, out: Path, videos: Path | None = None, manifest: Path | None = None,
                  actors: int | None = None, address: str | None = None) -> pd.DataFrame:
    """Write ``out`` (Parquet): clip id, predicted emotion, one probability per class, both embeddings;
    and ``<out stem>.bad_clips.csv`` for clips that could not be decoded, folder entries that are not
    video files, and clips whose outputs are not finite (reason ``non_finite``)."""
    from emodis_ray.core.checkpoint import MODEL_FILE
    from emodis_ray.data.ingest import BadClipLog, bad_fraction_of, stream_rows, write_bad_clips
    from emodis_ray.data.manifest import read_manifest
    from emodis_ray.evaluation.infer import embed_rows, predictions_frame
    from emodis_ray.runtime.session import pool_size, ray_session
    from emodis_ray.train.run_dir import run_config

    if (videos is None) == (manifest is None):
        raise ValueError("give exactly one of --videos DIR or --manifest FILE")
    cfg = run_config(run)
    skipped: list[dict[str, str]] = []
    if videos is not None:
        rows, skipped = folder_rows(videos)
    else:
        rows = read_manifest(manifest)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    with ray_session(address):
        log = BadClipLog.remote()
        ds = stream_rows(rows, None, cfg, log=log)
        cols = embed_rows(ds, run / MODEL_FILE, cfg.features, batch_size=cfg.data.batch_size, actors=pool_size(actors),
                          use_gpu=cfg.train.use_gpu)
        bad, _ = bad_fraction_of(log, expected=len(rows))
    df, non_finite = predictions_frame(cols)  # a NaN probability is never written as a prediction
    bad = [*bad, *skipped, *non_finite]
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    bad_path = out.with_name(out.stem + ".bad_clips.csv")
    write_bad_clips(bad_path, bad)
    print(f"predicted {len(df)} clips in {time.perf_counter() - t0:.0f} s -> {out}"
          + (f"; {len(bad)} bad clips listed in {bad_path}" if bad else ""))
    return df
