"""Ray Data ingest on a real local Ray cluster: streaming, bad clips, the clip-keyed feature cache, resume, abort."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.media import make_clip

from emodis_ray.config import Config, load_config, replace
from emodis_ray.data.cache import CacheMismatch, find_cache
from emodis_ray.data.ingest import BadClipLog, TooManyBadClips, bad_fraction_of, cache_rows, preprocess, stream_rows
from emodis_ray.data.labels import EMOTIONS
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


def _cols(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}


def _keys(root: Path, parts: list[str]) -> list[str]:
    """Every clip key (decoded or bad) the parts were made from."""
    out = []
    for name in parts:
        d = json.loads((root / name).with_suffix(".json").read_text())
        out += d["clips"] + [b["clip_key"] for b in d["bad"]]
    return sorted(out)


def _parts(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in root.glob("part-*.parquet")}


def test_cache_equals_stream_and_resumes_after_an_interruption(cluster: None, manifest: Path,
                                                               tmp_path: Path) -> None:
    cfg = _cfg(max_bad_fraction=0.5)
    view = preprocess(manifest, tmp_path, cfg, progress=False, max_decoders=2)
    assert view.clips == GOOD + 3 and {b["clip_id"]: b["reason"] for b in view.bad} == BAD
    df = read_manifest(manifest)
    assert (view.root / f"bad_clips-{manifest_hash(df)}.csv").read_text().count("\n") == len(BAD) + 1
    assert find_cache(tmp_path, df, cfg.features).root == view.root

    # cached tensors equal streamed tensors, in eval and (same seed, epoch) in training crops
    streamed = stream_rows(df, "train", cfg, max_decoders=2).take_all()
    cached = cache_rows(view, "train").take_all()
    by_id = {r["clip_id"]: r for r in cached}
    assert sorted(by_id) == sorted(r["clip_id"] for r in streamed)
    s_rows = sorted(streamed, key=lambda r: r["clip_id"])
    c_rows = [by_id[r["clip_id"]] for r in s_rows]
    for train in (False, True):
        a = collate(_cols(s_rows), cfg.features, train=train, seed=3, epoch=1)
        b = collate(_cols(c_rows), cfg.features, train=train, seed=3, epoch=1)
        for k in ("audio", "faces", "mask", "emotion", "speaker"):
            assert bool((a[k] == b[k]).all()), k
    assert collate(_cols(c_rows), cfg.features, train=False)["mask"].sum(1).min() >= 2

    # an interrupted run: two parts lost (one mid-write, as a temp file)
    stamps = _parts(view.root)
    lost = sorted(stamps)[1:3]
    lost_keys = _keys(view.root, lost)
    for name in lost:
        (view.root / name).unlink()
    (view.root / (lost[0] + ".tmp")).write_bytes(b"partial")
    with pytest.raises(CacheMismatch, match=r"of 17 clips of this manifest are not in the feature cache"):
        find_cache(tmp_path, df, cfg.features)
    again = preprocess(manifest, tmp_path, cfg, progress=False, max_decoders=2)
    assert again.clips == view.clips and len(again.bad) == len(view.bad)
    now = _parts(view.root)
    kept = {n: t for n, t in stamps.items() if n not in lost}
    assert {n: now[n] for n in kept} == kept  # finished parts untouched
    assert _keys(view.root, [n for n in now if n not in kept]) == lost_keys  # exactly the lost clips decoded again


def test_the_cache_is_keyed_by_clip(cluster: None, manifest: Path, tmp_path: Path) -> None:
    """Other labels and splits over the same clips decode nothing; an added clip decodes alone; a changed file is
    detected and decoded again; each split reads only its own rows."""
    cfg = _cfg(max_bad_fraction=0.5)
    view = preprocess(manifest, tmp_path, cfg, progress=False, max_decoders=2)
    df = read_manifest(manifest)
    stamps = _parts(view.root)

    # each split reads only its parts, and they hold exactly its rows (parts are cut per split)
    for split, n in view.splits.items():
        assert sum(pq.ParquetFile(p).metadata.num_rows for p in view.parts(split)) == n
        assert sorted(r["clip_id"] for r in cache_rows(view, split).take_all()) == sorted(
            view.labels["clip_id"][view.labels["split"] == split])

    # another label rule and split over the same clips: zero decodes, the new labels joined at read time
    relabelled = (df["emotion_idx"] + 1) % len(EMOTIONS)
    other = df.assign(emotion_idx=relabelled, emotion=[EMOTIONS[i] for i in relabelled],
                      split=np.where(df["clip_id"].isin(["good0", "good1", "val0"]), "test", df["split"]))
    write_manifest(other, tmp_path / "other.parquet")
    v2 = preprocess(tmp_path / "other.parquet", tmp_path, cfg, progress=False, max_decoders=2)
    assert _parts(view.root) == stamps
    test = {r["clip_id"]: r["emotion"] for r in cache_rows(v2, "test").take_all()}
    want = other.set_index("clip_id")["emotion_idx"]
    assert sorted(test) == ["good0", "good1", "val0"] and all(test[c] == want[c] for c in test)
    assert len(cache_rows(v2, "train").take_all()) == GOOD - 2  # a part shared with test: filtered on read

    # one added clip: decoded alone, into one new part
    root = manifest.parent
    make_clip(root / "new.mp4", 3.0)
    added = pd.concat([df, df[df["clip_id"] == "val2"].assign(
        clip_id="new", video_path="new.mp4", video_abspath=str(root / "new.mp4"))], ignore_index=True)
    write_manifest(added, tmp_path / "added.parquet")
    with pytest.raises(CacheMismatch, match=r"1 of 18 clips .* first: new"):
        find_cache(tmp_path, read_manifest(tmp_path / "added.parquet"), cfg.features)
    preprocess(tmp_path / "added.parquet", tmp_path, cfg, progress=False, max_decoders=2)
    now = _parts(view.root)
    new = [n for n in now if n not in stamps]
    assert [now[n] for n in stamps] == list(stamps.values()) and len(new) == 1
    assert pq.ParquetFile(view.root / new[0]).metadata.num_rows == 1

    # a changed file (same path): detected, decoded again, never the old features
    make_clip(root / "new.mp4", 4.0)  # longer: 7 segments instead of 5
    with pytest.raises(CacheMismatch, match="first: new"):
        find_cache(tmp_path, read_manifest(tmp_path / "added.parquet"), cfg.features)
    v3 = preprocess(tmp_path / "added.parquet", tmp_path, cfg, progress=False, max_decoders=2)
    got = [r for r in cache_rows(v3, "val").take_all() if r["clip_id"] == "new"]
    assert len(got) == 1 and got[0]["n_segments"] == 7


def test_a_cache_of_another_config_is_never_used_silently(cluster: None, manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(max_bad_fraction=0.5)
    preprocess(manifest, tmp_path, cfg, progress=False, max_decoders=2)
    df = read_manifest(manifest)
    other = replace(cfg, features={"face_size": 16})
    with pytest.raises(CacheMismatch, match="no feature cache"):
        find_cache(tmp_path, df, other.features)
    # a different clip length reads the same cache (the crop happens at read time)
    longer = replace(cfg, features={"clip_s": 5.0})
    assert find_cache(tmp_path, df, longer.features).clips == GOOD + 3


def test_max_bad_fraction_aborts_and_keeps_the_good_parts(cluster: None, manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(TooManyBadClips, match=r"4 of 17 clips .*max_bad_fraction") as e:
        preprocess(manifest, tmp_path, _cfg(max_bad_fraction=0.1), progress=False, max_decoders=2)
    assert "bad_clips-" in str(e.value)
    root = next(tmp_path.glob("features-*"))
    assert len(list(root.glob("part-*.parquet"))) == 5  # every decoded part kept (train: 14 clips in 4, val: 1)
    # run again with a looser bound: nothing is decoded again
    stamps = _parts(root)
    view = preprocess(manifest, tmp_path, _cfg(max_bad_fraction=0.5), progress=False, max_decoders=2)
    assert _parts(root) == stamps and view.clips == GOOD + 3


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
    view = preprocess(tmp_path / "manifest.parquet", tmp_path / "cache", cfg, progress=False, max_decoders=2)
    lost = sorted(df["clip_id"][df["video_abspath"] == gone])
    bad = pd.read_csv(view.root / f"bad_clips-{manifest_hash(df)}.csv")
    assert sorted(bad["clip_id"]) == lost and set(bad["reason"]) == {"missing_video"} and len(lost) >= 1
    cached = cache_rows(view, None).take_all()
    assert len(cached) == len(df) - len(lost)
    for r in cached:
        s = streamed[r["clip_id"]]
        assert r["faces"] == s["faces"] and r["mel"] == s["mel"] and r["n_segments"] == s["n_segments"]
