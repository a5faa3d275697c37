"""Bad input is rejected with a reason, never accepted as something else: clips whose features are not finite
or whose media data was cut (decode), and broken teacher logits, fps, durations and files (manifest).
Every bad input is generated here from real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io as sio
from helpers.media import SR, make_clip, make_faststart_clip
from scipy.io import wavfile

from emodis_ray.config import FeatureConfig, LabelConfig
from emodis_ray.data.decode import ClipDecoder
from emodis_ray.data.features import BadClip, extract_segments, load_audio
from emodis_ray.data.labels import clip_probs, dominant_emotion8
from emodis_ray.data.manifest import ManifestError
from emodis_ray.data.sources import emovox_manifest, table_manifest

CFG = FeatureConfig(clip_s=3.0, segment_s=1.0, hop_s=0.5, face_size=32)


def huge_audio_clip(path: Path) -> tuple[Path, Path]:
    """A good video with a float32 WAV beside it (VoxCeleb2 layout) whose samples are finite but ~1e20."""
    make_clip(path, 3.0)
    wav = (1e20 * np.random.default_rng(0).standard_normal(3 * SR)).astype(np.float32)
    assert np.isfinite(wav).all()
    wavfile.write(path.with_suffix(".wav"), SR, wav)
    return path, path.with_suffix(".wav")


def cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


# ------------------------------------------------------------------------------------------------ decode
def test_finite_but_huge_audio_is_a_non_finite_clip(tmp_path: Path) -> None:
    video, wav = huge_audio_clip(tmp_path / "huge.mp4")
    assert np.isfinite(load_audio(wav, SR)).all()  # the samples pass the nan_audio check...
    with pytest.raises(BadClip) as e:
        extract_segments(video, wav, CFG)
    assert e.value.reason == "non_finite"  # ...but their log-mel is NaN
    assert str(video) in str(e.value) and "log-mel" in str(e.value) and "\n" not in str(e.value)
    good = extract_segments(make_clip(tmp_path / "good.mp4", 3.0), None, CFG)  # beside it, a good clip decodes
    assert len(good.frame_index) == 5 and np.isfinite(good.audio).all()


@pytest.mark.parametrize(("fraction", "wav_beside"), [(0.3, False), (0.6, False), (0.9, False), (0.6, True)])
def test_clip_cut_inside_its_media_data_is_truncated(tmp_path: Path, fraction: float, wav_beside: bool) -> None:
    full = make_faststart_clip(tmp_path / "full.mp4", 3.0)
    assert extract_segments(full, None, CFG).duration_s == pytest.approx(3.0)  # whole, the clip is good
    part = cut(full, tmp_path / "part.mp4", fraction)
    audio = None
    if wav_beside:  # the audio is whole and separate: only the video was cut
        audio = part.with_suffix(".wav")
        wavfile.write(audio, SR, (0.01 * np.random.default_rng(0).standard_normal(3 * SR)).astype(np.float32))
    with pytest.raises(BadClip) as e:
        extract_segments(part, audio, CFG)
    assert e.value.reason == "truncated", str(e.value)
    msg = str(e.value)
    assert str(part) in msg and "declares 3.00 s" in msg and "\n" not in msg
    ends = float(msg.split("ends at ")[1].split(" s")[0])
    assert 0 < ends < 3.0 * fraction + 0.2  # both durations are named, the shorter one as decoded


@pytest.mark.timeout(180)
def test_sandboxed_decoder_reports_the_new_reasons_and_goes_on(tmp_path: Path) -> None:
    video, wav = huge_audio_clip(tmp_path / "huge.mp4")
    part = cut(make_faststart_clip(tmp_path / "full.mp4", 3.0), tmp_path / "part.mp4", 0.6)
    good = make_clip(tmp_path / "good.mp4", 3.0)
    with ClipDecoder(CFG, timeout_s=60.0, retries=0) as dec:
        reasons = []
        for v, a in [(video, wav), (part, None)]:
            with pytest.raises(BadClip) as e:
                dec(str(v), None if a is None else str(a))
            reasons.append(e.value.reason)
        assert reasons == ["non_finite", "truncated"]
        assert len(dec(str(good)).frame_index) == 5
        assert dec.restarts == 0  # a bad clip is an answer, not a crash


# ---------------------------------------------------------------------------------------------- manifest
PEOPLE = {"Ann_Lee": "id10001", "Bo-Ray": "id10002"}


def write_mat(path: Path, logits: list[np.ndarray]) -> None:
    """An EmoVox-style .mat: entry i is Ann_Lee's (even i) or Bo-Ray's (odd i) track i of video vid_i, set 1."""
    n = len(logits)
    cell, names = np.empty((1, n), dtype=object), np.empty((1, n), dtype=object)
    for i, lg in enumerate(logits):
        cell[0, i] = lg
        names[0, i] = f"{list(PEOPLE)[i % 2]}/dev/vid_{i}_{i + 1:07d}.wav"
    sio.savemat(path, {"wavLogits": cell, "images": {"name": names, "set": np.ones((1, n)), "sp": np.ones((1, n))}})


@pytest.fixture
def emovox(tmp_path: Path) -> Path:
    (tmp_path / "videos").mkdir()
    lines = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"] + [f"{i}\t{n}\tm\tUSA\tdev" for n, i in
                                                                      PEOPLE.items()]
    (tmp_path / "vox1_meta.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def build(data: Path, mat: Path) -> pd.DataFrame:
    return emovox_manifest(mat, data / "vox1_meta.csv", data / "videos", LabelConfig(drop_percentile=0))[0]


def happy(frames: int = 4) -> np.ndarray:
    x = np.zeros((frames, 8), np.float32)
    x[:, 1] = 3.0
    return x


@pytest.mark.parametrize("where", ["all", "one_frame", "inf"])
def test_non_finite_teacher_logits_are_an_error_naming_the_entry(emovox: Path, where: str) -> None:
    bad = happy()
    if where == "all":
        bad[:] = np.nan  # was labelled neutral: argmax of NaN is 0
    elif where == "one_frame":
        bad[2, 3] = np.nan
    else:
        bad[1, 0] = np.inf
    mat = emovox / "logits.mat"
    write_mat(mat, [happy(), happy(), bad, happy()])
    with pytest.raises(ManifestError, match=r"logits\.mat: entry 2 \(Ann_Lee/dev/vid_2_0000003\.wav\): wavLogits: "
                                            r"\d+ of 32 logits are not finite .*frame") as e:
        build(emovox, mat)
    assert "\n" not in str(e.value)
    write_mat(mat, [happy(), happy(), happy(), happy()])
    assert set(build(emovox, mat)["emotion"]) == {"happiness"}  # the same file with finite logits builds


def test_label_rules_refuse_non_finite_logits() -> None:
    nan = np.full((3, 8), np.nan)
    for rule in ("mean_softmax", "max_logit"):
        with pytest.raises(ValueError, match="24 of 24 logits are not finite"):
            dominant_emotion8(nan, rule)  # type: ignore[arg-type]
    inf = happy()
    inf[0, 0] = np.inf  # softmax of +inf is NaN
    with pytest.raises(ValueError, match="1 of 32 logits are not finite .* frame 0"):
        clip_probs(inf)
    assert dominant_emotion8(happy()) == "happiness"


@pytest.mark.parametrize("content", [b"", b"x", b"this is a text file, not a MATLAB file\n" * 20])
def test_a_mat_that_is_not_a_mat_file_is_one_clear_error(emovox: Path, content: bytes) -> None:
    mat = emovox / "logits.mat"
    mat.write_bytes(content)
    with pytest.raises(ManifestError, match=r"logits\.mat: cannot read the EmoVox \.mat file") as e:
        build(emovox, mat)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_a_mat_without_entries_is_an_error(emovox: Path) -> None:
    mat = emovox / "logits.mat"
    sio.savemat(mat, {"wavLogits": np.empty((1, 0), dtype=object),
                      "images": {"name": np.empty((1, 0), dtype=object), "set": np.ones((1, 0))}})
    with pytest.raises(ManifestError, match=r"logits\.mat: no entries"):
        build(emovox, mat)


TABLE = pd.DataFrame({
    "clip_id": [f"spk{s}/v{s}{k}/0000{k}" for s in "AB" for k in range(3)],
    "video_path": [f"{s}{k}.mp4" for s in "AB" for k in range(3)],
    "speaker": [f"spk{s}" for s in "AB" for _ in range(3)],
    "emotion": ["neutral", "happiness", "anger"] * 2,
    "split": ["train"] * 6,
})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_with_only_its_header_is_one_clear_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"clips{suffix}"
    empty = TABLE.iloc[:0]
    empty.to_csv(path, index=False) if suffix == ".csv" else empty.to_parquet(path)
    with pytest.raises(ManifestError, match=rf"clips\{suffix}: no clips: the table has its header but no rows") as e:
        table_manifest(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("column", "value"), [("fps", 0.0), ("fps", -25.0), ("duration_s", 0.0),
                                               ("duration_s", -1.5), ("duration_s", np.inf)])
def test_non_positive_fps_or_duration_is_an_error_naming_the_row(tmp_path: Path, column: str, value: float) -> None:
    t = TABLE.assign(fps=25.0, duration_s=3.0)
    t.loc[4, column] = value
    path = tmp_path / "clips.csv"
    t.to_csv(path, index=False)
    with pytest.raises(ManifestError, match=rf"clips\.csv: .*{column} must be a positive number or null .*"
                                            r"row 4 \(spkB/vB1/00001\)") as e:
        table_manifest(path)
    assert "\n" not in str(e.value)
    t.loc[4, column] = None  # unknown is allowed
    t.to_csv(path, index=False)
    assert len(table_manifest(path)[0]) == 6


def test_non_finite_emotion_probs_are_an_error_naming_the_row(tmp_path: Path) -> None:
    t = TABLE.assign(emotion_probs=" ".join(["0.125"] * 8))
    t.loc[1, "emotion_probs"] = " ".join(["nan"] * 8)
    path = tmp_path / "clips.csv"
    t.to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"clips\.csv: .*emotion_probs has NaN or infinite values: row 1 "
                                            r"\(spkA/vA1/00001\)"):
        table_manifest(path)
