"""One clip -> tensors (docs/design.md §4). Pure: no Ray, one decoder thread.

Video frames come from decord (one thread, resized while decoding). Audio comes from PyAV, resampled
to 16 kHz mono: on a 12 s clip it is about three times faster than decord's AudioReader (6 vs 19 ms)
and avoids decord's stereo path, which is known to return NaNs.

Layout of one clip (N = segments per clip, T = mel frames per segment, D = face size):
    audio  float32 [N, 1, n_mels, T]   normalised log-mel, zeros where padded
    faces  uint8   [N, C, D, D]        the frame at each segment's centre, zeros where padded
    mask   bool    [N]                 True for real segments
Faces stay uint8 until the batch reaches the model (4x less to move and cache);
:func:`~emodis_ray.core.loop.to_device` scales them to [-1, 1].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emodis_ray.config import FeatureConfig

BAD_REASONS = ("unreadable", "no_audio", "no_frames", "too_short", "nan_audio", "non_finite", "truncated", "timeout",
               # face tracks over raw video (data/rawvideo.py)
               "missing_video", "bad_track", "track_past_video", "short_audio", "box_outside")
#: A stream whose packets end more than this before the duration its header declares is truncated.
TRUNCATION_TOLERANCE_S = 0.1


class BadClip(Exception):
    """A clip that cannot become features; ``reason`` is one of :data:`BAD_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in BAD_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ClipSegments:
    """Every segment of a whole clip (S of them), before cropping to N."""

    audio: np.ndarray  # [S, 1, n_mels, T] float32
    faces: np.ndarray  # [S, C, D, D] uint8
    frame_index: np.ndarray  # [S] int64, the video frame shown in each segment
    duration_s: float


@dataclass(frozen=True)
class ClipFeatures:
    """A clip cropped or padded to the N segments the model reads."""

    audio: np.ndarray  # [N, 1, n_mels, T] float32, zeros where padded
    faces: np.ndarray  # [N, C, D, D] uint8, zeros where padded
    mask: np.ndarray  # [N] bool
    frame_index: np.ndarray  # [N] int64, -1 where padded
    first_segment: int  # index of the first kept segment in the whole clip


def num_segments(cfg: FeatureConfig, window_s: float | None = None) -> int:
    """Segments of ``segment_s`` every ``hop_s`` that fit in ``window_s`` (default: ``clip_s``)."""
    w = cfg.clip_s if window_s is None else window_s
    if w + 1e-9 < cfg.segment_s:
        return 0
    return int(math.floor((w - cfg.segment_s) / cfg.hop_s + 1e-9)) + 1


def frames_per_segment(cfg: FeatureConfig) -> int:
    """Mel frames in one segment (no centre padding): 98 for 1 s at a 10 ms hop and 25 ms window."""
    return (round(cfg.segment_s * cfg.sample_rate) - cfg.win_length) // cfg.hop_length + 1


def feature_shapes(cfg: FeatureConfig) -> dict[str, tuple[int, ...]]:
    n, c, d = num_segments(cfg), 1 if cfg.grey else 3, cfg.face_size
    return {"audio": (n, 1, cfg.n_mels, frames_per_segment(cfg)), "faces": (n, c, d, d), "mask": (n,)}


@functools.lru_cache(maxsize=4)
def _mel(sample_rate: int, n_fft: int, win_length: int, hop_length: int, n_mels: int):  # type: ignore[no-untyped-def]
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, win_length=win_length,
                                                hop_length=hop_length, n_mels=n_mels, center=False)


def log_mel(samples: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """[L] mono samples -> [n_mels, F] log-mel, mean/variance normalised per bin over the utterance."""
    import torch

    mel = _mel(cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels)
    with torch.no_grad():
        m = torch.log(mel(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))) + 1e-6)  # [M, F]
        m = (m - m.mean(dim=1, keepdim=True)) / (m.std(dim=1, keepdim=True) + 1e-5)
    return m.numpy()


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream of ``path`` to float32 mono at ``sample_rate``. Raises BadClip.

    Every packet of every stream is read (demuxing costs little next to decoding), so a file cut short
    inside its media data is reported ``truncated`` whichever stream the cut falls in.
    """
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise BadClip("unreadable", f"{path}: {e}") from None
    with container:
        if not container.streams.audio:
            raise BadClip("no_audio", str(path))
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        error: Exception | None = None
        try:
            for packet in _demux_all(container, path):
                if packet.stream.index != stream.index or error is not None:
                    continue
                try:
                    for frame in packet.decode():
                        chunks.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
                except av.error.FFmpegError as e:  # read on: a cut file is reported as truncated at the end
                    error = e
            if error is None:
                chunks.extend(f.to_ndarray()[0] for f in resampler.resample(None))
        except av.error.FFmpegError as e:
            error = e
        if error is not None:
            raise BadClip("unreadable", f"{path}: audio: {error}")
    if not chunks:
        raise BadClip("no_audio", f"{path}: empty audio stream")
    return _check_finite(np.concatenate(chunks).astype(np.float32, copy=False), path)


def _check_finite(audio: np.ndarray, path: str | Path) -> np.ndarray:
    if not np.isfinite(audio).all():
        raise BadClip("nan_audio", f"{path}: {int((~np.isfinite(audio)).sum())} non-finite samples")
    return audio


def check_complete(path: str | Path) -> None:
    """Raise ``BadClip("truncated")`` if a stream of ``path`` ends before its declared duration (no decoding)."""
    import av

    try:
        with av.open(str(path)) as container:
            for _ in _demux_all(container, path):
                pass
    except (av.error.FFmpegError, OSError) as e:
        raise BadClip("unreadable", f"{path}: {e}") from None


def _demux_all(container: Any, path: str | Path) -> Iterator[Any]:
    """Every packet of ``container``; at the end, ``BadClip("truncated")`` if an audio or video stream's
    packets stop short of the duration the header declares. A file whose index sits at the front
    (``faststart``) and whose media data was cut still opens, and its decoders just stop early: without
    this check it would pass as a shorter clip."""
    ends: dict[int, int] = {}
    for packet in container.demux():
        if packet.pts is not None:
            end = packet.pts + (packet.duration or 0)
            ends[packet.stream.index] = max(ends.get(packet.stream.index, end), end)
        yield packet
    for s in container.streams:
        if s.type not in ("audio", "video") or not s.duration or s.time_base is None:
            continue  # nothing declared to compare with
        start = s.start_time or 0
        declared = float((start + s.duration) * s.time_base)
        got = float(ends.get(s.index, start) * s.time_base)
        frame_s = float(1 / s.average_rate) if s.type == "video" and s.average_rate else 0.0  # if no durations
        if got < declared - TRUNCATION_TOLERANCE_S - frame_s:
            raise BadClip("truncated", f"{path}: the {s.type} stream's data ends at {got:.2f} s, its header "
                                       f"declares {declared:.2f} s")


def extract_segments(video_path: str | Path, audio_path: str | Path | None,
                     cfg: FeatureConfig) -> ClipSegments:
    """Decode a whole clip into all its segments. Deterministic; raises :class:`BadClip` with a reason.

    Segment i covers [i*hop_s, i*hop_s + segment_s); its face is the frame at its centre t,
    index round(t * fps). The log-mel is computed and normalised over the whole clip once.
    """
    from emodis_ray.data._decord import decord

    c, d = (1 if cfg.grey else 3), cfg.face_size

    # 1. Video: open, duration from the frame count. (decord's own resize corrupts small widths,
    #    so only the frames we keep are resized, below.)
    try:
        vr = decord.VideoReader(str(video_path), num_threads=1)
        n_frames, fps = len(vr), float(vr.get_avg_fps())
    except (RuntimeError, decord.DECORDError) as e:
        raise BadClip("unreadable", f"{video_path}: {e}") from None
    if n_frames == 0 or not fps > 0:
        raise BadClip("no_frames", str(video_path))

    # 2. Audio: the mp4's own track, or a separate wav/m4a. Reading it checks that file is complete; a
    #    video whose audio lies beside it is checked on its own (decord counts only the frames present).
    audio = load_audio(audio_path or video_path, cfg.sample_rate)
    if audio_path:
        check_complete(video_path)
    duration = min(n_frames / fps, len(audio) / cfg.sample_rate)
    n_seg = num_segments(cfg, duration)
    if n_seg == 0:
        raise BadClip("too_short", f"{video_path}: {duration:.2f} s < one segment of {cfg.segment_s} s")

    # 3. Log-mel over the clip, normalised per utterance, then sliced per segment.
    mel_out = segment_mel(audio, duration, cfg, f"{video_path}: audio from {audio_path or video_path}")

    # 4. Faces: the frame at each segment's centre, index round(t * fps) (halves round up).
    centres = cfg.hop_s * np.arange(n_seg) + cfg.segment_s / 2  # [S] seconds
    idx = np.minimum(np.floor(centres * fps + 0.5).astype(np.int64), n_frames - 1)
    try:
        frames = vr.get_batch(idx.tolist()).asnumpy()  # [S, H, W, 3] uint8
    except (RuntimeError, decord.DECORDError):
        frames = None
    if frames is None or frames.ndim != 4 or frames.shape[3] != 3:
        # decord2 mis-strides frames of some widths (32, 48 and 96 px seen): get_batch fails or returns
        # the wrong channel count. Such clips (and truly damaged ones) go through PyAV, which raises
        # BadClip if it cannot read them either.
        frames = frames_pyav(video_path, idx.tolist())
    frames = resize_frames(frames, d)  # [S, D, D, 3]
    if cfg.grey:
        luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        faces = np.clip(np.round(luma), 0, 255).astype(np.uint8)[:, None]  # [S, 1, D, D]
    else:
        faces = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))  # [S, 3, D, D]
    assert faces.shape[1:] == (c, d, d)  # uint8 from decoding to here: a face cannot be non-finite
    return ClipSegments(mel_out, faces, idx, duration)


def segment_mel(audio: np.ndarray, duration: float, cfg: FeatureConfig, source: str | Path) -> np.ndarray:
    """The first ``duration`` seconds of ``audio`` -> log-mel normalised over them, sliced into every segment:
    [S, 1, n_mels, T] float32. Raises ``BadClip("non_finite")`` naming ``source``."""
    n_seg, t_seg = num_segments(cfg, duration), frames_per_segment(cfg)
    mel = log_mel(audio[:round(duration * cfg.sample_rate)], cfg)  # [M, F]
    if not np.isfinite(mel).all():  # finite samples can still overflow the mel power (float PCM at 1e20)
        raise BadClip("non_finite", f"{source}: {int((~np.isfinite(mel)).sum())} of {mel.size} log-mel values "
                                    f"are not finite (peak sample {float(np.abs(audio).max()):.3g})")
    hop_frames = round(cfg.hop_s * cfg.sample_rate / cfg.hop_length)
    out = np.zeros((n_seg, 1, cfg.n_mels, t_seg), np.float32)  # [S, 1, M, T]
    for i in range(n_seg):
        patch = mel[:, i * hop_frames:i * hop_frames + t_seg]
        out[i, 0, :, :patch.shape[1]] = patch
    return out


def frames_pyav(path: str | Path, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` (sorted, in presentation order) of the first video stream, [S, H, W, 3] uint8."""
    import av

    wanted, out = set(indices), {}
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_count = 1
            for i, frame in enumerate(c.decode(stream)):
                if i in wanted:
                    out[i] = frame.to_ndarray(format="rgb24")
                if i >= indices[-1]:
                    break
    except (av.error.FFmpegError, OSError, IndexError) as e:
        raise BadClip("unreadable", f"{path}: {e}") from None
    last = out[max(out)] if out else None
    if last is None:
        raise BadClip("no_frames", str(path))
    return np.stack([out.get(i, last) for i in indices])


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """[S, H, W, 3] uint8 -> [S, size, size, 3] uint8 (antialiased bilinear); a no-op at the right size."""
    if frames.shape[1:3] == (size, size):
        return frames
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [S, 3, H, W]
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def crop_start(s: int, n: int, train: bool, rng: np.random.Generator | None) -> int:
    """First of the N segments kept out of S: random in training, the centre run in evaluation."""
    if s <= n:
        return 0
    return int((rng or np.random.default_rng()).integers(0, s - n + 1)) if train else (s - n) // 2


def crop(segs: ClipSegments, cfg: FeatureConfig, train: bool = False,
         rng: np.random.Generator | None = None) -> ClipFeatures:
    """Keep N consecutive segments: a random run in training, the centre run in evaluation; pad short clips."""
    n, s = num_segments(cfg), len(segs.frame_index)
    k, m = crop_start(s, n, train, rng), min(n, s)
    audio = np.zeros((n, *segs.audio.shape[1:]), np.float32)
    faces = np.zeros((n, *segs.faces.shape[1:]), np.uint8)
    frame_index = np.full(n, -1, np.int64)
    audio[:m], faces[:m], frame_index[:m] = segs.audio[k:k + m], segs.faces[k:k + m], segs.frame_index[k:k + m]
    mask = np.arange(n) < m
    return ClipFeatures(audio, faces, mask, frame_index, k)


def extract_clip(video_path: str | Path, audio_path: str | Path | None, cfg: FeatureConfig,
                 train: bool = False, rng: np.random.Generator | None = None) -> ClipFeatures:
    """Decode one clip and crop it to the model's N segments. Raises :class:`BadClip`."""
    return crop(extract_segments(video_path, audio_path, cfg), cfg, train, rng)
