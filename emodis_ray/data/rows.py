"""Segment rows: the one format that both the streaming decoder and the feature cache produce.

A row holds every segment of a whole clip, serialised to bytes (variable length, so clips of any
duration fit one Arrow schema): log-mel as float16, faces as uint8. The training worker turns a
batch of rows into model tensors with :func:`collate`, which also does the crop (random in training,
seeded by (seed, epoch, clip id), so runs are reproducible whichever Ray worker decoded a clip).
Because streaming and cache build the very same rows, cached tensors equal streamed tensors.

The cache is ``CACHE/<manifest hash>-<feature hash>/``: ``cache.json`` (what it was built from),
``shard-NNNNN.parquet`` (written atomically: a shard either exists whole or not at all, which is
what makes an interrupted preprocess resumable), ``shard-NNNNN.bad.json`` and ``bad_clips.csv``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emodis_ray.config import FeatureConfig
from emodis_ray.data.features import ClipSegments, crop_start, feature_shapes, num_segments

CACHE_FORMAT = 1
ROW_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("split", pa.string()), ("emotion", pa.int32()), ("speaker", pa.int32()),
    ("n_segments", pa.int32()), ("duration_s", pa.float32()),
    ("audio", pa.binary()), ("faces", pa.binary()), ("frame_index", pa.binary()),
])


class CacheMismatch(ValueError):
    """A feature cache exists but was built from another manifest or feature config."""


def to_row(clip_id: str, split: str, emotion: int, speaker: int, segs: ClipSegments) -> dict[str, Any]:
    return {
        "clip_id": clip_id, "split": split, "emotion": int(emotion), "speaker": int(speaker),
        "n_segments": len(segs.frame_index), "duration_s": float(segs.duration_s),
        "audio": segs.audio.astype(np.float16).tobytes(),
        "faces": np.ascontiguousarray(segs.faces, np.uint8).tobytes(),
        "frame_index": segs.frame_index.astype(np.int64).tobytes(),
    }


def from_row(row: dict[str, Any], cfg: FeatureConfig) -> ClipSegments:
    shapes = feature_shapes(cfg)
    s = int(row["n_segments"])
    audio = np.frombuffer(row["audio"], np.float16).reshape(s, *shapes["audio"][1:])  # [S, 1, M, T]
    faces = np.frombuffer(row["faces"], np.uint8).reshape(s, *shapes["faces"][1:])  # [S, C, D, D]
    frame_index = np.frombuffer(row["frame_index"], np.int64)  # [S]
    return ClipSegments(audio, faces, frame_index, float(row["duration_s"]))


def crop_seed(seed: int, epoch: int, clip_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(clip_id.encode())])


def collate(rows: dict[str, Any], cfg: FeatureConfig, train: bool, seed: int = 0,
            epoch: int = 0) -> dict[str, Any]:
    """A batch of segment rows (columnar: each key maps to a sequence) -> torch tensors.

    Each clip is cropped straight into the batch arrays (one copy). Faces stay uint8 here:
    :func:`engine.to_device` scales them to [-1, 1] after the copy to the device, which moves 4x
    fewer bytes and runs the conversion on the accelerator.
    """
    import torch

    shapes, n = feature_shapes(cfg), num_segments(cfg)
    ids = [str(c) for c in rows["clip_id"]]
    b = len(ids)
    audio = np.zeros((b, *shapes["audio"]), np.float32)  # [B, N, 1, M, T]
    faces = np.zeros((b, *shapes["faces"]), np.uint8)  # [B, N, C, D, D]
    mask = np.zeros((b, n), bool)  # [B, N]
    for i, clip_id in enumerate(ids):
        row = {k: rows[k][i] for k in ("n_segments", "duration_s", "audio", "faces", "frame_index")}
        segs = from_row(row, cfg)
        s = len(segs.frame_index)
        k = crop_start(s, n, train, crop_seed(seed, epoch, clip_id) if train else None)
        m = min(n, s)
        audio[i, :m] = segs.audio[k:k + m]
        faces[i, :m] = segs.faces[k:k + m]
        mask[i, :m] = True
    return {
        "clip_id": ids,
        "audio": torch.from_numpy(audio),
        "faces": torch.from_numpy(faces),
        "mask": torch.from_numpy(mask),
        "emotion": torch.as_tensor(np.asarray(rows["emotion"], np.int64)),  # [B]
        "speaker": torch.as_tensor(np.asarray(rows["speaker"], np.int64)),  # [B]
    }


# --- the cache on disk --------------------------------------------------------------------------------


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
