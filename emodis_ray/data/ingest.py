"""Ray Data ingest: manifest -> decoded segment rows, streamed or from the decode-once feature cache.

Choices (for a node of C CPUs):
- Decoding runs in an actor pool (``map_batches`` with a class): each actor keeps one sandboxed
  decoder process (see ``decode.py``), so codec start-up is paid once per actor, not per clip.
  One CPU and one decoder thread per actor; Ray runs up to ``max_decoders`` actors (default: all
  CPUs the training workers leave free — never zero, or Ray Data starves and the job hangs).
- Batches of 4 clips per actor call: small enough that a slow clip doesn't hold up many others,
  large enough to amortise the per-call overhead (≈1 ms vs 20–150 ms per clip).
- Output blocks are clip rows (``rows.ROW_SCHEMA``, ~0.05–4 MB per clip). Ray Data's default
  streaming backpressure caps the bytes in flight, so a fast decoder cannot flood the object store.
- ``preserve_order`` is on: rows reach the trainer in manifest order whatever actor decoded them,
  which makes runs reproducible; shuffling happens in the consumer's local buffer (seeded).
Bad clips are skipped and reported to a small actor (:class:`BadClipLog`); the driver writes them
to ``bad_clips.csv`` and checks ``max_bad_fraction``.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from emodis_ray.config import Config, FeatureConfig
from emodis_ray.data.cache import CacheIndex, CacheView, cache_root, find_cache, manifest_keys, write_part
from emodis_ray.data.decode import ClipDecoder
from emodis_ray.data.features import BadClip, ClipSegments
from emodis_ray.data.manifest import manifest_hash, read_manifest
from emodis_ray.data.rows import FEATURE_SCHEMA, LABEL_FIELDS, ROW_SCHEMA, to_features, to_row
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


def _decode(decoder: ClipDecoder, batch: pd.DataFrame) -> list[tuple[Any, ClipSegments | BadClip]]:
    """Decode a batch of manifest rows, in order: (row, segments or the reason it failed). Face tracks of one
    raw video go to the decoder in one call (one open, one frame read); face-crop clips one at a time."""
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
    return [(r, results[i]) for i, r in enumerate(records)]


def _bad_record(r: Any, e: BadClip, key: str | None = None) -> dict[str, str]:
    return {**({"clip_key": key} if key else {"clip_id": r.clip_id}), "reason": e.reason, "detail": e.detail}


def _decode_rows(decoder: ClipDecoder, batch: pd.DataFrame,
                 cfg: FeatureConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Streaming: rows with labels and raw faces, and the bad clips by clip id."""
    rows, bad = [], []
    for r, res in _decode(decoder, batch):
        if isinstance(res, BadClip):
            bad.append(_bad_record(r, res))
        else:
            rows.append(to_row(r.clip_id, r.split, r.emotion_idx, r.speaker_idx, res, cfg))
    return rows, bad


class DecodeClips:
    """Ray Data UDF: a batch of manifest rows -> a batch of segment rows (bad clips dropped, reported)."""

    def __init__(self, features: dict[str, Any], timeout_s: float, retries: int, log: Any) -> None:
        self.cfg = FeatureConfig(**features)
        self.decoder = ClipDecoder(self.cfg, timeout_s, retries)
        self.log = log

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        t0 = time.perf_counter()
        rows, bad = _decode_rows(self.decoder, batch, self.cfg)
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


def _join_labels(batch: pa.Table, labels: Any) -> pa.Table:
    """Ray Data UDF: feature rows (with the ``path`` of their part) -> rows with the manifest's labels, one per
    manifest row of the clip; rows of clips the manifest does not ask for here, or read from a second copy of
    a clip (two preprocess runs at once), are dropped."""
    table = _labels(labels)
    keys, parts = batch["clip_key"].to_pylist(), [os.path.basename(p) for p in batch["path"].to_pylist()]
    take: list[int] = []
    got: list[list[Any]] = []
    for i, (k, part) in enumerate(zip(keys, parts, strict=True)):
        for lab in table.get((k, part), ()):
            take.append(i)
            got.append(lab)
    out = batch.select(FEATURE_SCHEMA.names).take(pa.array(take, pa.int64()))
    cols = list(zip(*got, strict=True)) if got else [[] for _ in LABEL_FIELDS]
    labels_tbl = pa.table({name: pa.array(c, t) for (name, t), c in zip(LABEL_FIELDS, cols, strict=True)})
    return pa.Table.from_arrays([*labels_tbl.columns, *out.columns], schema=ROW_SCHEMA)


_LABELS: dict[str, dict[tuple[str, str], list[tuple[str, str, int, int]]]] = {}


def _labels(ref: Any) -> dict[tuple[str, str], list[tuple[str, str, int, int]]]:
    """The label table behind an object ref, fetched once per process."""
    key = ref.hex()
    if key not in _LABELS:
        df: pd.DataFrame = ray.get(ref)
        table: dict[tuple[str, str], list[tuple[str, str, int, int]]] = {}
        for r in df.itertuples(index=False):
            table.setdefault((r.clip_key, r.part), []).append((r.clip_id, r.split, int(r.emotion), int(r.speaker)))
        _LABELS.clear()
        _LABELS[key] = table
    return _LABELS[key]


def cache_rows(view: CacheView, split: str | Iterable[str] | None,
               materialize: bool | None = None) -> ray.data.Dataset:
    """Rows of one split (or several; all when None) read back from the feature cache, labels joined.

    Only the parts that hold the split's clips are read (preprocess cuts parts per split, so for the manifest
    that built the cache these hold exactly the split's rows); the label join drops any other clip a part
    holds. Each pass over a Ray Data read pays a fixed start-up (planning, read tasks: about 1-2 s here), so
    a split small enough to sit in a quarter of the object store is materialised once (``materialize=None``,
    the default) and every epoch then iterates it from memory.
    """
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    rows = view.rows_of(split)
    parts = view.parts(split)
    if not parts:
        return ray.data.from_arrow(ROW_SCHEMA.empty_table())
    ds = ray.data.read_parquet([str(p) for p in parts], schema=FEATURE_SCHEMA, include_paths=True)
    labels = ray.put(rows[["clip_key", "part", "clip_id", "split", "emotion", "speaker"]])
    ds = ds.map_batches(_join_labels, batch_format="pyarrow", batch_size=None, fn_kwargs={"labels": labels})
    if materialize is None:
        size = sum(p.stat().st_size for p in parts)
        materialize = size < 0.25 * ray.available_resources().get("object_store_memory", 0)
    return ds.materialize() if materialize else ds


def split_rows(df: pd.DataFrame, view: CacheView | None, split: str, cfg: Config, log: Any = None,
               max_decoders: int | None = None) -> tuple[ray.data.Dataset, str]:
    """The rows of a split from the cache ``view`` (the manifest ``df`` seen through ``data.cache_dir``, found once
    by the caller), else streamed."""
    if view is not None:
        return cache_rows(view, split), f"cache {view.root}"
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
class PartWriter:
    """Holds one sandboxed decoder; decodes and writes whole parts."""

    def __init__(self, features: dict[str, Any], timeout_s: float, retries: int, row_group_mb: float) -> None:
        self.cfg = FeatureConfig(**features)
        self.decoder = ClipDecoder(self.cfg, timeout_s, retries)
        self.row_group_mb = row_group_mb

    def write(self, root: str, rows: pd.DataFrame) -> tuple[int, int]:
        t0 = time.perf_counter()
        good, bad = [], []
        for r, res in _decode(self.decoder, rows):
            if isinstance(res, BadClip):
                bad.append(_bad_record(r, res, r.clip_key))
            else:
                good.append(to_features(res, self.cfg, self.cfg.face_codec, r.clip_key))
        record_ingest(len(good), len(bad), time.perf_counter() - t0)
        write_part(Path(root), good, bad, list(rows["clip_key"]), self.row_group_mb)
        return len(good), len(bad)


def plan_parts(todo: pd.DataFrame, per: int) -> list[pd.DataFrame]:
    """Clips to decode -> parts of at most ``per`` clips, each of one split (so a split reads only its parts).

    Within a split the clips go in clip-key order, a hash: a random mix of people and sessions in every part,
    where clip-id order would put one person's clips side by side and leave the trainer's local shuffle buffer
    (a window of ``SHUFFLE_ROWS`` clips over the read stream) batches of two or three people at paper scale."""
    out = []
    for _, rows in todo.sort_values(["split", "clip_key"]).groupby("split", sort=True):
        out += [rows.iloc[i:i + per] for i in range(0, len(rows), per)]
    return out


def preprocess(manifest_path: Path, cache_dir: Path, cfg: Config, progress: bool = True,
               max_decoders: int | None = None) -> CacheView:
    """Decode every clip of the manifest that the cache does not hold yet into
    ``cache_dir/features-<feature hash>/``, and return the manifest's view of the cache.

    Clips already decoded (by this manifest or any other) are not decoded again; finished parts of an
    interrupted run are kept. The manifest's bad clips go to ``bad_clips-<manifest hash>.csv`` in the cache.
    """
    from tqdm import tqdm

    df = read_manifest(manifest_path)
    root = cache_root(cache_dir, cfg.features)
    root.mkdir(parents=True, exist_ok=True)
    keys = manifest_keys(df)  # one stat of each clip file: the plan and the view below both use these keys
    rows = manifest_rows(df, None).assign(clip_key=keys.to_numpy())
    idx = CacheIndex.load(root)
    todo = rows[~rows["clip_key"].isin(set(idx.parts) | set(idx.bad))].drop_duplicates("clip_key")
    parts = plan_parts(todo, cfg.data.rows_per_shard)
    t0 = time.perf_counter()
    if parts:
        n_workers = max(1, min(len(parts), decoder_count(max_decoders)))
        writers = [PartWriter.remote(asdict(cfg.features), cfg.data.decode_timeout_s, cfg.data.decode_retries,
                                     cfg.data.row_group_mb) for _ in range(n_workers)]
        pool = ray.util.ActorPool(writers)
        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), unit="clip", desc="preprocess",
                   disable=not progress)
        for part in parts:
            pool.submit(lambda a, p: a.write.remote(str(root), p), part)
        while pool.has_next():
            good, nbad = pool.get_next_unordered()
            bar.update(good + nbad)
        bar.close()
        for w in writers:
            ray.kill(w)
    view = find_cache(cache_dir, df, cfg.features, keys)
    bad_csv = root / f"bad_clips-{manifest_hash(df)}.csv"
    write_bad_clips(bad_csv, view.bad)
    check_bad_fraction(len(view.bad), len(df), cfg.data.max_bad_fraction, bad_csv)
    if progress:
        print(f"preprocess: {view.clips} clips, {len(view.bad)} bad; {len(todo)} decoded into {len(parts)} parts, "
              f"{len(rows) - len(todo)} already in the cache, in {time.perf_counter() - t0:.1f} s -> {root}")
    return view


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
