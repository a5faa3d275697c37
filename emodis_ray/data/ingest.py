"""Ray Data ingest: manifest -> decoded segment rows, streamed or from the decode-once feature cache.

Choices (for a node of C CPUs):
- Decoding runs in an actor pool (``map_batches`` with a class): each actor keeps one sandboxed
  decoder process (see ``decode.py``), so codec start-up is paid once per actor, not per clip.
  One CPU and one decoder thread per actor; Ray runs up to ``max_decoders`` actors (default: all
  CPUs the training workers leave free — never zero, or Ray Data starves and the job hangs).
- Batches of 4 clips per actor call: small enough that a slow clip doesn't hold up many others,
  large enough to amortise the per-call overhead (≈1 ms vs 20–150 ms per clip).
- Output blocks are segment rows (``rows.ROW_SCHEMA``, ~0.1–4 MB per clip). Ray Data's default
  streaming backpressure caps the bytes in flight, so a fast decoder cannot flood the object store.
- ``preserve_order`` is on: rows reach the trainer in manifest order whatever actor decoded them,
  which makes runs reproducible; shuffling happens in the consumer's local buffer (seeded).
Bad clips are skipped and reported to a small actor (:class:`BadClipLog`); the driver writes them
to ``bad_clips.csv`` and checks ``max_bad_fraction``.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from emodis_ray.config import Config, FeatureConfig
from emodis_ray.data.cache import CacheInfo, cache_root, find_cache, read_bad, write_shard
from emodis_ray.data.decode import ClipDecoder
from emodis_ray.data.features import BadClip, ClipSegments
from emodis_ray.data.manifest import manifest_hash, read_manifest
from emodis_ray.data.rows import ROW_SCHEMA, to_row
from emodis_ray.runtime.session import decoder_count
from emodis_ray.runtime.telemetry import record_ingest

ROW_COLUMNS = ["clip_id", "split", "emotion_idx", "speaker_idx", "video_abspath", "audio_abspath", "track_abspath"]


class TooManyBadClips(ValueError):
    """More clips failed to decode than ``data.max_bad_fraction`` allows: bad input, so a ``ValueError`` (the
    command line prints it as one line, exit 2). The message is one line naming the ``bad_clips.csv`` written."""


@ray.remote(num_cpus=0)
class BadClipLog:
    """Collects bad clips reported by decode actors anywhere in the cluster."""

    def __init__(self) -> None:
        self.bad: list[dict[str, str]] = []
        self.good = 0

    def report(self, bad: list[dict[str, str]], good: int) -> None:
        self.bad.extend(bad)
        self.good += good

    def get(self) -> tuple[list[dict[str, str]], int]:
        return self.bad, self.good


def _decode_rows(decoder: ClipDecoder, batch: pd.DataFrame) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Decode a batch of manifest rows, in order. Face tracks of one raw video go to the decoder in one call
    (one open, one frame read); face-crop clips one at a time."""
    results: dict[int, ClipSegments | BadClip] = {}
    records = list(batch.itertuples(index=False))
    by_video: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        track = getattr(r, "track_abspath", None)
        if isinstance(track, str):
            by_video.setdefault(r.video_abspath, []).append(i)
            continue
        try:
            results[i] = decoder(r.video_abspath, r.audio_abspath if isinstance(r.audio_abspath, str) else None)
        except BadClip as e:
            results[i] = e
    for video, idx in by_video.items():
        got = decoder.tracks(video, [(records[i].track_abspath, records[i].audio_abspath) for i in idx])
        results.update(zip(idx, got, strict=True))
    rows, bad = [], []
    for i, r in enumerate(records):
        res = results[i]
        if isinstance(res, BadClip):
            bad.append({"clip_id": r.clip_id, "reason": res.reason, "detail": res.detail})
        else:
            rows.append(to_row(r.clip_id, r.split, r.emotion_idx, r.speaker_idx, res))
    return rows, bad


class DecodeClips:
    """Ray Data UDF: a batch of manifest rows -> a batch of segment rows (bad clips dropped, reported)."""

    def __init__(self, features: dict[str, Any], timeout_s: float, retries: int, log: Any) -> None:
        self.decoder = ClipDecoder(FeatureConfig(**features), timeout_s, retries)
        self.log = log

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        t0 = time.perf_counter()
        rows, bad = _decode_rows(self.decoder, batch)
        record_ingest(len(rows), len(bad), time.perf_counter() - t0)  # no-op outside Ray
        if self.log is not None:
            self.log.report.remote(bad, len(rows))  # fire and forget
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)

    def __del__(self) -> None:
        self.decoder.close()


def manifest_rows(manifest: pd.DataFrame, split: str | None) -> pd.DataFrame:
    df = manifest if split is None else manifest[manifest["split"] == split]
    return df[ROW_COLUMNS].reset_index(drop=True)


def stream_rows(manifest: pd.DataFrame, split: str | None, cfg: Config, log: Any = None,
                max_decoders: int | None = None) -> ray.data.Dataset:
    """Segment rows of one split (all when ``split`` is None), decoded on the fly by an actor pool."""
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    rows = pa.Table.from_pandas(manifest_rows(manifest, split), preserve_index=False)
    # from_arrow, not from_pandas: Ray 2.60's from_pandas trips over pandas 3's string columns.
    n_blocks = max(1, min(rows.num_rows // 4, 2000))  # ~4 clips a block: work spreads over actors
    step = max(1, -(-rows.num_rows // n_blocks))
    ds = ray.data.from_arrow([rows.slice(i, step) for i in range(0, rows.num_rows, step)] or [rows])
    return ds.map_batches(
        DecodeClips, batch_format="pandas", batch_size=4, num_cpus=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=decoder_count(max_decoders)),
        fn_constructor_kwargs={"features": asdict(cfg.features), "timeout_s": cfg.data.decode_timeout_s,
                               "retries": cfg.data.decode_retries, "log": log},
    )


def cache_rows(info: CacheInfo, split: str | None, materialize: bool | None = None) -> ray.data.Dataset:
    """Segment rows of one split read back from a complete feature cache.

    Each pass over a Ray Data read pays a fixed start-up (planning, read tasks: about 1-2 s here).
    A cache small enough to sit in a quarter of the object store is therefore materialised once
    (``materialize=None``, the default) and every epoch then iterates it from memory.
    """
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    shards = info.shards()
    ds = ray.data.read_parquet([str(p) for p in shards], schema=ROW_SCHEMA)
    if split is not None:
        ds = ds.filter(expr=f"split == '{split}'")
    if materialize is None:
        size = sum(p.stat().st_size for p in shards)
        materialize = size < 0.25 * ray.available_resources().get("object_store_memory", 0)
    return ds.materialize() if materialize else ds


def split_rows(manifest_path: Path, split: str, cfg: Config, log: Any = None,
               max_decoders: int | None = None) -> tuple[ray.data.Dataset, str]:
    """The rows of a split from the cache when ``data.cache_dir`` is set (it must match), else streamed."""
    df = read_manifest(manifest_path)
    if cfg.data.cache_dir:
        info = find_cache(cfg.data.cache_dir, manifest_hash(df), cfg.features)
        return cache_rows(info, split), f"cache {info.root}"
    return stream_rows(df, split, cfg, log, max_decoders), "streaming decode"


def write_bad_clips(path: Path, bad: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "reason", "detail"])
        w.writeheader()
        w.writerows(sorted(bad, key=lambda b: b["clip_id"]))


def check_bad_fraction(bad: int, total: int, max_fraction: float, where: Path) -> None:
    """Raise :class:`TooManyBadClips` when ``bad`` of ``total`` clips is more than ``max_fraction``; ``where``
    is the ``bad_clips.csv`` already written, which lists each clip and its reason."""
    if total and bad / total > max_fraction:
        raise TooManyBadClips(f"{bad} of {total} clips ({bad / total:.1%}) could not be decoded, more than "
                              f"data.max_bad_fraction = {max_fraction:.1%}; see {where} for each clip and reason")


# --- preprocess: decode once into sharded Parquet ------------------------------------------------------


@ray.remote(num_cpus=1)
class ShardWriter:
    """Holds one sandboxed decoder; writes whole shards."""

    def __init__(self, features: dict[str, Any], timeout_s: float, retries: int) -> None:
        self.decoder = ClipDecoder(FeatureConfig(**features), timeout_s, retries)

    def write(self, path: str, rows: pd.DataFrame) -> tuple[int, int]:
        t0 = time.perf_counter()
        good, bad = _decode_rows(self.decoder, rows)
        record_ingest(len(good), len(bad), time.perf_counter() - t0)
        write_shard(Path(path), good, bad)
        return len(good), len(bad)


def preprocess(manifest_path: Path, cache_dir: Path, cfg: Config, progress: bool = True,
               max_decoders: int | None = None) -> CacheInfo:
    """Decode every clip of the manifest once into ``cache_dir/<manifest hash>-<feature hash>/``.

    Finished shards are kept: running it again after an interruption decodes only what is missing.
    """
    from tqdm import tqdm

    df = read_manifest(manifest_path)
    rows = manifest_rows(df.sort_values("clip_id"), None)
    per = cfg.data.rows_per_shard
    n_shards = max(1, -(-len(rows) // per))
    root = cache_root(cache_dir, manifest_hash(df), cfg.features)
    root.mkdir(parents=True, exist_ok=True)
    info = CacheInfo(root, manifest_hash(df), asdict(cfg.features), n_shards)
    if (root / "cache.json").exists():
        info = CacheInfo.load(root)
        info.complete = False
    info.save()
    todo = [i for i in range(n_shards) if not info.shard_path(i).exists()]
    t0 = time.perf_counter()
    n_workers = max(1, min(len(todo), decoder_count(max_decoders)))
    writers = [ShardWriter.remote(asdict(cfg.features), cfg.data.decode_timeout_s, cfg.data.decode_retries)
               for _ in range(n_workers)]
    pool = ray.util.ActorPool(writers)
    bar = tqdm(total=len(rows), initial=len(rows) - sum(len(rows[i * per:(i + 1) * per]) for i in todo),
               unit="clip", desc="preprocess", disable=not progress)
    for i in todo:
        pool.submit(lambda a, i: a.write.remote(str(info.shard_path(i)), rows.iloc[i * per:(i + 1) * per]), i)
    while pool.has_next():
        good, nbad = pool.get_next_unordered()
        bar.update(good + nbad)
    bar.close()
    for w in writers:
        ray.kill(w)
    bad = read_bad(info)
    write_bad_clips(root / "bad_clips.csv", bad)
    info.bad = len(bad)
    info.clips = len(rows) - len(bad)
    bad_ids = {b["clip_id"] for b in bad}
    kept = df[~df["clip_id"].isin(bad_ids)]
    info.splits = {str(k): int(v) for k, v in kept["split"].value_counts().sort_index().items()}
    check_bad_fraction(len(bad), len(rows), cfg.data.max_bad_fraction, root / "bad_clips.csv")
    info.complete = True
    info.save()
    dt = time.perf_counter() - t0
    if progress:
        print(f"preprocess: {info.clips} clips in {len(info.shards())} shards, {info.bad} bad, "
              f"{len(todo)} shards decoded in {dt:.1f} s -> {root}")
    return info


def bad_fraction_of(log: Any, expected: int | None = None, timeout_s: float = 30.0) -> tuple[list[dict[str, str]], int]:
    """(bad clips, good count) reported to a :class:`BadClipLog`.

    Decode actors report fire-and-forget, so a report can land just after the data has been consumed:
    with ``expected`` (the clips sent through), wait up to ``timeout_s`` until all are accounted for.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        bad, good = ray.get(log.get.remote())
        if expected is None or len(bad) + good >= expected or time.monotonic() > deadline:
            return bad, good
        time.sleep(0.1)


def rows_to_numpy(ds: ray.data.Dataset) -> dict[str, np.ndarray]:
    """Materialise a (small) dataset's columns on the driver; for tests and inspection."""
    return {k: np.asarray(v) for k, v in ds.to_pandas().to_dict("list").items()}
