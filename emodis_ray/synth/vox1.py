"""The VoxCeleb1 layout of a synthetic set: raw wide videos, each holding several face tracks at different times,
with the track files and the per-track wav files that the release distributes (docs/design.md §3.1, §3.4).

Each track is the face-crop clip the crop layout would write (the same person, emotion, frames and voice),
pasted into a wider frame on a moving path: the face enters at one place and drifts to another while it speaks.
The raw video runs at its own rate (:data:`RAW_FPS`, not the track files' 25 fps), its tracks are separated by
stretches without a face, and the track files give the boxes as VoxCeleb1 does: pixels of a 360-line frame.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from emodis_ray.config import SynthConfig
from emodis_ray.data.tracks import TRACK_FPS, VOX1_REF_HEIGHT
from emodis_ray.synth.render import ClipSpec, RenderedClip, make_person, make_session, render_clip

RAW_FPS = 30.0  # the raw videos' own frame rate: the 25 fps frame numbers of the track files map onto it
TAG_RAW = 15  # the random stream of a raw video's layout: np.random.default_rng([seed, TAG_RAW, first clip])


def raw_frame_size(size: int) -> tuple[int, int]:
    """(width, height) of a raw video whose faces are ``size`` pixels: 16:9, twice the face's height."""
    height = 2 * size
    return 2 * round(height * 16 / 9 / 2), height


@dataclass(frozen=True)
class Placement:
    """Where and when one track's face is in its raw video."""

    first_frame: int  # at 25 fps, the track file's first FRAME
    frames: int  # track frames (25 fps)
    start: tuple[float, float]  # top-left corner of the face at the first frame, raw pixels
    end: tuple[float, float]  # ... at the last frame
    side: int  # the face's edge in raw pixels

    @property
    def start_s(self) -> float:
        return self.first_frame / TRACK_FPS

    @property
    def duration_s(self) -> float:
        return self.frames / TRACK_FPS

    def corner(self, t_s: float) -> tuple[float, float]:
        """Top-left corner ``t_s`` seconds after the track's first frame (linear, held at the ends)."""
        u = min(max(t_s / max(self.duration_s - 1 / TRACK_FPS, 1e-9), 0.0), 1.0)
        return (self.start[0] + u * (self.end[0] - self.start[0]), self.start[1] + u * (self.end[1] - self.start[1]))


def plan_video(durations: list[float], size: int, rng: np.random.Generator) -> tuple[list[Placement], float]:
    """Tracks one after the other with 0.3-1.2 s without a face before each and at the end; each face moves from one
    random place to another. Returns the placements and the raw video's length in seconds."""
    width, height = raw_frame_size(size)
    t = rng.uniform(0.3, 1.2)
    out = []
    for d in durations:
        first = math.ceil(t * TRACK_FPS)
        frames = max(1, round(d * TRACK_FPS))
        start, end = ((float(rng.uniform(0, width - size)), float(rng.uniform(0, height - size))) for _ in range(2))
        out.append(Placement(first, frames, start, end, size))
        t = (first + frames) / TRACK_FPS + rng.uniform(0.3, 1.2)
    return out, t


def track_text(identity: str, reference: str, p: Placement, height: int) -> str:
    """A track file as the VoxCeleb1 release writes it: a header, then ``FRAME X Y W H`` at 25 fps with the boxes
    in pixels of a 360-line frame."""
    k = VOX1_REF_HEIGHT / height
    lines = [f"Identity  : \t{identity}", f"Reference : \t{reference}", "Offset    : \t1",
             "FV Conf   : \t16.647\t(1)", "ASD Conf  : \t4.179", "", "FRAME \tX \tY \tW \tH "]
    for n in range(p.frames):
        x, y = p.corner(n / TRACK_FPS)
        lines.append(f"{p.first_frame + n:06d} \t{x * k:.0f} \t{y * k:.0f} \t{p.side * k:.0f} \t{p.side * k:.0f} ")
    return "\n".join(lines) + "\n"


def raw_frames(clips: list[RenderedClip], placements: list[Placement], seconds: float, clip_fps: float,
               size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The raw video's frames ([H, W, 3] uint8 each, at :data:`RAW_FPS`): a lit backdrop, and while a track runs
    its face at the track's position, showing the clip's frame of that moment."""
    width, height = raw_frame_size(size)
    base = rng.uniform(40, 200, 3)
    ramp = np.linspace(0.7, 1.2, width)[None, :, None] * np.linspace(1.1, 0.8, height)[:, None, None]
    backdrop = np.clip(base * ramp, 0, 255).astype(np.uint8)  # [H, W, 3]
    for j in range(max(1, round(seconds * RAW_FPS))):
        img = backdrop.copy()
        t = j / RAW_FPS
        for clip, p in zip(clips, placements, strict=True):
            if p.start_s <= t < p.start_s + p.duration_s:
                k = min(len(clip.frames) - 1, int((t - p.start_s) * clip_fps))
                x, y = (int(round(v)) for v in p.corner(t - p.start_s))
                img[y:y + size, x:x + size] = clip.frames[k]
        yield img


def write_video(path: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    """H.264 (yuv420p), no audio, written atomically; frames are encoded as they come (a raw video is long)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                options={"preset": "ultrafast", "crf": "18"})
            vs.pix_fmt = "yuv420p"
            vs.codec_context.thread_count = 1
            for i, img in enumerate(frames):
                if i == 0:
                    vs.height, vs.width = img.shape[:2]
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                out.mux(vs.encode(frame))
            out.mux(vs.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono, as VoxCeleb1's wav files."""
    from scipy.io import wavfile

    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, sample_rate, np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16))


def render_raw_video(specs: list[ClipSpec], cfg: SynthConfig, out_dir: str) -> list[tuple[int, np.ndarray]]:
    """Render the tracks of one raw video (``specs``: one person, one video id) and write ``raw/<video>.mp4``,
    ``txt/<clip_id>.txt`` and ``wav/<clip_id>.wav``; returns (clip index, teacher logits) per track."""
    person, video = specs[0].person, specs[0].video
    assert all(s.person == person and s.video == video for s in specs), "one raw video holds one person's tracks"
    clips = [render_clip(s, make_person(cfg.seed, person), make_session(cfg.seed, person, video), cfg) for s in specs]
    rng = np.random.default_rng([cfg.seed, TAG_RAW, specs[0].index])
    placements, seconds = plan_video([len(c.frames) / cfg.fps for c in clips], cfg.size, rng)
    identity, yt, _ = specs[0].clip_id.split("/")
    root = Path(out_dir)
    write_video(root / "raw" / f"{yt}.mp4", raw_frames(clips, placements, seconds, cfg.fps, cfg.size, rng), RAW_FPS)
    height = raw_frame_size(cfg.size)[1]
    for s, c, p in zip(specs, clips, placements, strict=True):
        (root / "txt" / f"{s.clip_id}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "txt" / f"{s.clip_id}.txt").write_text(track_text(identity, yt, p, height))
        write_wav(root / "wav" / f"{s.clip_id}.wav", c.audio, cfg.sample_rate)
    return [(s.index, c.logits) for s, c in zip(specs, clips, strict=True)]
