"""The clip-keyed feature cache without Ray: keys, parts, row groups bounded in bytes, the manifest's view."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from emodis_ray.config import FeatureConfig
from emodis_ray.data.cache import CacheIndex, CacheMismatch, cache_root, clip_key, find_cache, write_part
from emodis_ray.data.features import ClipSegments, feature_shapes
from emodis_ray.data.rows import FEATURE_SCHEMA, to_features

CFG = FeatureConfig(clip_s=3.0, segment_s=1.0, hop_s=0.5, face_size=64)


def _segs(seed: int, s: int = 5) -> ClipSegments:
    rng = np.random.default_rng(seed)
    shapes = feature_shapes(CFG)
    audio = rng.standard_normal((s, *shapes["audio"][1:])).astype(np.float32)  # [S, 1, M, T]
    faces = rng.integers(0, 256, (s, *shapes["faces"][1:]), dtype=np.uint8)  # [S, C, D, D]: 12 KB each
    return ClipSegments(audio, faces, np.arange(s, dtype=np.int64), 3.0)


def test_a_clip_key_follows_its_files(tmp_path: Path) -> None:
    v, a = tmp_path / "v.mp4", tmp_path / "a.wav"
    v.write_bytes(b"video")
    a.write_bytes(b"audio")
    k = clip_key(str(v), str(a))
    assert clip_key(str(v), str(a)) == k and clip_key(str(v)) != k  # the audio file is part of the clip
    os.utime(a, ns=(1, 1))  # touched: another modification time
    assert clip_key(str(v), str(a)) != k
    t = clip_key(str(v), str(a))
    a.write_bytes(b"audio, longer")  # rewritten: another size (and time)
    assert clip_key(str(v), str(a)) not in (k, t)
    assert clip_key(str(tmp_path / "gone.mp4")) != clip_key(str(v))  # a missing file still has a key


def test_row_groups_never_exceed_their_byte_bound(tmp_path: Path) -> None:
    rows = [to_features(_segs(i), CFG, "raw", f"k{i}") for i in range(12)]  # ~100 KB of payload each
    size = sum(len(v) for v in rows[0].values() if isinstance(v, bytes))
    bound_mb = 2.5 * size / 1e6  # two clips fit, three do not
    path = write_part(tmp_path, rows, [], [r["clip_key"] for r in rows], row_group_mb=bound_mb)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 12 and meta.num_row_groups == 6
    for g in range(meta.num_row_groups):
        payload = sum(meta.row_group(g).column(c).total_uncompressed_size for c in range(meta.num_columns))
        assert payload <= bound_mb * 1e6 + 4096  # the bound plus Parquet's page headers
    # a clip larger than the bound is written alone, never dropped
    alone = write_part(tmp_path, rows[:3], [], ["a", "b", "c"], row_group_mb=size / 2e6)
    assert pq.ParquetFile(alone).metadata.num_row_groups == 3
    # large binary columns: 64-bit offsets, no 2 GiB limit per column chunk
    assert str(pq.read_schema(path).field("faces").type) == "large_binary" == str(FEATURE_SCHEMA.field("faces").type)


def test_the_view_joins_labels_and_names_missing_clips(tmp_path: Path) -> None:
    files = []
    for i in range(4):
        p = tmp_path / f"c{i}.mp4"
        p.write_bytes(bytes([i]) * (i + 1))
        files.append(str(p))
    df = pd.DataFrame({"clip_id": [f"c{i}" for i in range(4)], "split": ["train", "train", "val", "test"],
                       "emotion_idx": [0, 1, 2, 3], "speaker_idx": [0, 1, 0, 1], "video_abspath": files,
                       "audio_abspath": [None] * 4})
    root = cache_root(tmp_path / "cache", CFG)
    root.mkdir(parents=True)
    keys = [clip_key(f) for f in files]
    write_part(root, [to_features(_segs(0), CFG, "raw", keys[0]), to_features(_segs(1), CFG, "raw", keys[1])],
               [], keys[:2])
    write_part(root, [to_features(_segs(2), CFG, "raw", keys[2])],
               [{"clip_key": keys[3], "reason": "too_short", "detail": "c3.mp4: 0.4 s"}], keys[2:])
    view = find_cache(tmp_path / "cache", df, CFG)
    assert view.splits == {"train": 2, "val": 1} and view.bad == [
        {"clip_id": "c3", "reason": "too_short", "detail": "c3.mp4: 0.4 s"}]
    assert len(view.parts("train")) == 1 and len(view.parts("val")) == 1 and view.parts("test") == []
    assert view.labels.set_index("clip_id").loc["c1", "emotion"] == 1
    # a part whose Parquet never landed (interrupted) is not in the cache
    (root / "part-unfinished.json").write_text('{"clips": ["zz"], "bad": []}')
    assert "zz" not in CacheIndex.load(root)
    # a changed file: its clip is missing, by name
    Path(files[1]).write_bytes(b"changed content")
    with pytest.raises(CacheMismatch, match=r"1 of 4 clips .*first: c1"):
        find_cache(tmp_path / "cache", df, CFG)
