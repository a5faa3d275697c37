"""The synthetic set in the VoxCeleb1 layout (face tracks over raw wide videos, one wav per track): its files, its
manifest, and that it decodes to the tensors the face-crop layout of the same set gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.io import loadmat

from emodis_ray.cli import main
from emodis_ray.config import LabelConfig, SynthConfig, load_config
from emodis_ray.data.decode import ClipDecoder
from emodis_ray.data.features import ClipSegments
from emodis_ray.data.ingest import _decode_rows, manifest_rows
from emodis_ray.data.manifest import read_manifest, write_manifest
from emodis_ray.data.sources import emovox_manifest
from emodis_ray.data.tracks import parse_track
from emodis_ray.synth.generate import MAT_NAME, META_NAME, TRUTH_NAME, generate
from emodis_ray.synth.vox1 import RAW_FPS, raw_frame_size

CFG = SynthConfig(people=3, clips_per_person=6, videos_per_person=2, size=64, clip_s_min=1.2, clip_s_max=2.0,
                  short_clip_fraction=0.2, unheard_people=1, workers=1, seed=5)
LABELS = LabelConfig(drop_percentile=0.0)
FEATURES = load_config("tiny").features


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same synthetic set written in both layouts."""
    root = tmp_path_factory.mktemp("vox1")
    generate(root / "crop", CFG, progress=False)
    generate(root / "vox1", CFG, progress=False, layout="voxceleb1")
    return root / "crop", root / "vox1"


def _vox1_manifest(vox1: Path) -> pd.DataFrame:
    df, _ = emovox_manifest(vox1 / MAT_NAME, vox1 / META_NAME, vox1 / "raw", LABELS, audio=vox1 / "wav",
                            tracks=vox1 / "txt", check_files=True)
    write_manifest(df, vox1 / "manifest.parquet")
    return read_manifest(vox1 / "manifest.parquet", check_files=True)


def test_files_labels_and_tracks(sets: tuple[Path, Path]) -> None:
    from emodis_ray.data._decord import load_decord

    crop, vox1 = sets
    assert not (vox1 / "videos").exists() and not (crop / "raw").exists()
    # the same people, emotions and teacher logits: only the storage differs
    assert (crop / META_NAME).read_text() == (vox1 / META_NAME).read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(crop / TRUTH_NAME), pd.read_parquet(vox1 / TRUTH_NAME))
    a, b = loadmat(crop / MAT_NAME), loadmat(vox1 / MAT_NAME)
    assert all(np.array_equal(x, y) for x, y in zip(a["wavLogits"].flat, b["wavLogits"].flat, strict=True))
    truth = pd.read_parquet(vox1 / TRUTH_NAME)
    decord = load_decord()
    for vid, clips in truth.groupby("video_id"):
        vr = decord.VideoReader(str(vox1 / "raw" / f"{vid}.mp4"), num_threads=1)
        assert vr[0].shape[:2] == raw_frame_size(CFG.size)[::-1] and vr.get_avg_fps() == pytest.approx(RAW_FPS)
        video_s = len(vr) / RAW_FPS
        end = 0.0
        for c in clips.sort_values("track").itertuples():
            track = parse_track(vox1 / "txt" / f"{c.clip_id}.txt")
            assert track.identity == c.person and track.reference == vid and track.units == "pixel"
            assert track.duration_s == pytest.approx(c.duration_s) and track.start_s >= end  # in turn, no overlap
            end = track.start_s + track.duration_s
            assert (vox1 / "wav" / f"{c.clip_id}.wav").stat().st_size == 44 + 2 * round(c.duration_s * 16000)
        assert end < video_s  # the video outlasts its last track
    assert truth.groupby("video_id").size().max() >= 2  # raw videos hold several tracks


def test_manifest_rows_point_at_track_raw_video_and_wav(sets: tuple[Path, Path]) -> None:
    crop, vox1 = sets
    df = _vox1_manifest(vox1)
    ref, _ = emovox_manifest(crop / MAT_NAME, crop / META_NAME, crop / "videos", LABELS)
    assert list(df["clip_id"]) == list(ref["clip_id"]) and list(df["split"]) == list(ref["split"])
    for r in df.itertuples():
        vid = r.clip_id.split("/")[1]
        assert r.video_abspath == str(vox1 / "raw" / f"{vid}.mp4")
        assert r.track_abspath == str(vox1 / "txt" / f"{r.clip_id}.txt")
        assert r.audio_abspath == str(vox1 / "wav" / f"{r.clip_id}.wav")
    assert ref["track_path"].isna().all()


class CountingDecoder(ClipDecoder):
    """The real sandboxed decoder, counting the calls it gets."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.clip_calls, self.track_calls = 0, 0

    def __call__(self, video: str, audio: str | None = None) -> ClipSegments:
        self.clip_calls += 1
        return super().__call__(video, audio)

    def tracks(self, video: str, sources: list[tuple[str, str]]) -> list:
        self.track_calls += 1
        return super().tracks(video, sources)


@pytest.mark.timeout(180)
def test_decodes_to_the_crop_layouts_tensors_with_one_call_per_raw_video(sets: tuple[Path, Path]) -> None:
    crop, vox1 = sets
    df = _vox1_manifest(vox1)
    rows = manifest_rows(df.sort_values("clip_id"), None)
    with CountingDecoder(FEATURES) as dec:
        got, bad = _decode_rows(dec, rows, FEATURES)
        assert dec.track_calls == df["video_id"].nunique() and dec.clip_calls == 0
    with ClipDecoder(FEATURES) as dec:
        crop_rows = rows.assign(video_abspath=[str(crop / "videos" / f"{c}.mp4") for c in rows["clip_id"]],
                                audio_abspath=None, track_abspath=None)
        want, want_bad = _decode_rows(dec, crop_rows, FEATURES)
    assert sorted(b["clip_id"] for b in bad) == sorted(b["clip_id"] for b in want_bad)
    assert {b["reason"] for b in bad} == {"too_short"} and len(bad) >= 1  # short clips are short tracks
    assert [r["clip_id"] for r in got] == [r["clip_id"] for r in want] and len(got) >= 10
    face_err, other_err = [], []
    for g, w, o in zip(got, want, want[1:] + want[:1], strict=True):
        assert g["n_segments"] == w["n_segments"]
        n = min(len(g["faces"]), len(o["faces"]))  # bytes of the segments both have
        faces = [np.frombuffer(r["faces"], np.uint8).astype(np.float32) for r in (g, w, o)]
        mel = [np.frombuffer(r["mel"], np.float16).astype(np.float32) for r in (g, w)]
        # The face cut from the raw frame at the track's box is the crop, up to H.264 twice, the box's rounding
        # and the raw video's 30 fps: a segment centre may show the clip's neighbouring frame (40 ms away).
        face_err.append(np.abs(faces[0] - faces[1]).mean())
        other_err.append(np.abs(faces[0][:n] - faces[2][:n]).mean())  # against another clip's faces
        assert face_err[-1] < 12.0, g["clip_id"]
        assert np.abs(mel[0] - mel[1]).mean() < 0.2, g["clip_id"]  # 16-bit wav vs AAC
    assert np.mean(face_err) < 6.0 and np.mean(face_err) < 0.25 * np.mean(other_err), (face_err, other_err)


@pytest.mark.timeout(120)
def test_a_missing_raw_video_lists_each_of_its_tracks(sets: tuple[Path, Path]) -> None:
    _, vox1 = sets
    rows = manifest_rows(_vox1_manifest(vox1).sort_values("clip_id"), None)
    gone = rows["video_abspath"].iloc[0]
    rows["video_abspath"] = rows["video_abspath"].replace(gone, gone + ".missing.mp4")
    with ClipDecoder(FEATURES) as dec:
        got, bad = _decode_rows(dec, rows, FEATURES)
    missing = rows["clip_id"][rows["video_abspath"] == gone + ".missing.mp4"]
    assert sorted(b["clip_id"] for b in bad if b["reason"] == "missing_video") == sorted(missing)
    assert len(got) + len(bad) == len(rows)  # the other videos' tracks were decoded


def test_manifest_command_reads_the_vox1_layout_and_names_missing_flags(sets: tuple[Path, Path], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, vox1 = sets
    base = ["manifest", "emovox", "--mat", str(vox1 / MAT_NAME), "--meta", str(vox1 / META_NAME),
            "--out", str(tmp_path / "m.parquet"), "--set", "labels.drop_percentile=0"]
    assert main([*base, "--tracks", str(vox1 / "txt"), "--raw-videos", str(vox1 / "raw"),
                 "--audio", str(vox1 / "wav")]) == 0
    assert read_manifest(tmp_path / "m.parquet")["track_path"].notna().all()
    capsys.readouterr()
    assert main([*base, "--tracks", str(vox1 / "txt"), "--raw-videos", str(vox1 / "raw")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--audio" in err[0]
    assert main([*base, "--videos", str(vox1), "--tracks", str(vox1 / "txt")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(base) == 2
    assert "--raw-videos" in capsys.readouterr().err

