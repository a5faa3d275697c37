"""The manifest: one Parquet table, one row per clip (docs/design.md §3.2) — schema, validation, read/write, hash.

The manifest is the contract between data and training. Builders (``sources.emovox_manifest``,
``sources.table_manifest``) return a DataFrame whose ``root`` is absolute; ``write_manifest`` stores
``root`` relative to the manifest's folder so that a manifest moves with its data, and
``read_manifest`` makes it absolute again and adds ``video_abspath``/``audio_abspath``/``track_abspath``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from emodis_ray.data.labels import (
    EMOTION_INDEX,
    EMOTIONS,
    FERPLUS_CLASSES,
    SPLITS,
    majority_chance_f1,
)

MANIFEST_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("root", pa.string(), nullable=False),
    pa.field("video_path", pa.string(), nullable=False),
    pa.field("audio_path", pa.string(), nullable=True),
    pa.field("speaker", pa.string(), nullable=False),
    pa.field("speaker_idx", pa.int32(), nullable=False),
    pa.field("emotion", pa.string(), nullable=False),
    pa.field("emotion_idx", pa.int32(), nullable=False),
    pa.field("emotion_probs", pa.list_(pa.float32()), nullable=True),
    pa.field("split", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("duration_s", pa.float32(), nullable=True),
    pa.field("fps", pa.float32(), nullable=True),
    pa.field("source", pa.string(), nullable=False),
    # VoxCeleb1 layout: the face-track file over the raw video ``video_path`` (docs/design.md §3.1); null for a
    # face-crop clip. A manifest written before this column existed reads as all null.
    pa.field("track_path", pa.string(), nullable=True),
])
COLUMNS: tuple[str, ...] = tuple(MANIFEST_SCHEMA.names)
#: Columns that define a manifest's content for ``manifest_hash`` (not its location).
HASH_COLUMNS: tuple[str, ...] = (
    "clip_id", "video_path", "audio_path", "speaker", "speaker_idx", "emotion", "emotion_idx", "split",
    "video_id", "track_path",
)
#: Hash columns that enter a row only where they are set, so a manifest without them keeps the hash (and the
#: feature cache) it had before they existed.
_OPTIONAL_HASH = frozenset({"track_path"})
_SHOW = 10


class ManifestError(ValueError):
    """A manifest or a dataset file is malformed; the message names the rows or the file."""


@dataclass
class BuildReport:
    """What a builder kept and dropped."""

    source: str
    clips_read: int
    dropped: dict[str, int] = field(default_factory=dict)  # rule -> clips dropped, in the order applied
    people: int = 0
    clips: dict[str, int] = field(default_factory=dict)  # split -> clips
    classes: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> emotion -> clips
    chance_f1: float = 0.0  # macro-F1 of always predicting the test set's majority class
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"manifest from {self.source}: {self.clips_read} clips read, "
                 f"{sum(self.clips.values())} kept, {self.people} people"]
        for rule, n in self.dropped.items():
            lines.append(f"  dropped {n:>7}  {rule.replace('_', ' ')}")
        w = max(len(e) for e in EMOTIONS)
        lines.append(f"  {'split':<6} {'clips':>7}  " + "  ".join(f"{e:>{w}}" for e in EMOTIONS))
        for s in SPLITS:
            row = self.classes.get(s, {})
            lines.append(f"  {s:<6} {self.clips.get(s, 0):>7}  "
                         + "  ".join(f"{row.get(e, 0):>{w}}" for e in EMOTIONS))
        lines.append(f"  test majority-class chance macro-F1: {100 * self.chance_f1:.1f} %")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _report(df: pd.DataFrame, source: str, clips_read: int, dropped: dict[str, int]) -> BuildReport:
    classes = {s: {e: int(((df.split == s) & (df.emotion == e)).sum()) for e in EMOTIONS} for s in SPLITS}
    test = df.emotion_idx[df.split == "test"]
    return BuildReport(source=source, clips_read=clips_read, dropped=dict(dropped),
                       people=int(df.speaker.nunique()),
                       clips={s: int((df.split == s).sum()) for s in SPLITS}, classes=classes,
                       chance_f1=majority_chance_f1(test.to_numpy()))


# ----------------------------------------------------------------------------------------------- validation
def _rows(df: pd.DataFrame, mask: Any) -> str:
    """'rows 3 (id1/a/00001), 7 (...)' for the first few positions of ``mask``, then 'and N more'."""
    pos = np.flatnonzero(np.asarray(mask, dtype=bool))
    ids = df["clip_id"].to_numpy() if "clip_id" in df.columns else None
    shown = [f"{p} ({ids[p]})" if ids is not None else str(p) for p in pos[:_SHOW]]
    more = f" and {len(pos) - _SHOW} more" if len(pos) > _SHOW else ""
    return f"row{'s' if len(pos) > 1 else ''} {', '.join(shown)}{more}"


def _is_str(x: Any) -> bool:
    return isinstance(x, str)


def _is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x))


def _schema_problems(df: pd.DataFrame) -> list[str]:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        return [f"missing columns: {', '.join(missing)}"]
    out = []
    for f in MANIFEST_SCHEMA:
        col = df[f.name]
        if pa.types.is_string(f.type):
            bad = [not (_is_str(x) or (f.nullable and _is_missing(x))) for x in col]
            what = "a string" + (" or null" if f.nullable else "")
        elif pa.types.is_integer(f.type):
            if pd.api.types.is_integer_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
                bad = [False] * len(col)
            else:
                bad = [not isinstance(x, (int, np.integer)) or isinstance(x, bool) for x in col]
            what = "an integer"
        elif pa.types.is_floating(f.type):
            bad = [not (_is_missing(x) or _is_number(x)) for x in col]
            what = "a number or null"
        else:  # emotion_probs
            bad = [not (_is_missing(x) or _is_probs(x)) for x in col]
            what = f"null or {len(FERPLUS_CLASSES)} numbers"
        if any(bad):
            out.append(f"column {f.name} must be {what} ({col.dtype} given): {_rows(df, bad)}")
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool)


def _is_probs(x: Any) -> bool:
    if isinstance(x, (str, bytes)):
        return False
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return a.shape == (len(FERPLUS_CLASSES),)


def _resolve(root: str, path: str | None, base: Path | None) -> str | None:
    if path is None or _is_missing(path):
        return None
    p = Path(path)
    if not p.is_absolute():
        r = Path(root)
        if not r.is_absolute():
            r = (base or Path.cwd()) / r
        p = r / p
    return os.path.normpath(p)


def validate(df: pd.DataFrame, base: Path | None = None, check_files: bool = False) -> None:
    """Raise ``ManifestError`` naming the offending rows if ``df`` is not a valid manifest.

    Relative ``root`` values are resolved against ``base`` (default: the working directory);
    files are only looked at when ``check_files`` is set (one ``os.stat`` per path).
    """
    problems = _schema_problems(df)
    if problems:
        raise ManifestError("invalid manifest: " + "; ".join(problems))
    df = df.reset_index(drop=True)
    emo, split = df["emotion"], df["split"]
    bad = ~emo.isin(EMOTIONS)
    if bad.any():
        problems.append(f"unknown emotion class {sorted(set(emo[bad]))} (known: {', '.join(EMOTIONS)}): "
                        f"{_rows(df, bad)}")
    bad = ~bad & (emo.map(EMOTION_INDEX).fillna(-1).astype(int) != df["emotion_idx"].astype(int))
    if bad.any():
        problems.append(f"emotion_idx does not match emotion (expected {EMOTION_INDEX}): {_rows(df, bad)}")
    bad = ~split.isin(SPLITS)
    if bad.any():
        problems.append(f"unknown split {sorted(set(split[bad]))} (known: {', '.join(SPLITS)}): "
                        f"{_rows(df, bad)}")
    bad = df["clip_id"].duplicated(keep=False)
    if bad.any():
        problems.append(f"duplicate clip_id: {_rows(df, bad)}")
    train_speakers = set(df["speaker"][split == "train"])
    bad = split.isin(("val", "test")) & ~df["speaker"].isin(train_speakers)
    if bad.any():
        problems.append(f"val/test speakers unseen in train {sorted(set(df['speaker'][bad]))[:_SHOW]}: "
                        f"{_rows(df, bad)}")
    idx = df["speaker_idx"].astype(int)
    n_idx_per_spk = idx.groupby(df["speaker"].to_numpy()).transform("nunique")
    n_spk_per_idx = df["speaker"].groupby(idx.to_numpy()).transform("nunique")
    bad = (n_idx_per_spk > 1) | (n_spk_per_idx > 1) | (idx < 0)
    if bad.any():
        problems.append("speaker_idx inconsistent with speaker (one index per speaker, >= 0): "
                        f"{_rows(df, bad)}")
    n_splits = split.groupby(df["video_id"].to_numpy()).transform("nunique")
    bad = n_splits > 1
    if bad.any():
        vids = sorted(set(df["video_id"][bad]))
        problems.append(f"video_id in two splits {vids[:_SHOW]}: {_rows(df, bad)}")
    for col in ("duration_s", "fps"):  # null when unknown; a value must be a positive, finite number
        v = df[col].map(lambda x: np.nan if _is_missing(x) else float(x)).to_numpy(dtype=np.float64)
        bad = np.isinf(v) | (v <= 0)
        if bad.any():
            problems.append(f"{col} must be a positive number or null (got {sorted(set(v[bad]))[:_SHOW]}): "
                            f"{_rows(df, bad)}")
    bad = [not _is_missing(x) and not np.isfinite(np.asarray(x, dtype=np.float64)).all() for x in df["emotion_probs"]]
    if any(bad):
        problems.append(f"emotion_probs has NaN or infinite values: {_rows(df, bad)}")
    if check_files:
        for col in ("video_path", "audio_path", "track_path"):
            paths = [_resolve(r, p, base) for r, p in zip(df["root"], df[col], strict=True)]
            bad = [p is not None and not _exists(p) for p in paths]
            if any(bad):
                first = next(p for p, b in zip(paths, bad, strict=True) if b)
                problems.append(f"missing {col.split('_')[0]} files (e.g. {first}): {_rows(df, bad)}")
    if problems:
        raise ManifestError("invalid manifest: " + "; ".join(problems))


def _exists(path: str) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------------------------- read / write
def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """The schema's columns, in order, with the dtypes ``read_manifest`` returns."""
    return _to_table(df).to_pandas()


def _to_table(df: pd.DataFrame) -> pa.Table:
    data = df.loc[:, list(COLUMNS)].copy()
    data["emotion_probs"] = [None if _is_missing(x) else np.asarray(x, dtype=np.float32)
                             for x in data["emotion_probs"]]
    for c in ("audio_path", "duration_s", "fps", "track_path"):
        data[c] = [None if _is_missing(x) else x for x in data[c]]
    try:
        return pa.Table.from_pandas(data, schema=MANIFEST_SCHEMA, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ManifestError(f"invalid manifest: does not fit the schema: {e}") from e


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    """Validate, then write atomically; ``root`` is stored relative to the manifest's folder.

    Relative ``root`` values in ``df`` are taken relative to the working directory. Columns outside
    ``MANIFEST_SCHEMA`` (e.g. ``video_abspath``) are not written. Nothing is written on error.
    """
    path = Path(path)
    validate(df)
    folder = Path(os.path.abspath(path.parent))
    out = df.loc[:, list(COLUMNS)].copy()
    out["root"] = [_relative(os.path.abspath(r), folder) for r in out["root"]]
    table = _to_table(out)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _relative(root: str, folder: Path) -> str:
    try:
        return os.path.relpath(root, folder)
    except ValueError:  # another drive (Windows): keep it absolute
        return root


def read_manifest(path: Path, check_files: bool = False) -> pd.DataFrame:
    """Read and validate a manifest; ``root`` becomes absolute and ``video_abspath``/``audio_abspath``
    (None where there is no separate audio) are added."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise ManifestError(f"{path}: cannot read a Parquet manifest: {e}") from e
    if "track_path" not in table.schema.names:  # written before face tracks were read
        table = table.append_column("track_path", pa.nulls(table.num_rows, pa.string()))
    problems = []
    for f in MANIFEST_SCHEMA:
        if f.name not in table.schema.names:
            problems.append(f"missing column {f.name}")
        elif not _same_type(table.schema.field(f.name).type, f):
            problems.append(f"column {f.name} is {table.schema.field(f.name).type}, expected {f.type}")
    if problems:
        raise ManifestError(f"{path}: wrong schema: {'; '.join(problems)}")
    df = table.select(list(COLUMNS)).cast(MANIFEST_SCHEMA).to_pandas()
    folder = Path(os.path.abspath(path.parent))
    df["root"] = [os.path.normpath(folder / r) for r in df["root"]]
    try:
        validate(df, check_files=check_files)
    except ManifestError as e:
        raise ManifestError(f"{path}: {e}") from None
    df["video_abspath"] = [_resolve(r, p, None) for r, p in zip(df["root"], df["video_path"], strict=True)]
    df["audio_abspath"] = [_resolve(r, p, None) for r, p in zip(df["root"], df["audio_path"], strict=True)]
    df["track_abspath"] = [_resolve(r, p, None) for r, p in zip(df["root"], df["track_path"], strict=True)]
    return df


def _same_type(t: pa.DataType, f: pa.Field) -> bool:
    """Equal up to representation: large_string for string, large_list for list, null if nullable."""
    if t.equals(f.type) or (f.nullable and pa.types.is_null(t)):
        return True
    if pa.types.is_string(f.type):
        return pa.types.is_large_string(t)
    if pa.types.is_list(f.type):
        return pa.types.is_large_list(t) and t.value_type.equals(f.type.value_type)
    return False


def manifest_hash(df: pd.DataFrame) -> str:
    """Stable 16-hex hash of the content columns, independent of row order and of where the data lies."""
    cols = [c for c in HASH_COLUMNS if c in df.columns or c not in _OPTIONAL_HASH]
    rows = sorted(
        json.dumps([None if _is_missing(v) else (int(v) if isinstance(v, (int, np.integer)) else str(v))
                    for c, v in zip(cols, r, strict=True) if not (c in _OPTIONAL_HASH and _is_missing(v))])
        for r in df.loc[:, cols].itertuples(index=False, name=None)
    )
    h = hashlib.sha256()
    for r in rows:
        h.update(r.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def reindex_speakers(df: pd.DataFrame) -> pd.DataFrame:
    """Dense ``speaker_idx`` over the speakers present, sorted by id (e.g. after filtering rows)."""
    index = {s: i for i, s in enumerate(sorted(set(df["speaker"])))}
    return df.assign(speaker_idx=df["speaker"].map(index).astype(np.int32))
