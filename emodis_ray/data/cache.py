"""The feature cache on disk, keyed by clip: decode once, read from any manifest (docs/design.md §4).

``CACHE/features-<feature hash>/`` holds parts: ``part-<hash>.parquet`` of feature rows
(:data:`~emodis_ray.data.rows.FEATURE_SCHEMA`: no labels, no split) and ``part-<hash>.json``, the clip keys
it holds and the clips that could not be decoded (with their reasons). A part is written atomically (the
JSON first, the Parquet last, each through a temporary file and a rename): it exists whole or not at all.

A clip's **key** is a hash of the path, size and modification time of each of its files (video, audio,
face track): :func:`clip_key`. A content hash would also notice a file rewritten in place with the same size
and time, but it reads every byte of every video (as much I/O as decoding it); a stat costs microseconds.
A changed file changes its key, so it is decoded again, never silently reused. Labels and splits come from
the manifest at read time: a new label rule or split reuses every decoded clip, and a manifest with new
clips decodes only those (:func:`find_cache` says how many are missing).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from emodis_ray.config import FeatureConfig
from emodis_ray.data.rows import FEATURE_SCHEMA

CACHE_FORMAT = 2
FILE_COLUMNS = ("video_abspath", "audio_abspath", "track_abspath")


class CacheMismatch(ValueError):
    """The feature cache does not hold (every clip of) this manifest under this feature config."""


def feature_hash(cfg: FeatureConfig) -> str:
    d = asdict(cfg)
    d.pop("clip_s")  # the crop happens at read time: one cache serves any clip length
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **d}, sort_keys=True).encode()).hexdigest()[:12]


def cache_root(cache_dir: str | Path, cfg: FeatureConfig) -> Path:
    return Path(cache_dir) / f"features-{feature_hash(cfg)}"


def _stat(path: Any) -> list[Any] | None:
    if not isinstance(path, str) or not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return [path, -1, -1]  # missing: decoding reports it; the key changes once the file appears
    return [path, st.st_size, st.st_mtime_ns]


def clip_key(video: str, audio: str | None = None, track: str | None = None) -> str:
    """The cache key of one clip: its files' paths, sizes and modification times, hashed (20 hex digits)."""
    ident = [_stat(video), _stat(audio), _stat(track)]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:20]


def manifest_keys(df: pd.DataFrame) -> pd.Series:
    """:func:`clip_key` of every manifest row (one stat per file)."""
    cols = [df[c] if c in df.columns else pd.Series([None] * len(df), index=df.index) for c in FILE_COLUMNS]
    return pd.Series([clip_key(*files) for files in zip(*cols, strict=True)], index=df.index, dtype=object)


@dataclass
class CacheIndex:
    """What a cache root holds: part of each decoded clip key, and the bad clips' reasons."""

    root: Path
    parts: dict[str, str] = field(default_factory=dict)  # clip key -> part file name
    bad: dict[str, dict[str, str]] = field(default_factory=dict)  # clip key -> {reason, detail}

    @staticmethod
    def load(root: Path) -> CacheIndex:
        idx = CacheIndex(root)
        for side in sorted(root.glob("part-*.json")):
            part = side.with_suffix(".parquet")
            if not part.exists():  # interrupted before its Parquet landed: not part of the cache
                continue
            d = json.loads(side.read_text())
            for k in d["clips"]:
                idx.parts.setdefault(k, part.name)  # two runs at once may both decode a clip: keep one
            for b in d["bad"]:
                idx.bad.setdefault(b["clip_key"], {"reason": b["reason"], "detail": b["detail"]})
        for k in idx.parts:
            idx.bad.pop(k, None)  # decoded once, even if another attempt failed
        return idx

    def __contains__(self, key: str) -> bool:
        return key in self.parts or key in self.bad


@dataclass
class CacheView:
    """One manifest seen through the cache: every clip found, the labels to join, the bad clips."""

    root: Path
    labels: pd.DataFrame  # clip_key, part, clip_id, split, emotion, speaker: one row per good manifest row
    bad: list[dict[str, str]]  # clip_id, reason, detail
    splits: dict[str, int]

    @property
    def clips(self) -> int:
        return len(self.labels)

    def rows_of(self, split: str | Iterable[str] | None) -> pd.DataFrame:
        if split is None:
            return self.labels
        wanted = [split] if isinstance(split, str) else list(split)
        return self.labels[self.labels["split"].isin(wanted)]

    def parts(self, split: str | Iterable[str] | None = None) -> list[Path]:
        """The part files holding the clips of ``split`` (every part this manifest uses when None)."""
        return [self.root / p for p in sorted(set(self.rows_of(split)["part"]))]


def find_cache(cache_dir: str | Path, df: pd.DataFrame, cfg: FeatureConfig,
               keys: pd.Series | None = None) -> CacheView:
    """This manifest's clips in the cache under ``cache_dir`` for this feature config.

    Raises :class:`CacheMismatch` (never falls back silently) when the folder has no cache of this feature
    config, or when some of the manifest's clips (new ones, or files changed since) are not in it. ``keys``:
    the manifest's clip keys when the caller has just computed them (default: stat every clip file now).
    """
    root = cache_root(cache_dir, cfg)
    if not root.is_dir():
        others = sorted(p.name for p in Path(cache_dir).glob("features-*"))
        hint = f"; it holds {', '.join(others)}" if others else ""
        raise CacheMismatch(f"no feature cache for features {feature_hash(cfg)} in {cache_dir}{hint}. Run "
                            f"`emodis preprocess` with this manifest and config, or leave data.cache_dir empty to "
                            f"decode on the fly")
    idx = CacheIndex.load(root)
    keys = manifest_keys(df) if keys is None else keys
    missing = ~keys.isin(set(idx.parts) | set(idx.bad))
    if missing.any():
        first = ", ".join(df["clip_id"][missing].head(3))
        raise CacheMismatch(f"{int(missing.sum())} of {len(df)} clips of this manifest are not in the feature cache "
                            f"{root} (new clips or changed files; first: {first}); run `emodis preprocess` with "
                            f"this manifest to decode them")
    good = keys.isin(set(idx.parts))
    labels = pd.DataFrame({
        "clip_key": keys[good].to_numpy(), "part": keys[good].map(idx.parts).to_numpy(),
        "clip_id": df["clip_id"][good].to_numpy(), "split": df["split"][good].to_numpy(),
        "emotion": df["emotion_idx"][good].to_numpy(np.int32), "speaker": df["speaker_idx"][good].to_numpy(np.int32),
    })
    bad = [{"clip_id": c, **idx.bad[k]} for c, k in zip(df["clip_id"][~good], keys[~good], strict=True)]
    splits = {str(k): int(v) for k, v in labels["split"].value_counts().sort_index().items()}
    return CacheView(root, labels, bad, splits)


def row_groups(rows: list[dict[str, Any]], max_bytes: float) -> list[list[dict[str, Any]]]:
    """Consecutive rows in groups of at most ``max_bytes`` of binary payload (a single larger row alone)."""
    groups: list[list[dict[str, Any]]] = [[]]
    size = 0
    for r in rows:
        n = sum(len(v) for v in r.values() if isinstance(v, bytes))
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(r)
        size += n
    return groups


def part_name(keys: Iterable[str]) -> str:
    return "part-" + hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def write_part(root: Path, rows: list[dict[str, Any]], bad: list[dict[str, str]], keys: list[str],
               row_group_mb: float = 64.0) -> Path:
    """Write one part (feature rows, row groups bounded in bytes) and its key list atomically; return its path.
    ``keys`` are every clip key the part was made from (good and bad), which name it."""
    path = root / (part_name(keys) + ".parquet")
    side = path.with_suffix(".json")
    tmp = side.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"clips": [r["clip_key"] for r in rows], "bad": bad}))
    os.replace(tmp, side)
    tmp = path.with_suffix(".parquet.tmp")
    cols = FEATURE_SCHEMA.names
    with pq.ParquetWriter(tmp, FEATURE_SCHEMA, compression="none") as w:  # JPEG and float16 barely compress
        for group in row_groups(rows, row_group_mb * 1e6):
            w.write_table(pa.Table.from_pylist([{c: r[c] for c in cols} for r in group], schema=FEATURE_SCHEMA))
    os.replace(tmp, path)
    return path
