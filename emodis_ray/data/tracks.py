"""VoxCeleb face-track files (``txt/idNNNNN/<youtube-id>/NNNNN.txt``): parse them and place their boxes.

A track file, as the VoxCeleb releases write it::

    Identity  : 	id10001
    Reference : 	1zcIwhmdeo4
    Offset    : 	1
    FV Conf   : 	16.647	(1)
    ASD Conf  : 	4.179

    FRAME 	X 	Y 	W 	H
    000245 	0.362 	0.083 	0.177 	0.315
    000246 	0.363 	0.083 	0.177 	0.315

``FRAME`` counts frames of the reference video at 25 fps; ``X Y W H`` is the box's top-left corner and size.
Releases write them either as fractions of the frame or in pixels of a frame of a reference height (360 px for
VoxCeleb1's tracks). The units are detected per file (:func:`box_units`): every coordinate within [-0.5, 1.5]
means fractions, since a face box in pixels is always wider than one and a half pixels. Pure: no Ray, no video.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

TRACK_FPS = 25.0  # the frame rate FRAME numbers count at
VOX1_REF_HEIGHT = 360  # the frame height VoxCeleb1's pixel boxes were measured on
Units = Literal["fraction", "pixel"]


class TrackError(ValueError):
    """A track file that does not parse; the message names the file and the line."""


@dataclass(frozen=True)
class FaceTrack:
    """One parsed face track: ``frames`` (N,) int at :data:`TRACK_FPS`, ``boxes`` (N, 4) float ``x, y, w, h``."""

    path: str
    frames: np.ndarray
    boxes: np.ndarray
    units: Units
    header: Mapping[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        return self.header.get("identity", "")

    @property
    def reference(self) -> str:
        """The YouTube id of the video the track was cut from."""
        return self.header.get("reference", "")

    @property
    def start_s(self) -> float:
        """The time of the track's first frame in the reference video (its wav starts here)."""
        return float(self.frames[0]) / TRACK_FPS

    @property
    def duration_s(self) -> float:
        """From the first frame to the end of the last one."""
        return float(self.frames[-1] - self.frames[0] + 1) / TRACK_FPS

    def box_xywh(self, t_s: float, width: int, height: int, *, ref_height: int | None = None
                 ) -> tuple[float, float, float, float]:
        """The box ``(x, y, w, h)`` in pixels of a ``width`` × ``height`` frame at ``t_s`` seconds after the
        track's first frame, interpolated linearly between track frames (held at the ends), not clamped. Pixel
        boxes are scaled by ``height / ref_height`` on both axes when the height of the frame they were measured
        on is given."""
        f = self.frames[0] + t_s * TRACK_FPS
        x, y, w, h = (float(np.interp(f, self.frames, self.boxes[:, k])) for k in range(4))
        if self.units == "fraction":
            return x * width, y * height, w * width, h * height
        s = 1.0 if ref_height is None else height / ref_height
        return x * s, y * s, w * s, h * s

    def box_at(self, t_s: float, width: int, height: int, *, margin: float = 0.0,
               ref_height: int | None = None) -> tuple[int, int, int, int]:
        """:meth:`box_xywh` as corners ``(x0, y0, x1, y1)``, grown by ``margin`` of its size on every side and
        clamped to the frame (at least one pixel): the slice to crop."""
        x, y, w, h = self.box_xywh(t_s, width, height, ref_height=ref_height)
        x, y, w, h = x - margin * w, y - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin)
        x0, y0 = min(max(int(round(x)), 0), width - 1), min(max(int(round(y)), 0), height - 1)
        x1, y1 = min(max(int(round(x + w)), x0 + 1), width), min(max(int(round(y + h)), y0 + 1), height)
        return x0, y0, x1, y1


def box_units(boxes: np.ndarray) -> Units:
    """``"fraction"`` when every coordinate lies in [-0.5, 1.5], else ``"pixel"``."""
    return "fraction" if np.all((boxes >= -0.5) & (boxes <= 1.5)) else "pixel"


def parse_track(path: str | Path, text: str | None = None) -> FaceTrack:
    """Parse a track file (``text``: its content, read from ``path`` when omitted). Raises :class:`TrackError`
    naming ``path:line`` for a row that is not five numbers, a box without area, frames that do not increase, or
    a file without rows."""
    path = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise TrackError(f"{path}: cannot read: {e.strerror or e}") from None
    header: dict[str, str] = {}
    rows: list[tuple[int, float, float, float, float]] = []
    in_table = False
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if not in_table:
            if parts[0].upper() == "FRAME":
                in_table = True
            elif ":" in line:
                key, value = line.split(":", 1)
                header[" ".join(key.split()).lower()] = value.strip()
            else:
                raise TrackError(f"{path}:{n}: expected 'Key : value' or the 'FRAME X Y W H' header, got {line!r}")
            continue
        if len(parts) != 5:
            raise TrackError(f"{path}:{n}: expected 5 fields (FRAME X Y W H), got {len(parts)}: {line!r}")
        try:
            frame, box = int(parts[0]), [float(p) for p in parts[1:]]
        except ValueError:
            raise TrackError(f"{path}:{n}: not numbers: {line!r}") from None
        if not all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            raise TrackError(f"{path}:{n}: a box needs a finite position and a positive size: {line!r}")
        if rows and frame <= rows[-1][0]:
            raise TrackError(f"{path}:{n}: frame {frame} does not follow frame {rows[-1][0]}")
        rows.append((frame, *box))
    if not rows:
        raise TrackError(f"{path}: no 'FRAME X Y W H' rows")
    table = np.asarray(rows, dtype=np.float64)
    boxes = table[:, 1:]
    return FaceTrack(path, table[:, 0].astype(np.int64), boxes, box_units(boxes), header)
