"""`emodis bench ingest`, (e) and (g): what the feature cache's formats and the trainer's shuffle cost, measured
on clips already decoded (their bytes, the collate into training tensors) and on cache files (the read rate into
one consumer with each shuffle)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from emodis_ray.config import FeatureConfig


def time_per_clip(fn: Callable[[Any], object], items: list[Any], repeat: int = 1) -> float:
    """Seconds per item of ``fn`` over ``items`` (``repeat`` passes, after one warm-up call)."""
    fn(items[0])  # warm-up: imports, codec init, mel kernels
    t0 = time.perf_counter()
    for _ in range(repeat):
        for it in items:
            fn(it)
    return (time.perf_counter() - t0) / (repeat * len(items))


def cache_bytes(segs: list[Any], cfg: FeatureConfig) -> dict[str, float]:
    """(e): mean bytes of payload per clip in each cache format."""
    from emodis_ray.data.rows import to_features

    def payload(row: dict[str, Any]) -> int:
        return sum(len(v) for v in row.values() if isinstance(v, bytes))

    out = {"v1": float(np.mean([s.audio.size * 2 + s.faces.nbytes + 8 * len(s.frame_index) for s in segs]))}
    for name, codec, q in (("raw", "raw", 90), ("jpeg90", "jpeg", 90), ("jpeg75", "jpeg", 75)):
        f = dataclasses.replace(cfg, face_quality=q)
        out[name] = float(np.mean([payload(to_features(s, f, codec)) for s in segs]))
    return out


def collate_ms(segs: list[Any], cfg: FeatureConfig, codec: str, quality: int, batch_size: int,
               threads: int = 1) -> float:
    """(e): ms per clip to collate rows of this codec into training tensors (crop, log-mel cut, face decode on
    ``threads`` threads)."""
    from emodis_ray.data.rows import FaceDecoder, collate, to_row

    f = dataclasses.replace(cfg, face_quality=quality)
    rows = [to_row(f"c{i}", "train", 0, 0, s, f, codec) for i, s in enumerate(segs)]
    batches = [{k: [r[k] for r in rows[i:i + batch_size]] for k in rows[0]} for i in range(0, len(rows), batch_size)]
    decoder = FaceDecoder(threads)
    try:
        return 1e3 * time_per_clip(lambda b: collate(b, f, train=True, seed=0, epoch=1, decoder=decoder), batches,
                                    repeat=3) * len(batches) / len(rows)
    finally:
        decoder.close()


def _permute(batch: Any) -> Any:
    """A shuffle inside ``map_batches``: the rows of one window in a random order (seeded by the window)."""
    return batch.take(np.random.default_rng(batch.num_rows).permutation(batch.num_rows))


def shuffle_rates(files: list[str], batch_size: int, passes: int = 3) -> dict[str, float]:
    """(g): clips/s read from the cache ``files`` into one consumer with each shuffle strategy (best of
    ``passes``, after each pass's first batch, as (d)): none, the trainer's seeded local buffer (``SHUFFLE_ROWS``),
    a window of 64 rows shuffled inside ``map_batches``."""
    import ray

    from emodis_ray.data.rows import FEATURE_SCHEMA
    from emodis_ray.train.worker import SHUFFLE_ROWS

    def rate(buffer: int | None, window: int | None) -> float:
        best = float("inf")
        for _ in range(passes):
            ds = ray.data.read_parquet(files, schema=FEATURE_SCHEMA)
            if window:
                ds = ds.map_batches(_permute, batch_format="pyarrow", batch_size=window)
            m, t_first = 0, 0.0
            for b in ds.iter_batches(batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=buffer,
                                     local_shuffle_seed=0 if buffer else None):
                if not t_first:  # after the first batch (a pass's start-up, and the buffer's first fill)
                    t_first = time.perf_counter()
                else:
                    m += len(b["clip_key"])
            best = min(best, (time.perf_counter() - t_first) / max(m, 1))
        return 1.0 / best

    return {"none": rate(None, None), f"local buffer, {SHUFFLE_ROWS} clips (trainer)": rate(SHUFFLE_ROWS, None),
            "in map_batches, window of 64 clips": rate(None, 64)}
