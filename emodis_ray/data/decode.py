"""A clip decoder that cannot hang, crash or leak its host.

:func:`features.extract_segments` (a face-crop clip) and :func:`rawvideo.extract_video_tracks` (every face track
of one raw video) run in a child process. The parent waits at most ``timeout_s``
for each clip; a clip that takes longer (a stuck demuxer, a network mount that stopped answering)
kills the child, is retried ``retries`` times, and then counts as a bad clip with reason
``timeout``. A child that dies (a segfault in a codec) is replaced the same way. The child is also
replaced every ``recycle_every`` clips, which bounds the memory that decord is known to leak.

A thread cannot do this: a thread blocked inside C code cannot be interrupted or killed.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
from dataclasses import asdict
from typing import Any

import numpy as np

from emodis_ray.config import FeatureConfig
from emodis_ray.data.features import BadClip, ClipSegments, extract_segments
from emodis_ray.data.rawvideo import TrackSource, extract_video_tracks


def _serve(msg: tuple[Any, ...], cfg: FeatureConfig) -> Any:
    """One request in the child: ``("clip", video, audio)`` -> segments; ``("tracks", video, [(track, wav)])``
    -> one result per track. A bad clip or track answers ``("bad", reason, detail)``."""
    if msg[0] == "tracks":
        _, video, sources = msg
        got = extract_video_tracks(video, [TrackSource(t, a) for t, a in sources], cfg, margin=cfg.face_margin,
                                   ref_height=cfg.track_ref_height)
        return [("bad", r.reason, r.detail) if isinstance(r, BadClip) else r for r in got]
    _, video, audio = msg
    return extract_segments(video, audio, cfg)


def _child(conn: multiprocessing.connection.Connection, cfg_kwargs: dict[str, Any]) -> None:
    import torch

    from emodis_ray.data._decord import load_decord
    from emodis_ray.data.features import log_mel

    torch.set_num_threads(1)  # one decoder thread per task: Ray parallelises across tasks
    cfg = FeatureConfig(**cfg_kwargs)
    load_decord()
    log_mel(np.zeros(cfg.sample_rate, np.float32), cfg)  # warm up: imports and kernels
    conn.send("ready")  # the parent's per-clip timeout starts counting only now
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        try:
            conn.send(_serve(msg, cfg))
        except BadClip as e:
            conn.send(("bad", e.reason, e.detail))
        except Exception as e:  # an unexpected decoder error is this clip's problem, not the job's
            conn.send(("bad", "unreadable", f"{msg[1]}: {type(e).__name__}: {e}"))


class ClipDecoder:
    """Decode clips in a sandboxed child process. Use as a context manager or call :meth:`close`."""

    def __init__(self, cfg: FeatureConfig, timeout_s: float = 60.0, retries: int = 1,
                 recycle_every: int = 1000) -> None:
        self.cfg, self.timeout_s, self.retries, self.recycle_every = cfg, timeout_s, retries, recycle_every
        self._ctx = mp.get_context("spawn")  # fork is unsafe in a threaded Ray worker
        self._proc: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._served = 0
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_child, args=(child, asdict(self.cfg)), daemon=True)
        self._proc.start()
        child.close()
        self._conn, self._served = parent, 0
        try:
            ready = parent.poll(120) and parent.recv() == "ready"  # imports torch and codecs: seconds
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._proc.exitcode
            self._kill()
            raise RuntimeError(f"the clip decoder process did not start (exit code {code}); a script that "
                               f"decodes clips needs an `if __name__ == '__main__':` guard (it is spawned)")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=10)
            self.restarts += 1
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def close(self) -> None:
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(timeout=5)
            except (BrokenPipeError, OSError):
                pass
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def __enter__(self) -> ClipDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, video: str, audio: str | None = None) -> ClipSegments:
        """Decode one clip; raises :class:`BadClip` (reason ``timeout`` after the retries)."""
        result = self._ask(("clip", str(video), None if audio is None else str(audio)), str(video), self.timeout_s)
        if isinstance(result, tuple):
            raise BadClip(result[1], result[2])
        return result

    def tracks(self, video: str, sources: list[tuple[str, str]]) -> list[ClipSegments | BadClip]:
        """Every face track of one raw video, ``(track file, wav)`` each, in one decoder call (the video is opened
        once); the timeout grows with the number of tracks. A timeout or a dead decoder makes every track bad."""
        try:
            got = self._ask(("tracks", str(video), [(str(t), str(a)) for t, a in sources]), str(video),
                            self.timeout_s * max(1, len(sources)))
        except BadClip as e:
            return [BadClip(e.reason, f"{e.detail} (track {t})") for t, _ in sources]
        if isinstance(got, tuple):  # the whole call failed in the child
            return [BadClip(got[1], got[2]) for _ in sources]
        return [BadClip(r[1], r[2]) if isinstance(r, tuple) else r for r in got]

    def _ask(self, msg: tuple[Any, ...], video: str, timeout_s: float) -> Any:
        """Send one request to the child and return its answer; restarts the child after a timeout or a crash,
        retries, then raises :class:`BadClip`."""
        last = BadClip("timeout", f"{video}: no answer within {timeout_s:.0f} s")
        for _ in range(self.retries + 1):
            if self._proc is None or self._served >= self.recycle_every or not self._proc.is_alive():
                if self._proc is not None:
                    self.close()
                self._start()
            assert self._conn is not None
            try:
                self._conn.send(msg)
                if not self._conn.poll(timeout_s):
                    last = BadClip("timeout", f"{video}: no answer within {timeout_s:.0f} s")
                    self._kill()
                    continue
                result = self._conn.recv()
            except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
                code = self._proc.exitcode if self._proc is not None else None
                last = BadClip("unreadable", f"{video}: the decoder process died (exit code {code})")
                self._kill()
                continue
            self._served += 1
            return result
        raise last
