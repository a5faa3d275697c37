"""The feature cache on disk: decode once, read many times (docs/design.md §4).

``CACHE/<manifest hash>-<feature hash>/`` holds ``cache.json`` (what it was built from),
``shard-NNNNN.parquet`` of segment rows (:mod:`emodis_ray.data.rows`; written atomically: a shard either
exists whole or not at all, which is what makes an interrupted preprocess resumable),
``shard-NNNNN.bad.json`` and ``bad_clips.csv``. A cache of another manifest or feature config, or an
unfinished one, is an error (:class:`CacheMismatch`), never a silent fallback.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from emodis_ray.config import FeatureConfig
from emodis_ray.data.rows import ROW_SCHEMA

CACHE_FORMAT = 1


class CacheMismatch(ValueError):
    """A feature cache exists but was built from another manifest or feature config."""


def feature_hash(cfg: FeatureConfig) -> str:
    d = asdict(cfg)
    d.pop("clip_s")  # the crop happens at read time: one cache serves any clip length
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **d}, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class CacheInfo:
    root: Path
    manifest_hash: str
    features: dict[str, Any]
    n_shards: int
    complete: bool = False
    clips: int = 0
    bad: int = 0
    splits: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.root.name

    def shard_path(self, i: int) -> Path:
        return self.root / f"shard-{i:05d}.parquet"

    def shards(self) -> list[Path]:
        return [self.shard_path(i) for i in range(self.n_shards) if self.shard_path(i).exists()]

    def save(self) -> None:
        d = asdict(self)
        d["root"] = None
        tmp = self.root / "cache.json.tmp"
        tmp.write_text(json.dumps(d, indent=2))
        os.replace(tmp, self.root / "cache.json")

    @staticmethod
    def load(root: Path) -> CacheInfo:
        d = json.loads((root / "cache.json").read_text())
        d["root"] = root
        return CacheInfo(**d)


def cache_root(cache_dir: str | Path, manifest_hash: str, cfg: FeatureConfig) -> Path:
    return Path(cache_dir) / f"{manifest_hash}-{feature_hash(cfg)}"


def find_cache(cache_dir: str | Path, manifest_hash: str, cfg: FeatureConfig) -> CacheInfo:
    """The complete cache for this manifest and feature config under ``cache_dir``.

    Raises :class:`CacheMismatch` (never falls back silently) when the folder holds only caches of
    other manifests or configs, or an unfinished one, and says which.
    """
    root = cache_root(cache_dir, manifest_hash, cfg)
    if (root / "cache.json").exists():
        info = CacheInfo.load(root)
        if info.complete:
            return info
        raise CacheMismatch(f"feature cache {root} is unfinished ({len(info.shards())}/{info.n_shards} shards); "
                            f"run `emodis preprocess` again to finish it")
    others = sorted(p.parent.name for p in Path(cache_dir).glob("*/cache.json"))
    wanted = root.name
    hint = f"; it holds {', '.join(others)} (manifest hash-feature hash)" if others else ""
    raise CacheMismatch(f"no feature cache for manifest {manifest_hash} and features {wanted.split('-')[1]} "
                        f"in {cache_dir}{hint}. Run `emodis preprocess` with this manifest and config, "
                        f"or leave data.cache_dir empty to decode on the fly")


def write_shard(path: Path, rows: list[dict[str, Any]], bad: list[dict[str, str]]) -> None:
    """Write a shard and its bad-clip list atomically (temp file, then rename; the parquet last)."""
    bad_tmp = path.with_suffix(".bad.json.tmp")
    bad_tmp.write_text(json.dumps(bad))
    os.replace(bad_tmp, path.with_suffix(".bad.json"))
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="none")  # uint8 faces and float16 mel barely compress
    os.replace(tmp, path)


def read_bad(info: CacheInfo) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for i in range(info.n_shards):
        p = info.shard_path(i).with_suffix(".bad.json")
        if p.exists():
            out.extend(json.loads(p.read_text()))
    return out
