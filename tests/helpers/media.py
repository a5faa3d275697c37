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
