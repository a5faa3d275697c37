"""Ray Data ingest on a real local Ray cluster: streaming, bad clips, the feature cache, resume, abort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.media import make_clip

from emodis_ray.config import Config, load_config, replace
from emodis_ray.data.cache import CacheMismatch, find_cache
from emodis_ray.data.ingest import BadClipLog, TooManyBadClips, bad_fraction_of, cache_rows, preprocess, stream_rows
from emodis_ray.data.manifest import manifest_hash, read_manifest, write_manifest
from emodis_ray.data.rows import collate
from emodis_ray.data.sources import table_manifest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

GOOD = 10
BAD = {"truncated": "unreadable", "noaudio": "no_audio", "short": "too_short", "garbage": "unreadable"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    rows = []
    for i in range(GOOD):
        make_clip(root / f"good{i}.mp4", 2.0 + 0.4 * i, event_s=1.5)  # 2.0 .. 5.6 s: padded and cropped
        rows.append((f"good{i}", f"good{i}.mp4", f"spk{i % 3}", "neutral" if i % 2 else "anger", "train"))
    good = (root / "good0.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    make_clip(root / "noaudio.mp4", 3.0, audio=False)
    make_clip(root / "short.mp4", 0.6)
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    rows += [(name, f"{name}.mp4", "spk0", "happiness", "train") for name in BAD]
    # validation rows of the same speakers (closed-set identity)
    for i in range(3):
        make_clip(root / f"val{i}.mp4", 3.0)
        rows.append((f"val{i}", f"val{i}.mp4", f"spk{i}", "sadness", "val"))
    pd.DataFrame(rows, columns=["clip_id", "video_path", "speaker", "emotion", "split"]).to_csv(
        root / "clips.csv", index=False)
    df, _ = table_manifest(root / "clips.csv")
    write_manifest(df, root / "manifest.parquet")
    return root / "manifest.parquet"


def _cfg(**data: object) -> Config:
    return replace(load_config("tiny"), data={"rows_per_shard": 4, "decode_timeout_s": 30.0, **data})


def test_streaming_delivers_every_good_clip_and_reports_each_bad_one(cluster: None, manifest: Path) -> None:
    log = BadClipLog.remote()
    ds = stream_rows(read_manifest(manifest), "train", _cfg(), log=log, max_decoders=2)
    got = sorted(r["clip_id"] for r in ds.iter_rows())
    assert got == sorted(f"good{i}" for i in range(GOOD))
    bad, good = bad_fraction_of(log, expected=GOOD + len(BAD))
    assert good == GOOD
    assert {b["clip_id"]: b["reason"] for b in bad} == BAD
    assert all(b["clip_id"] in b["detail"] or b["detail"] for b in bad)


def test_cache_equals_stream_and_resumes_after_an_interruption(cluster: None, manifest: Path,
                                                               tmp_path: Path) -> None:
    cfg = _cfg(max_bad_fraction=0.5)
    info = preprocess(manifest, tmp_path, cfg, progress=False, max_decoders=2)
    assert info.complete and info.clips == GOOD + 3 and info.bad == len(BAD)
    assert (info.root / "bad_clips.csv").read_text().count("\n") == len(BAD) + 1
    assert find_cache(tmp_path, manifest_hash(read_manifest(manifest)), cfg.features).root == info.root

    # cached tensors equal streamed tensors, in eval and (same seed, epoch) in training crops
    df = read_manifest(manifest)
    streamed = stream_rows(df, "train", cfg, max_decoders=2).take_all()
    cached = cache_rows(info, "train").take_all()
    by_id = {r["clip_id"]: r for r in cached}
    assert sorted(by_id) == sorted(r["clip_id"] for r in streamed)
    cols = lambda rows: {k: [r[k] for r in rows] for k in rows[0]}  # noqa: E731
    s_rows = sorted(streamed, key=lambda r: r["clip_id"])
    c_rows = [by_id[r["clip_id"]] for r in s_rows]
    for train in (False, True):
        a = collate(cols(s_rows), cfg.features, train=train, seed=3, epoch=1)
        b = collate(cols(c_rows), cfg.features, train=train, seed=3, epoch=1)
        for k in ("audio", "faces", "mask", "emotion", "speaker"):
            assert bool((a[k] == b[k]).all()), k
    assert collate(cols(c_rows), cfg.features, train=False)["mask"].sum(1).min() >= 2

    # an interrupted run: two shards lost (one mid-write, as a temp file) and not yet complete
    shards = info.shards()
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    lost = [shards[1], shards[3]]
    for p in lost:
        p.unlink()
    (info.root / "shard-00001.parquet.tmp").write_bytes(b"partial")
    info.complete = False
    info.save()
    with pytest.raises(CacheMismatch, match="unfinished"):
        find_cache(tmp_path, info.manifest_hash, cfg.features)
    again = preprocess(manifest, tmp_path, cfg, progress=False, max_decoders=2)
    assert again.complete and again.clips == info.clips
    for p in shards:
        if p in lost:
            assert p.exists()
        else:
            assert p.stat().st_mtime_ns == stamps[p], f"{p.name} was decoded again"


def test_a_cache_of_another_config_is_never_used_silently(cluster: None, manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(max_bad_fraction=0.5)
    preprocess(manifest, tmp_path, cfg, progress=False, max_decoders=2)
    other = replace(cfg, features={"face_size": 16})
    with pytest.raises(CacheMismatch, match="no feature cache"):
        find_cache(tmp_path, manifest_hash(read_manifest(manifest)), other.features)
    # a different clip length reads the same cache (the crop happens at read time)
    longer = replace(cfg, features={"clip_s": 5.0})
    assert find_cache(tmp_path, manifest_hash(read_manifest(manifest)), longer.features).complete


def test_max_bad_fraction_aborts_and_keeps_the_good_shards(cluster: None, manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(TooManyBadClips, match=r"4 of 17 clips .*max_bad_fraction") as e:
        preprocess(manifest, tmp_path, _cfg(max_bad_fraction=0.1), progress=False, max_decoders=2)
    assert "bad_clips.csv" in str(e.value)
    root = next(tmp_path.glob("*/cache.json")).parent
    assert len(list(root.glob("shard-*.parquet"))) == 5  # every decoded shard kept
    with pytest.raises(CacheMismatch, match="unfinished"):
        find_cache(tmp_path, manifest_hash(read_manifest(manifest)), load_config("tiny").features)


def test_face_tracks_over_raw_video_stream_and_cache_alike(cluster: None, tmp_path: Path) -> None:
    """The VoxCeleb1 layout through Ray Data: streamed rows equal cached rows, and a raw video that is gone costs
    exactly its own tracks (each listed, reason missing_video), never the other videos' tracks."""
    from emodis_ray.config import LabelConfig, SynthConfig
    from emodis_ray.data.sources import emovox_manifest
    from emodis_ray.synth.generate import generate

    synth = SynthConfig(people=3, clips_per_person=6, videos_per_person=2, size=64, clip_s_min=1.2, clip_s_max=2.0,
                        short_clip_fraction=0.0, unheard_people=0, workers=1, seed=2)
    data = tmp_path / "vox1"
    generate(data, synth, progress=False, layout="voxceleb1")
    df, _ = emovox_manifest(data / "senet50-ferplus-logits.mat", data / "vox1_meta.csv", data / "raw",
                            LabelConfig(drop_percentile=0.0), audio=data / "wav", tracks=data / "txt")
    write_manifest(df, tmp_path / "manifest.parquet")
    df = read_manifest(tmp_path / "manifest.parquet")
    cfg = _cfg(max_bad_fraction=0.9)
    streamed = {r["clip_id"]: r for r in stream_rows(df, None, cfg, max_decoders=2).take_all()}
    assert sorted(streamed) == sorted(df["clip_id"])
    gone = df["video_abspath"].iloc[-1]
    Path(gone).unlink()
    info = preprocess(tmp_path / "manifest.parquet", tmp_path / "cache", cfg, progress=False, max_decoders=2)
    lost = sorted(df["clip_id"][df["video_abspath"] == gone])
    bad = pd.read_csv(info.root / "bad_clips.csv")
    assert sorted(bad["clip_id"]) == lost and set(bad["reason"]) == {"missing_video"} and len(lost) >= 1
    cached = cache_rows(info, None).take_all()
    assert len(cached) == len(df) - len(lost)
    for r in cached:
        s = streamed[r["clip_id"]]
        assert r["faces"] == s["faces"] and r["audio"] == s["audio"] and r["n_segments"] == s["n_segments"]
