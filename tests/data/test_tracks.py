"""Face-track files as the VoxCeleb releases write them: both box conventions, placement, and errors naming the
file and line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emodis_ray.data.tracks import TrackError, parse_track

FRACTION = """Identity  : \tid10001
Reference : \t1zcIwhmdeo4
Offset    : \t1
FV Conf   : \t16.647\t(1)
ASD Conf  : \t4.179

FRAME \tX \tY \tW \tH\x20
000245 \t0.300 \t0.100 \t0.200 \t0.400\x20
000246 \t0.310 \t0.100 \t0.200 \t0.400\x20
000250 \t0.350 \t0.120 \t0.220 \t0.400\x20
"""

PIXEL = """Identity  : \tid00012
Reference : \t21Uxsk56VDQ
Offset    : \t0

FRAME \tX \tY \tW \tH\x20
000049 \t232 \t53 \t136 \t136\x20
000050 \t234 \t53 \t136 \t136\x20
"""


def test_a_vox1_file_parses_with_fractional_boxes(tmp_path: Path) -> None:
    f = tmp_path / "00001.txt"
    f.write_text(FRACTION)
    t = parse_track(f)
    assert t.identity == "id10001" and t.reference == "1zcIwhmdeo4" and t.header["fv conf"] == "16.647\t(1)"
    assert t.units == "fraction" and t.frames.tolist() == [245, 246, 250]
    np.testing.assert_allclose(t.boxes[0], [0.3, 0.1, 0.2, 0.4])
    assert t.start_s == pytest.approx(245 / 25) and t.duration_s == pytest.approx(6 / 25)
    # at its first frame on a 640 x 360 frame: x 0.3 * 640 = 192, y 0.1 * 360 = 36, w 128, h 144
    assert t.box_at(0.0, 640, 360) == (192, 36, 320, 180)
    # two frames (0.08 s) in: frame 247, a quarter of the way from 246 to 250 -> x 0.32, y 0.105, w 0.205, h 0.4
    assert t.box_at(2 / 25, 640, 360) == (round(0.32 * 640), round(0.105 * 360), round(0.525 * 640),
                                          round(0.505 * 360))
    assert t.box_at(-1.0, 640, 360) == t.box_at(0.0, 640, 360)  # held at the ends


def test_a_pixel_file_parses_and_scales_from_its_reference_frame() -> None:
    t = parse_track("x/00001.txt", PIXEL)
    assert t.units == "pixel" and t.frames.tolist() == [49, 50] and t.reference == "21Uxsk56VDQ"
    assert t.box_at(0.0, 640, 360) == (232, 53, 368, 189)  # pixels of this frame
    assert t.box_at(0.0, 320, 180, ref_height=360) == (116, 26, 184, 94)  # measured on a frame twice as high


def test_margin_grows_the_box_and_the_frame_clamps_it() -> None:
    t = parse_track("t.txt", "FRAME X Y W H\n1 0.9 -0.05 0.2 0.2\n")
    assert t.units == "fraction"
    # 100 x 100 frame: x 90..110, y -5..15; a 25 % margin -> x 85..115, y -10..20; clamped to the frame
    assert t.box_at(0.0, 100, 100, margin=0.25) == (85, 0, 100, 20)
    inside = parse_track("t.txt", "FRAME X Y W H\n1 0.4 0.4 0.2 0.2\n")
    assert inside.box_at(0.0, 100, 100, margin=0.25) == (35, 35, 65, 65)


@pytest.mark.parametrize(("text", "where", "words"), [
    ("FRAME X Y W H\n1 0.1 0.1 0.2\n", ":2:", "5 fields"),
    ("FRAME X Y W H\n1 0.1 0.1 0.2 0.2\n2 a 0.1 0.2 0.2\n", ":3:", "not numbers"),
    ("FRAME X Y W H\n1 0.1 0.1 0.0 0.2\n", ":2:", "positive size"),
    ("FRAME X Y W H\n1 0.1 0.1 nan 0.2\n", ":2:", "finite"),
    ("FRAME X Y W H\n5 0.1 0.1 0.2 0.2\n5 0.1 0.1 0.2 0.2\n", ":3:", "does not follow frame 5"),
    ("Identity : id1\nthis is not a track\n", ":2:", "FRAME X Y W H"),
    ("Identity : id1\n\nFRAME X Y W H\n", "", "no 'FRAME X Y W H' rows"),
])
def test_a_bad_file_names_the_file_and_line(text: str, where: str, words: str) -> None:
    with pytest.raises(TrackError, match="bad.txt" + where) as e:
        parse_track("txt/id1/v/bad.txt", text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_missing_file_is_a_track_error(tmp_path: Path) -> None:
    with pytest.raises(TrackError, match="missing.txt: cannot read"):
        parse_track(tmp_path / "missing.txt")
