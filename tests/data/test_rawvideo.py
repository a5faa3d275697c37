"""Face tracks over a raw wide video (the VoxCeleb1 layout): the crop is the face drawn at the known box, audio
and face stay aligned, one decoder call serves a video's tracks, and each bad case is named (no Ray)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers.media import RAW_FPS, make_raw_video, write_track, write_wav

from emodis_ray.config import FeatureConfig
from emodis_ray.data.features import BadClip, ClipSegments
from emodis_ray.data.rawvideo import TrackSource, extract_video_tracks

CFG = FeatureConfig(clip_s=4.0, segment_s=1.0, hop_s=0.5, face_size=16)
A = {"start_s": 1.0, "seconds": 4.0, "x0": 20, "y": 10, "size": 32, "speed": 10.0,
     "top": (220, 30, 30), "bottom": (30, 30, 220)}
B = {"start_s": 4.0, "seconds": 3.0, "x0": 120, "y": 60, "size": 32, "speed": -8.0,
     "top": (30, 200, 30), "bottom": (220, 220, 40)}
CLICK_S = 1.5  # into track A: the centre of its segment 2, shown as a white frame of the raw video


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vox1")
    video = make_raw_video(root / "raw" / "rawvid00001.mp4", 8.0, [A, B], white_s=A["start_s"] + CLICK_S)
    return {
        "root": root, "video": video,
        "a": TrackSource(str(write_track(root / "txt" / "a.txt", A)),
                         str(write_wav(root / "wav" / "a.wav", A["seconds"], click_s=CLICK_S))),
        "b": TrackSource(str(write_track(root / "txt" / "b.txt", B, units="pixel", ref_height=360)),
                         str(write_wav(root / "wav" / "b.wav", B["seconds"]))),
    }


def drawn_face(track: dict[str, Any], size: int) -> np.ndarray:
    """The face as drawn, at ``size``: [3, size, size], top half one colour and bottom half the other."""
    face = np.empty((3, size, size), np.float32)
    face[:, :size // 2] = np.array(track["top"], np.float32)[:, None, None]
    face[:, size // 2:] = np.array(track["bottom"], np.float32)[:, None, None]
    return face


def test_the_crop_is_the_face_drawn_at_the_known_box(layout: dict[str, Any]) -> None:
    a, b = extract_video_tracks(layout["video"], [layout["a"], layout["b"]], CFG)
    assert isinstance(a, ClipSegments) and isinstance(b, ClipSegments)
    assert len(a.frame_index) == 7 and len(b.frame_index) == 5  # 4 s and 3 s of 1 s segments every 0.5 s
    assert a.duration_s == pytest.approx(4.0) and a.faces.shape == (7, 3, 16, 16)
    # segment k shows the raw frame at the track's start + its centre, at the video's own 30 fps
    centres = CFG.hop_s * np.arange(7) + CFG.segment_s / 2
    assert a.frame_index.tolist() == np.floor((A["start_s"] + centres) * RAW_FPS + 0.5).astype(int).tolist()
    for segs, track, skip in ((a, A, {2}), (b, B, set())):  # A's segment 2 is the white frame
        want = drawn_face(track, 16)
        for k in set(range(len(segs.faces))) - skip:
            err = np.abs(segs.faces[k].astype(np.float32) - want)
            # within resizing and H.264 tolerance (measured: at most 7.3); a box a quarter of a face off: 20.6
            assert err.mean() < 12, (track["top"], k, err.mean())
            assert err[:, 3:5].max() < 40 and err[:, 11:13].max() < 40  # the inside of each half


def test_audio_and_face_stay_aligned(layout: dict[str, Any]) -> None:
    (a,) = extract_video_tracks(layout["video"], [layout["a"]], CFG)
    assert isinstance(a, ClipSegments)
    k = int(round((CLICK_S - CFG.segment_s / 2) / CFG.hop_s))  # the segment centred on the click
    brightness = a.faces.reshape(len(a.faces), -1).mean(axis=1)
    assert int(np.argmax(brightness)) == k and brightness[k] > 200  # the white frame is segment k's face
    energy = a.audio[k, 0].sum(axis=0)  # [T]: the click sits at segment k's centre, mel frame 50 of 98
    assert abs(int(np.argmax(energy)) - 50) <= 2


def test_one_decoder_and_one_batch_read_serve_every_track_of_a_video(layout: dict[str, Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from emodis_ray.data._decord import decord

    opened, batches = [], []

    class Counting(decord.VideoReader):  # the real reader, counted
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            opened.append(args[0])
            super().__init__(*args, **kwargs)

        def get_batch(self, indices: Any) -> Any:
            batches.append(list(indices))
            return super().get_batch(indices)

    monkeypatch.setattr(decord, "VideoReader", Counting)
    out = extract_video_tracks(layout["video"], [layout["a"], layout["b"]], CFG)
    assert all(isinstance(s, ClipSegments) for s in out)
    assert opened == [str(layout["video"])] and len(batches) == 1
    needed = sorted({int(i) for s in out for i in s.frame_index})  # type: ignore[union-attr]
    assert batches[0] == needed  # only the frames the segment centres show, each once: 11 of the video's 240
    assert len(needed) == 11  # 7 of A and 5 of B, A's last centre and B's first both at 4.5 s (frame 135)


def test_bad_tracks_are_named_and_the_good_one_is_kept(layout: dict[str, Any]) -> None:
    root = layout["root"]
    bad_file = root / "txt" / "bad.txt"
    bad_file.write_text("Identity : id10001\nFRAME X Y W H\n000025 0.1 0.1 0.2\n")
    late = {**A, "start_s": 6.5, "seconds": 3.0}  # the video ends at 8 s
    outside = {**A, "x0": 200}  # right of the 192-px frame (fractions 1.04-1.25)
    tracks = [
        layout["a"],
        TrackSource(str(bad_file), layout["a"].audio),
        TrackSource(str(write_track(root / "txt" / "late.txt", late)), str(write_wav(root / "wav" / "late.wav", 3))),
        TrackSource(layout["a"].track, str(write_wav(root / "wav" / "short.wav", 1.0))),
        TrackSource(str(write_track(root / "txt" / "out.txt", outside)), layout["a"].audio),
    ]
    out = extract_video_tracks(layout["video"], tracks, CFG)
    reasons = [s.reason if isinstance(s, BadClip) else "ok" for s in out]
    assert reasons == ["ok", "bad_track", "track_past_video", "short_audio", "box_outside"]
    assert "bad.txt:3:" in out[1].detail and "5 fields" in out[1].detail  # type: ignore[union-attr]
    assert "late.txt" in out[2].detail and "short.wav" in out[3].detail  # type: ignore[union-attr]
    (alone,) = extract_video_tracks(layout["video"], [layout["a"]], CFG)  # nothing good was lost
    np.testing.assert_array_equal(out[0].faces, alone.faces)  # type: ignore[union-attr]
    np.testing.assert_array_equal(out[0].audio, alone.audio)  # type: ignore[union-attr]

    missing = extract_video_tracks(root / "raw" / "gone.mp4", [layout["a"], layout["b"]], CFG)
    assert [s.reason for s in missing] == ["missing_video", "missing_video"]  # type: ignore[union-attr]
    assert all("gone.mp4" in s.detail for s in missing)  # type: ignore[union-attr]
    assert "a.txt" in missing[0].detail and "b.txt" in missing[1].detail  # type: ignore[union-attr]
