"""Synthetic EmoVox writer: real on-disk formats, determinism, the entanglement knob."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from emodis_ray.config import LabelConfig, SynthConfig
from emodis_ray.data.labels import FERPLUS_CLASSES, dominant_emotion8, mutual_information
from emodis_ray.data.manifest import manifest_hash
from emodis_ray.data.sources import emovox_manifest
from emodis_ray.synth.generate import (
    CONFIG_NAME,
    MAT_NAME,
    META_NAME,
    TRUTH_NAME,
    generate,
    sample_labels,
    write_mp4,
)
from emodis_ray.synth.render import teacher_logits

SMALL = SynthConfig(people=3, clips_per_person=4, videos_per_person=2, size=40, clip_s_min=1.0, clip_s_max=1.6,
                    short_clip_fraction=0.25, unheard_people=1, workers=1, seed=3)
SR = 16000  # size 40: decord2 3.4 misreads frames of some widths (8, 16, 24, 32, 48, 96, 144)
YT_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")


def _decord():
    from emodis_ray.data._decord import load_decord  # never a plain `import decord` (see that module)

    return load_decord()


def _frames(path: Path) -> np.ndarray:
    vr = _decord().VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def _audio(path: Path) -> np.ndarray:
    return _decord().AudioReader(str(path), sample_rate=SR, mono=True)[:].asnumpy()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    generate(out, SMALL, progress=False)
    return out


def test_write_mp4_round_trip(tmp_path):
    fps, t_n, h, w = 25.0, 30, 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack([np.stack([xx * 3 + i, yy * 4, np.full_like(xx, 128)], -1) for i in range(t_n)])
    frames[:, 10:20, 20:30] = 230
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    n = int(t_n / fps * SR)
    audio = (0.1 * np.sin(2 * np.pi * 300 * np.arange(n) / SR)).astype(np.float32)
    event = int(0.5 * SR)
    audio[event:event + 80] = 0.9  # a click at 0.5 s
    path = tmp_path / "a" / "clip.mp4"
    write_mp4(path, frames, audio, fps, SR)

    vr = _decord().VideoReader(str(path))
    assert len(vr) == t_n and vr.get_avg_fps() == pytest.approx(fps)
    assert np.abs(_frames(path).astype(float) - frames).mean() < 4.0
    got = _audio(path)
    assert got.shape[0] == 1 and n <= got.shape[1] <= n + 1024  # zero-padded to whole AAC frames
    # no start offset: the encoder priming is hidden by the mp4 edit list
    env = np.abs(got[0])
    assert abs(int(np.argmax(env > 0.5)) - event) < 0.010 * SR
    assert not list(tmp_path.glob("a/.*"))  # no temporary files left


def test_write_mp4_video_only_and_errors(tmp_path):
    import av

    frames = np.zeros((5, 16, 16, 3), np.uint8)
    write_mp4(tmp_path / "v.mp4", frames, None, 25.0, SR)
    with av.open(str(tmp_path / "v.mp4")) as c:
        assert len(c.streams.audio) == 0 and c.streams.video[0].frames == 5
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), None, 25.0, SR)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.float32), None, 25.0, SR)


def test_layout_and_decoding(small):
    truth = pd.read_parquet(small / TRUTH_NAME)
    n_people = SMALL.people + SMALL.unheard_people
    assert len(truth) == n_people * SMALL.clips_per_person
    assert set(truth.true_emotion) <= set(FERPLUS_CLASSES)
    decord = _decord()
    for row in truth.itertuples():
        path = small / "videos" / f"{row.clip_id}.mp4"
        assert re.fullmatch(r"id\d{5}/[A-Za-z0-9_-]{11}/\d{5}", row.clip_id)
        vr = decord.VideoReader(str(path))
        assert vr.get_avg_fps() == pytest.approx(SMALL.fps)
        assert abs(len(vr) - row.duration_s * SMALL.fps) <= 1
        assert vr[0].shape == (SMALL.size, SMALL.size, 3)
        audio = _audio(path)
        samples = row.duration_s * SR
        assert audio.shape[0] == 1 and samples - 1 <= audio.shape[1] <= samples + 1024
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.05
    assert (truth.duration_s >= 0.6).all() and (truth.duration_s <= SMALL.clip_s_max + 1 / SMALL.fps).all()
    saved = SynthConfig(**yaml.safe_load((small / CONFIG_NAME).read_text()))
    assert saved == SMALL


def test_mat_and_meta(small):
    from scipy.io import loadmat

    truth = pd.read_parquet(small / TRUTH_NAME)
    meta = pd.read_csv(small / META_NAME, sep="\t")
    assert list(meta.columns) == ["VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set"]
    assert meta["VGGFace1 ID"].is_unique and set(meta.Set) == {"dev", "test"}
    name_to_id = dict(zip(meta["VGGFace1 ID"], meta["VoxCeleb1 ID"], strict=True))

    mat = loadmat(small / MAT_NAME)
    logits = mat["wavLogits"]
    images = mat["images"][0, 0]
    names = [str(x[0]) for x in images["name"][0]]
    sets = images["set"][0]
    assert logits.shape == (1, len(truth)) == images["name"].shape == images["sp"].shape
    clip_ids, video_ids = [], set()
    for i, name in enumerate(names):
        person, folder, rest = name.split("/")
        assert folder in ("train", "test") and rest.endswith(".wav")
        video, track = rest[: -len(".wav")].rsplit("_", 1)  # video ids may contain "_"
        assert YT_ID.match(video) and re.fullmatch(r"\d{7}", track)
        video_ids.add(video)
        clip_ids.append(f"{name_to_id[person]}/{video}/{int(track):05d}")
        frames = int(round(truth.duration_s[i] * SMALL.fps))
        assert logits[0, i].dtype == np.float32 and logits[0, i].shape == (-(-frames // 6), 8)
    assert clip_ids == list(truth.clip_id)
    assert any("_" in v for v in video_ids) and any("-" in v for v in video_ids)
    assert set(sets) == {1.0, 2.0, 3.0} and list(sets) == list(truth.set)
    # whole videos in one set; every heard person has train and heard videos; unheard people only set 2
    by_video = truth.assign(video=truth.clip_id.str.rsplit("/", n=1).str[0]).groupby("video").set.nunique()
    assert (by_video == 1).all()
    for person, sub in truth.groupby("person"):
        s = set(sub.set)
        assert s == {2} or s == {1, 3}, (person, s)
        assert (meta.loc[meta["VoxCeleb1 ID"] == person, "Set"].item() == "test") == (s == {2})


def test_deterministic(small, tmp_path):
    again = tmp_path / "again"
    generate(again, SMALL, progress=False)
    t1, t2 = pd.read_parquet(small / TRUTH_NAME), pd.read_parquet(again / TRUTH_NAME)
    pd.testing.assert_frame_equal(t1, t2)
    clip = t1.clip_id[0]
    np.testing.assert_array_equal(_frames(small / "videos" / f"{clip}.mp4"),
                                  _frames(again / "videos" / f"{clip}.mp4"))
    # the encoders run single-threaded: even the bytes match
    assert (small / "videos" / f"{clip}.mp4").read_bytes() == (again / "videos" / f"{clip}.mp4").read_bytes()
    # the same adapter that reads real EmoVox reads both sets into identical manifests
    m1, m2 = (emovox_manifest(d / MAT_NAME, d / META_NAME, d / "videos", LabelConfig(drop_percentile=0.0))[0]
              for d in (small, again))
    assert len(m1) > 0 and manifest_hash(m1) == manifest_hash(m2)
    cols = ["clip_id", "speaker", "emotion", "split", "video_id"]
    pd.testing.assert_frame_equal(m1[cols], m2[cols])
    with pytest.raises(FileExistsError):
        generate(again, SMALL, progress=False)

    other = dataclasses.replace(SMALL, seed=SMALL.seed + 1)
    t3 = sample_labels(other)
    assert list(t3.clip_id) != list(t1.clip_id)
    summary = generate(again, other, progress=False, overwrite=True)
    assert summary.clips == len(t3) and "clips" in str(summary)
    first = again / "videos" / f"{t3.clip_id[0]}.mp4"
    assert _frames(first).shape[1:] == (SMALL.size, SMALL.size, 3)
    assert not (again / "videos" / f"{clip}.mp4").exists()  # overwrite cleared the old set


def test_entanglement_knob():
    big = dict(people=12, clips_per_person=200, videos_per_person=6)
    free = sample_labels(SynthConfig(prior_skew=0.0, **big))
    skewed = sample_labels(SynthConfig(prior_skew=0.9, **big))
    assert mutual_information(free.person, free.true_emotion) < 0.05
    assert mutual_information(skewed.person, skewed.true_emotion) > 0.2
    # neutral dominates overall, and every one of the 8 classes occurs
    for t in (free, skewed):
        assert t.true_emotion.value_counts().idxmax() == "neutral"
        assert set(t.true_emotion) == set(FERPLUS_CLASSES)


def test_clip_lengths_and_teacher():
    t = sample_labels(SynthConfig(people=10, clips_per_person=50, short_clip_fraction=0.2))
    short = t.duration_s < 2.0
    assert 0.1 < short.mean() < 0.3 and (t.duration_s >= 0.6).all() and (t.duration_s <= 4.0 + 0.04).all()
    rng = np.random.default_rng(0)
    hits = []
    for i in range(400):
        emotion = FERPLUS_CLASSES[i % 8]
        logits = teacher_logits(emotion, np.full(12, rng.uniform(0.4, 1.0)), 1.0, rng)
        hits.append(dominant_emotion8(logits) == emotion)
    assert 0.7 < np.mean(hits) < 0.99  # mostly, not always


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_ray_matches_serial(small, tmp_path):
    from scipy.io import loadmat

    par = tmp_path / "par"
    generate(par, dataclasses.replace(SMALL, workers=2), progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(small / TRUTH_NAME), pd.read_parquet(par / TRUTH_NAME))
    clip = pd.read_parquet(par / TRUTH_NAME).clip_id.iloc[-1]
    np.testing.assert_array_equal(_frames(small / "videos" / f"{clip}.mp4"), _frames(par / "videos" / f"{clip}.mp4"))
    a, b = loadmat(small / MAT_NAME)["wavLogits"][0], loadmat(par / MAT_NAME)["wavLogits"][0]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="size"):
        sample_labels(SynthConfig(size=33))
    with pytest.raises(ValueError, match="prior_skew"):
        sample_labels(SynthConfig(prior_skew=1.5))


def test_extra_heard_clips_grow_val_and_test_only_and_leave_the_rest_as_it_was() -> None:
    from emodis_ray.synth.generate import sample_labels

    base = SynthConfig(people=5, clips_per_person=12, videos_per_person=4, seed=3)
    a = sample_labels(base)
    b = sample_labels(dataclasses.replace(base, heard_clips_per_person=20))
    assert a.equals(b.iloc[: len(a)])  # the original clips, labels and durations are untouched
    extra = b.iloc[len(a):]
    assert len(extra) == 5 * 20 and set(extra["set"]) == {3}  # heard only: val/test, never train
    assert not set(extra["video_id"]) & set(a["video_id"])  # on videos of their own
    assert extra.groupby("person")["video_id"].nunique().min() >= 2  # so a video-level split has both sides
    # each person keeps their own (skewed) emotion prior in the extra clips
    for p, rows in extra.groupby("person"):
        fav = a[a["person"] == p]["true_emotion"].value_counts().index[0]
        assert fav in rows["true_emotion"].value_counts().index[:3]
