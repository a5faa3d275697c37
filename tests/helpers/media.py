"""Real mp4 clips with known content, for the ingest tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emodis_ray.synth.generate import write_mp4

FPS, SR, SIZE = 25.0, 16000, 48  # 48 px: decord mis-strides it, so the PyAV fallback is tested too


def make_clip(path: Path, seconds: float, event_s: float | None = None, audio: bool = True,
              nan: bool = False) -> Path:
    """A dim, quiet clip; with ``event_s``, one white frame at round(t*fps) and a loud 5 ms click at t."""
    rng = np.random.default_rng(0)
    n = int(round(seconds * FPS))
    frames = np.full((n, SIZE, SIZE, 3), 40, np.uint8)
    frames[:, :, :, 0] = (np.arange(n) % 200)[:, None, None]  # the red channel counts frames
    wav = (0.01 * rng.standard_normal(int(round(seconds * SR)))).astype(np.float32)
    if event_s is not None:
        frames[int(np.floor(event_s * FPS + 0.5)), :, :, 1:] = 255
        i = int(event_s * SR)
        wav[i:i + 80] = 0.9 * np.sin(2 * np.pi * 3000 * np.arange(80) / SR)
    write_mp4(path, frames, wav if audio else None, FPS, SR)
    if nan:  # AAC cannot carry a NaN; a float WAV beside the video (VoxCeleb2 layout) can
        from scipy.io import wavfile

        wav[100:110] = np.nan
        wavfile.write(path.with_suffix(".wav"), SR, wav)
    return path


def make_faststart_clip(path: Path, seconds: float) -> Path:
    """:func:`make_clip`, remuxed (same packets) with its index before the media data (``movflags=faststart``),
    the layout of a clip prepared for streaming: cut short, it still opens."""
    import av

    src = make_clip(path.with_name(f".{path.stem}.src.mp4"), seconds)
    with av.open(str(src)) as inp, av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:  # the demuxer's flush packets carry no data
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    src.unlink()
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat"), "the index must come first"
    return path


# --- the VoxCeleb1 layout: a raw wide video with face tracks, a track file and a wav per track ---------------

RAW_W, RAW_H, RAW_FPS = 192, 108, 30.0  # a 16:9 video at its own frame rate (tracks count frames at 25 fps)


def face_at(track: dict, t: float) -> tuple[int, int, int]:
    """The drawn box of ``track`` (``start_s``, ``x0``, ``y``, ``size``, ``speed``) at ``t`` s into the video:
    its top-left corner and side, in pixels."""
    return round(track["x0"] + track["speed"] * (t - track["start_s"])), track["y"], track["size"]


def make_raw_video(path: Path, seconds: float, tracks: list[dict], white_s: float | None = None) -> Path:
    """A dim raw video with each track's face drawn while the track lasts: a square whose top half is
    ``track["top"]`` and bottom half ``track["bottom"]`` (RGB), moving right at ``speed`` px/s; with
    ``white_s``, the frame at round(white_s * fps) is white."""
    n = int(round(seconds * RAW_FPS))
    frames = np.full((n, RAW_H, RAW_W, 3), 40, np.uint8)
    for i in range(n):
        t = i / RAW_FPS
        for tr in tracks:
            if tr["start_s"] <= t < tr["start_s"] + tr["seconds"]:
                x, y, s = face_at(tr, t)
                frames[i, y:y + s // 2, x:x + s] = tr["top"]
                frames[i, y + s // 2:y + s, x:x + s] = tr["bottom"]
    if white_s is not None:
        frames[int(np.floor(white_s * RAW_FPS + 0.5))] = 255
    write_mp4(path, frames, None, RAW_FPS, SR)
    return path


def write_track(path: Path, track: dict, units: str = "fraction", ref_height: int = 360) -> Path:
    """The track file of ``track`` as a VoxCeleb release writes it: frames at 25 fps, boxes as fractions of
    the frame or as pixels of a ``ref_height``-high frame."""
    first = round(track["start_s"] * 25)
    lines = ["Identity  : \tid10001", f"Reference : \t{track.get('video', 'rawvid00001')}", "Offset    : \t1",
             "FV Conf   : \t16.647\t(1)", "ASD Conf  : \t4.179", "", "FRAME \tX \tY \tW \tH "]
    for f in range(first, first + round(track["seconds"] * 25)):
        x, y, s = face_at(track, f / 25)
        if units == "fraction":
            box = (x / RAW_W, y / RAW_H, s / RAW_W, s / RAW_H)
        else:
            k = ref_height / RAW_H
            box = (x * k, y * k, s * k, s * k)
        lines.append(f"{f:06d} \t" + " \t".join(f"{v:.3f}" for v in box) + " ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_wav(path: Path, seconds: float, click_s: float | None = None) -> Path:
    """Quiet 16 kHz mono noise; with ``click_s``, a loud 5 ms click at that time."""
    from scipy.io import wavfile

    wav = (0.01 * np.random.default_rng(1).standard_normal(int(round(seconds * SR)))).astype(np.float32)
    if click_s is not None:
        i = int(click_s * SR)
        wav[i:i + 80] = 0.9 * np.sin(2 * np.pi * 3000 * np.arange(80) / SR)
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, SR, (wav * 32767).astype(np.int16))
    return path
