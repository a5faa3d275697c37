"""Dataset adapters -> a manifest: the EmoVoxCeleb release (real or synthetic) and a user's own table.

``emovox_manifest`` applies the EmoVox label rules (docs/design.md §3.3); ``table_manifest`` reads a CSV or
Parquet list of clips. Both return a validated DataFrame (see ``manifest.py``) and a ``BuildReport``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from emodis_ray.config import LabelConfig
from emodis_ray.data.labels import (
    EMOTION_INDEX,
    FERPLUS_CLASSES,
    check_logits,
    clip_probs,
    dominant_emotion8,
    merge_to_5,
    percentile_keep,
    split_heard_by_video,
)
from emodis_ray.data.manifest import (
    BuildReport,
    ManifestError,
    _canonical,
    _exists,
    _is_missing,
    _is_str,
    _relative,
    _report,
    _rows,
    reindex_speakers,
    validate,
)

EMOVOX_SETS = {1: "train", 2: "unheard", 3: "heard"}
META_HEADER = ("VoxCeleb1 ID", "VGGFace1 ID")


# ------------------------------------------------------------------------------------------------- EmoVox
def _unwrap(x: Any) -> Any:
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.flat[0]
    return x


def _field(struct: Any, name: str) -> Any:
    """A field of a loadmat struct, whatever the loadmat options; a 1xN struct array gives a list."""
    s = _unwrap(struct)
    if isinstance(s, list):  # simplify_cells=True on a struct array: a list of dicts
        return [_unwrap(_field(e, name)) for e in s]
    if isinstance(s, dict):
        return s[name]
    if hasattr(s, "_fieldnames"):  # scipy mat_struct (struct_as_record=False)
        return getattr(s, name)
    if isinstance(s, np.ndarray) and s.dtype.names:
        if s.size == 1:
            return s.flat[0][name] if s.ndim else s[name]
        return [_unwrap(e[name]) for e in s.flat]
    if isinstance(s, np.ndarray) and s.dtype == object:  # array of mat_structs or dicts
        return [_unwrap(_field(e, name)) for e in s.flat]
    raise KeyError(name)


def _cells(x: Any) -> list[Any]:
    x = _unwrap(x)
    if isinstance(x, list):
        return x
    if isinstance(x, np.ndarray):
        return list(x.flat)
    return [x]


def _as_str(x: Any) -> str:
    x = _unwrap(x)
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "U" and x.size == 1:
            return str(x.flat[0])
        if x.dtype.kind == "U":  # a char array stored one character per element
            return "".join(x.flat)
        raise TypeError(f"not a string: {x!r}")
    if isinstance(x, (str, np.str_)):
        return str(x)
    raise TypeError(f"not a string: {x!r}")


def _logits(w: Any) -> list[np.ndarray]:
    w = _unwrap(w)
    items = list(w.flat) if isinstance(w, np.ndarray) and w.dtype == object else [w]
    out = []
    for it in items:
        a = np.asarray(_unwrap(it), dtype=np.float32)
        out.append(a.reshape(-1, len(FERPLUS_CLASSES)) if a.size % len(FERPLUS_CLASSES) == 0 else a)
    return out


def parse_emovox_name(name: str) -> tuple[str, str, str]:
    """``A.J._Buckley/test/Y8hIVOBuels_0000001.wav`` -> (``A.J._Buckley``, ``Y8hIVOBuels``, ``00001``).

    The YouTube id may contain ``_`` and ``-``: the track number follows the last ``_``.
    """
    parts = name.strip().replace("\\", "/").split("/")
    stem = os.path.splitext(parts[-1])[0]
    yt, sep, track = stem.rpartition("_")
    if len(parts) < 2 or not parts[0] or not sep or not yt or not track.isdigit():
        raise ValueError(f"cannot parse EmoVox name {name!r} "
                         "(expected Person_Name/<folder>/<youtube-id>_<track>.wav)")
    return parts[0], yt, f"{int(track):05d}"


def read_vox1_meta(meta: Path) -> dict[str, str]:
    """``vox1_meta.csv`` (tab-separated) -> {person name: VoxCeleb1 id}."""
    meta = Path(meta)
    with open(meta, newline="", encoding="utf-8") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f, delimiter="\t") if any(c.strip() for c in r)]
    if not rows or tuple(rows[0][:2]) != META_HEADER:
        got = "\\t".join(rows[0]) if rows else "an empty file"
        raise ManifestError(f"{meta}: not a VoxCeleb1 meta file: expected a tab-separated header starting "
                            f"'{META_HEADER[0]}\\t{META_HEADER[1]}', got '{got}'")
    return {r[1]: r[0] for r in rows[1:] if len(r) >= 2}


def load_emovox_mat(mat: Path, **loadmat_kwargs: Any) -> tuple[list[np.ndarray], list[str], list[int]]:
    """The ``.mat`` -> (per-clip [frames, 8] logits, names, sets)."""
    from scipy.io import loadmat

    mat = Path(mat)
    try:
        d = loadmat(mat, **loadmat_kwargs)
    except Exception as e:  # scipy raises MatReadError, ValueError, TypeError, ... for a file that is no .mat
        raise ManifestError(f"{mat}: cannot read the EmoVox .mat file (not a .mat file scipy can read): "
                            f"{type(e).__name__}: {e}") from None
    return parse_emovox_mat(d, mat)


def parse_emovox_mat(d: dict[str, Any], mat: Path) -> tuple[list[np.ndarray], list[str], list[int]]:
    missing = [k for k in ("wavLogits", "images") if k not in d]
    if missing:
        raise ManifestError(f"{mat}: missing top-level key{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} (an EmoVoxCeleb .mat has wavLogits and images)")
    try:
        raw_names, raw_sets = _cells(_field(d["images"], "name")), _cells(_field(d["images"], "set"))
    except (KeyError, ValueError, IndexError, AttributeError) as e:
        raise ManifestError(f"{mat}: images has no field {e} (expected images.name and images.set)") from None
    try:
        logits = _logits(d["wavLogits"])
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{mat}: wavLogits is not a cell array of numeric [frames, 8] matrices ({e})") from None
    if not logits or not raw_names:
        raise ManifestError(f"{mat}: no entries (wavLogits has {len(logits)}, images.name {len(raw_names)})")
    if not (len(logits) == len(raw_names) == len(raw_sets)):
        raise ManifestError(f"{mat}: wavLogits has {len(logits)} entries but images.name has "
                            f"{len(raw_names)} and images.set {len(raw_sets)}")
    names, sets = [], []
    for i, (n, s) in enumerate(zip(raw_names, raw_sets, strict=True)):
        try:
            names.append(_as_str(n))
            sets.append(int(np.asarray(_unwrap(s)).reshape(-1)[0]))
        except (TypeError, ValueError, IndexError) as e:
            raise ManifestError(f"{mat}: entry {i}: unreadable name or set ({e})") from None
        if sets[-1] not in EMOVOX_SETS:
            raise ManifestError(f"{mat}: entry {i} ({names[-1]}): set {sets[-1]} is not 1, 2 or 3")
        try:
            check_logits(logits[i])
        except ValueError as e:
            raise ManifestError(f"{mat}: entry {i} ({names[-1]}): wavLogits: {e}") from None
    return logits, names, sets


def _probe(path: str) -> tuple[float | None, float | None]:
    """(duration_s, fps) of a video, or (None, None) when it cannot be read."""
    import decord

    try:
        vr = decord.VideoReader(path, num_threads=1)
        fps, n = float(vr.get_avg_fps()), len(vr)
        del vr
    except (RuntimeError, decord.DECORDError):  # missing or broken file
        return None, None
    if not (np.isfinite(fps) and fps > 0 and n > 0):  # no frames or no rate: nothing to record
        return None, None
    return n / fps, fps


def emovox_manifest(
    mat: Path,
    meta: Path,
    videos: Path,
    cfg: LabelConfig,
    audio: Path | None = None,
    *,
    tracks: Path | None = None,
    check_files: bool = False,
    probe: bool = False,
) -> tuple[pd.DataFrame, BuildReport]:
    """Build the manifest of the EmoVoxCeleb release (docs/design.md §3.3).

    Face crops (VoxCeleb2 layout): ``videos`` is the folder of ``<clip_id>.mp4``; ``audio`` (optional) the
    folder of ``<clip_id>.m4a`` or ``.wav``. Face tracks over raw video (VoxCeleb1 layout, ``tracks`` given):
    ``tracks`` is the folder of ``<clip_id>.txt`` track files, ``videos`` the folder of raw ``<youtube-id>.mp4``
    videos (one serves every track cut from it) and ``audio`` (required) the folder of ``<clip_id>.wav``.
    ``check_files`` drops (and counts) clips without a video (crop layout) or without a track file or wav
    (track layout: a missing raw video is reported per track by ingest, reason ``missing_video``);
    ``probe`` reads fps and duration from each face-crop video with decord (slow: opens every file).
    """
    if tracks is not None and audio is None:
        raise ManifestError(f"{tracks}: face tracks need the folder of their wav files (--audio WAV_DIR)")
    logits, names, sets = load_emovox_mat(mat)
    ids = read_vox1_meta(meta)
    videos = Path(os.path.abspath(videos))
    rows = []
    for i, (lg, name, st) in enumerate(zip(logits, names, sets, strict=True)):
        try:
            person, yt, track = parse_emovox_name(name)
        except ValueError as e:
            raise ManifestError(f"{mat}: entry {i}: {e}") from None
        if person not in ids:
            raise ManifestError(f"{mat}: entry {i}: name {name!r}: person {person!r} is not in {meta}")
        emotion = merge_to_5(dominant_emotion8(lg, cfg.rule))
        rows.append({"clip_id": f"{ids[person]}/{yt}/{track}", "speaker": ids[person], "video_id": yt,
                     "set": EMOVOX_SETS[st], "emotion": emotion, "emotion_probs": clip_probs(lg)})
    df = pd.DataFrame(rows, columns=["clip_id", "speaker", "video_id", "set", "emotion", "emotion_probs"])
    dup = df["clip_id"].duplicated(keep=False)
    if dup.any():
        raise ManifestError(f"{mat}: entries map to the same clip: {_rows(df, dup)}")
    dropped: dict[str, int] = {}

    def drop(rule: str, mask: pd.Series) -> None:
        nonlocal df
        dropped[rule] = int(mask.sum())
        df = df[~mask].reset_index(drop=True)

    drop("unheard_set", df["set"] == "unheard")
    df["video_path"] = df["clip_id"] + ".mp4" if tracks is None else df["video_id"] + ".mp4"
    df["track_path"] = None
    if tracks is not None:
        tracks = Path(os.path.abspath(tracks))
        df["track_path"] = [_relative(str(tracks / f"{c}.txt"), videos) for c in df["clip_id"]]
    if check_files and tracks is None:
        drop("missing_video", ~df["video_path"].map(lambda p: _exists(str(videos / p))))
    if check_files and tracks is not None:
        drop("missing_track", ~df["track_path"].map(lambda p: _exists(str(videos / p))))
    counts = df["speaker"].value_counts().to_dict()
    drop("speaker_percentile", ~df["speaker"].isin(percentile_keep(counts, cfg.drop_percentile)))
    train = df["set"] == "train"
    drop("unseen_speaker", ~train & ~df["speaker"].isin(set(df["speaker"][train])))
    train = df["set"] == "train"
    drop("heard_video_in_train", ~train & df["video_id"].isin(set(df["video_id"][train])))
    heard = df[df["set"] == "heard"]
    assign = split_heard_by_video(list(heard["video_id"]), list(heard["speaker"]), cfg.val_fraction, cfg.seed)
    df["split"] = [("train" if s == "train" else assign[v])
                   for s, v in zip(df["set"], df["video_id"], strict=True)]

    df["root"] = str(videos)
    df["audio_path"] = None
    notes = []
    if audio is not None:
        audio = Path(os.path.abspath(audio))
        found = [_find_audio(audio, c) for c in df["clip_id"]]
        if tracks is not None and check_files:
            missing = pd.Series([p is None for p in found])
            drop("missing_wav", missing)
            found = [p for p, m in zip(found, missing, strict=True) if not m]
        elif tracks is not None:  # a track has no audio of its own but its wav: ingest reports it missing
            found = [p or str(audio / f"{c}.wav") for p, c in zip(found, df["clip_id"], strict=True)]
        df["audio_path"] = [None if p is None else _relative(p, videos) for p in found]
        n_missing = sum(p is None for p in found)
        if n_missing:
            notes.append(f"{n_missing} clips have no .m4a/.wav under the audio folder (audio_path left null)")
    df["duration_s"], df["fps"] = None, None
    if probe and tracks is None:
        got = [_probe(str(videos / p)) for p in df["video_path"]]
        df["duration_s"] = [d for d, _ in got]
        df["fps"] = [f for _, f in got]
        n_bad = sum(f is None for _, f in got)
        if n_bad:
            notes.append(f"{n_bad} videos could not be probed (duration/fps left null)")
    df["emotion_idx"] = df["emotion"].map(EMOTION_INDEX)
    df["source"] = "emovox"
    df = _canonical(reindex_speakers(df))
    validate(df)
    report = _report(df, f"emovox ({Path(mat).name})", len(names), dropped)
    report.notes = notes
    return df, report


def _find_audio(folder: Path, clip_id: str) -> str | None:
    for ext in (".m4a", ".wav"):
        p = folder / f"{clip_id}{ext}"
        if _exists(str(p)):
            return str(p)
    return None


# -------------------------------------------------------------------------------------------- user tables
_REQUIRED = ("clip_id", "video_path", "speaker", "emotion", "split")
_STR_COLUMNS = ("clip_id", "root", "video_path", "audio_path", "speaker", "emotion", "split", "video_id",
                "track_path")


def _parse_probs(x: Any) -> Any:
    if _is_missing(x) or (isinstance(x, str) and not x.strip()):
        return None
    if isinstance(x, str):
        text = x.strip()
        if text.startswith("["):
            return np.asarray(json.loads(text), dtype=np.float32)
        return np.asarray([float(v) for v in text.replace(",", " ").split()], dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


def table_manifest(path: Path) -> tuple[pd.DataFrame, BuildReport]:
    """A user's CSV or Parquet list of clips -> manifest.

    Required columns: clip_id, video_path, speaker, emotion, split. Optional: root (default: the
    table's folder; relative roots are taken from it), audio_path, track_path (a face-track file over the raw
    video ``video_path``; then audio_path is its wav), video_id (default: the middle part
    of an ``id/<video>/NNNNN`` clip_id, else the clip_id), duration_s, fps, emotion_probs (a list,
    or in a CSV a JSON list or space/comma-separated numbers). FER+ class names are merged to the
    5 classes; speaker_idx and emotion_idx are (re)computed.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS}, keep_default_na=True)
    except (OSError, ValueError, pa.ArrowInvalid) as e:
        raise ManifestError(f"{path}: cannot read the clip table: {e}") from e
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing required columns {', '.join(missing)} "
                            f"(need {', '.join(_REQUIRED)})")
    if df.empty:
        raise ManifestError(f"{path}: no clips: the table has its header but no rows")
    folder = os.path.abspath(path.parent)
    for c in _REQUIRED:
        df[c] = [x.strip() if isinstance(x, str) else x for x in df[c]]
    df["emotion"] = [merge_to_5(e.lower()) if isinstance(e, str) and e.lower() in FERPLUS_CLASSES
                     else (e.lower() if isinstance(e, str) else e) for e in df["emotion"]]
    df["split"] = [s.lower() if isinstance(s, str) else s for s in df["split"]]
    roots = df["root"] if "root" in df.columns else [None] * len(df)
    df["root"] = [folder if _is_missing(r) or not str(r).strip()
                  else os.path.normpath(os.path.join(folder, str(r).strip())) for r in roots]
    if "video_id" not in df.columns:
        df["video_id"] = None
    df["video_id"] = [v if isinstance(v, str) and v.strip() else _default_video_id(c)
                      for v, c in zip(df["video_id"], df["clip_id"], strict=True)]
    for c in ("audio_path", "duration_s", "fps", "emotion_probs", "track_path"):
        if c not in df.columns:
            df[c] = None
    for c in ("audio_path", "track_path"):
        df[c] = [None if _is_missing(a) or not str(a).strip() else a for a in df[c]]
    try:
        df["emotion_probs"] = [_parse_probs(x) for x in df["emotion_probs"]]
    except (ValueError, TypeError) as e:
        raise ManifestError(f"{path}: unreadable emotion_probs: {e}") from None
    df["emotion_idx"] = df["emotion"].map(EMOTION_INDEX).fillna(-1).astype(np.int32)
    df["source"] = "table"
    df = reindex_speakers(df) if df["speaker"].map(_is_str).all() else df.assign(speaker_idx=0)
    try:
        validate(df)
    except ManifestError as e:
        raise ManifestError(f"{path}: {e}") from None
    df = _canonical(df)
    return df, _report(df, f"table ({path.name})", len(df), {})


def _default_video_id(clip_id: Any) -> Any:
    if not isinstance(clip_id, str):
        return clip_id
    parts = clip_id.split("/")
    return parts[1] if len(parts) == 3 else clip_id


__all__ = [
    "emovox_manifest", "table_manifest", "parse_emovox_name", "read_vox1_meta", "load_emovox_mat", "parse_emovox_mat",
]
