"""Face tracks over raw video (the VoxCeleb1 layout) -> the segments a face-crop clip gives (docs/design.md §4).

A VoxCeleb1 track is a face-track file, the wav cut to the track and a raw video that holds many tracks at
different times. :func:`extract_video_tracks` opens a raw video once and reads, in one ``get_batch`` call, only
the frames that some track's segment centres need (decord seeks from the nearest keyframe), then cuts each
track's faces at its interpolated boxes. Each track yields the :class:`~emodis_ray.data.features.ClipSegments`
a face-crop clip of the same face and audio would, or a :class:`~emodis_ray.data.features.BadClip` with a
reason; one bad track never costs its video's other tracks. Pure: no Ray.

Time: a track's time 0 is its first frame, ``FRAME / 25`` seconds into the raw video, and sample 0 of its wav.
Segment i's centre ``t_i = i * hop_s + segment_s / 2`` shows raw frame ``round((start_s + t_i) * fps)`` of the
video's own frame rate, cropped at the box interpolated at ``t_i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodis_ray.config import FeatureConfig
from emodis_ray.data.features import (
    TRUNCATION_TOLERANCE_S,
    BadClip,
    ClipSegments,
    frames_pyav,
    load_audio,
    num_segments,
    resize_frames,
    segment_mel,
)
from emodis_ray.data.tracks import VOX1_REF_HEIGHT, FaceTrack, TrackError, parse_track


@dataclass(frozen=True)
class TrackSource:
    """One track of a raw video: its track file and its wav (sample 0 = the track's first frame)."""

    track: str
    audio: str


@dataclass(frozen=True)
class _Plan:
    track: FaceTrack
    audio: np.ndarray  # [L] float32, the track's duration
    duration: float
    centres: np.ndarray  # [S] seconds after the track's first frame
    frames: np.ndarray  # [S] int64, raw-video frame indices


def _plan(src: TrackSource, n_frames: int, fps: float, size: tuple[int, int], cfg: FeatureConfig,
          ref_height: int) -> _Plan:
    """Everything but the pixels of one track; raises :class:`BadClip` with the reason."""
    try:
        track = parse_track(src.track)
    except TrackError as e:
        raise BadClip("bad_track", str(e)) from None
    audio = load_audio(src.audio, cfg.sample_rate)
    audio_s = len(audio) / cfg.sample_rate
    if audio_s + TRUNCATION_TOLERANCE_S < track.duration_s:
        raise BadClip("short_audio", f"{src.audio}: {audio_s:.2f} s of audio for a track of "
                                     f"{track.duration_s:.2f} s ({src.track})")
    video_s = n_frames / fps
    if track.start_s + track.duration_s > video_s + TRUNCATION_TOLERANCE_S:
        raise BadClip("track_past_video", f"{src.track}: ends at {track.start_s + track.duration_s:.2f} s, the "
                                          f"video at {video_s:.2f} s")
    duration = min(track.duration_s, audio_s)
    n_seg = num_segments(cfg, duration)
    if n_seg == 0:
        raise BadClip("too_short", f"{src.track}: {duration:.2f} s < one segment of {cfg.segment_s} s")
    centres = cfg.hop_s * np.arange(n_seg) + cfg.segment_s / 2  # [S] seconds
    width, height = size
    for t in centres:  # a face whose centre leaves the frame is not in the video the track claims
        x, y, w, h = track.box_xywh(float(t), width, height, ref_height=ref_height)
        if not (0 <= x + w / 2 < width and 0 <= y + h / 2 < height):
            raise BadClip("box_outside", f"{src.track}: at {t:.2f} s the box ({x:.0f}, {y:.0f}, {w:.0f} x {h:.0f}) "
                                         f"is centred outside the {width} x {height} frame")
    frames = np.minimum(np.floor((track.start_s + centres) * fps + 0.5).astype(np.int64), n_frames - 1)
    return _Plan(track, audio[:round(duration * cfg.sample_rate)], duration, centres, frames)


def extract_video_tracks(video: str | Path, tracks: Sequence[TrackSource], cfg: FeatureConfig, *,
                         margin: float = 0.0, ref_height: int = VOX1_REF_HEIGHT
                         ) -> list[ClipSegments | BadClip]:
    """Every track of one raw ``video``, in order: its segments, or the reason it is bad. One decoder opens the
    video and one batch call reads the frames all tracks need. ``margin`` grows each box by that fraction of
    its size on every side; ``ref_height`` is the frame height pixel boxes were measured on."""
    from emodis_ray.data._decord import decord

    # 1. Open the raw video once; a missing or unreadable one makes every one of its tracks bad.
    try:
        vr = decord.VideoReader(str(video), num_threads=1)
        n_frames, fps = len(vr), float(vr.get_avg_fps())
        height, width = vr[0].shape[:2]
    except (RuntimeError, decord.DECORDError, IndexError) as e:
        reason = "missing_video" if not Path(video).exists() else "unreadable"
        return [BadClip(reason, f"{video}: {e}" if reason == "unreadable" else f"{video} (track {t.track})")
                for t in tracks]
    if n_frames == 0 or not fps > 0:
        return [BadClip("no_frames", f"{video} (track {t.track})") for t in tracks]

    # 2. Plan each track: parse, audio, checks, the frames its segment centres show.
    plans: list[_Plan | BadClip] = []
    for src in tracks:
        try:
            plans.append(_plan(src, n_frames, fps, (width, height), cfg, ref_height))
        except BadClip as e:
            plans.append(e)

    # 3. One batch read of every needed frame, sorted and unique (decord seeks by keyframe between them).
    need = sorted({int(i) for p in plans if isinstance(p, _Plan) for i in p.frames})
    if not need:
        return [p for p in plans if isinstance(p, BadClip)]
    try:
        batch = vr.get_batch(need).asnumpy()  # [F, H, W, 3] uint8
    except (RuntimeError, decord.DECORDError):
        batch = None
    if batch is None or batch.ndim != 4 or batch.shape[3] != 3:
        try:
            batch = frames_pyav(video, need)
        except BadClip as e:
            return [BadClip(e.reason, f"{e.detail} (track {t.track})") for t in tracks]
    at = {f: k for k, f in enumerate(need)}

    # 4. Per track: crop at the interpolated box, resize, the log-mel of its wav.
    out: list[ClipSegments | BadClip] = []
    for src, p in zip(tracks, plans, strict=True):
        if isinstance(p, BadClip):
            out.append(p)
            continue
        faces = np.empty((len(p.frames), cfg.face_size, cfg.face_size, 3), np.uint8)  # [S, D, D, 3]
        for k, (f, t) in enumerate(zip(p.frames, p.centres, strict=True)):
            x0, y0, x1, y1 = p.track.box_at(float(t), width, height, margin=margin, ref_height=ref_height)
            faces[k] = resize_frames(batch[at[int(f)], y0:y1, x0:x1][None], cfg.face_size)[0]
        try:
            mel = segment_mel(p.audio, p.duration, cfg, src.audio)  # [S, 1, M, T]
        except BadClip as e:
            out.append(e)
            continue
        out.append(ClipSegments(mel, _channels(faces, cfg), p.frames, p.duration))
    return out


def _channels(frames: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """[S, D, D, 3] uint8 -> [S, C, D, D] uint8 (grey: BT.601 luma)."""
    if cfg.grey:
        luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.round(luma), 0, 255).astype(np.uint8)[:, None]
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
