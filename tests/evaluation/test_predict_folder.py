"""`emodis predict --videos DIR` accounts for every entry of the folder, and never outputs a NaN probability
(no Ray: the folder listing, the real decoder and the inference UDF are called directly)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.media import SR, make_clip
from helpers.model import tiny_model
from scipy.io import wavfile

from emodis_ray.config import FeatureConfig
from emodis_ray.data.features import extract_segments
from emodis_ray.data.ingest import write_bad_clips
from emodis_ray.data.rows import to_row
from emodis_ray.evaluation.infer import EmbedClips, predictions_frame
from emodis_ray.evaluation.predict import folder_rows

CFG = FeatureConfig(clip_s=3.0, segment_s=1.0, hop_s=0.5, face_size=32)


def test_folder_rows_predicts_every_mp4_and_lists_every_other_entry(tmp_path: Path) -> None:
    d = tmp_path / "videos"
    make_clip(d / "a.mp4", 1.5)
    make_clip(d / "b.MP4", 1.5, audio=False)
    wavfile.write(d / "b.wav", SR, np.zeros(int(1.5 * SR), np.float32))  # its audio beside it
    make_clip(d / "sub" / "f.Mp4", 1.5)
    (d / "c.mp4").mkdir()  # a folder named like a video
    os.symlink(d / "gone.mp4", d / "d.mp4")  # a dangling link
    os.symlink("e.mp4", d / "e.mp4")  # a link to itself
    os.symlink("h.mp4", d / "g.mp4")  # a loop of two links
    os.symlink("g.mp4", d / "h.mp4")
    os.symlink("a.mp4", d / "link.mp4")  # a good link: predicted
    os.mkfifo(d / "p.mp4")  # a pipe: opening it would block the decoder until its timeout
    (d / "notes.txt").write_text("not a video")
    rows, skipped = folder_rows(d)
    assert list(rows["clip_id"]) == ["a", "b", "link", "sub/f"]
    audio = {c: a for c, a in zip(rows["clip_id"], rows["audio_abspath"], strict=True) if isinstance(a, str)}
    assert audio == {"b": str((d / "b.wav").resolve())}
    assert set(rows["split"]) == {"predict"} and (rows["emotion_idx"] == -1).all()
    reasons = {b["clip_id"]: b["reason"] for b in skipped}
    assert reasons == {"c": "not_a_file", "d": "dangling_link", "e": "link_loop", "g": "link_loop",
                       "h": "link_loop", "p": "not_a_file"}
    for b in skipped:  # one line naming the entry
        assert str(d / f"{b['clip_id']}.mp4") in b["detail"] and "\n" not in b["detail"]
    assert "gone.mp4" in next(b["detail"] for b in skipped if b["clip_id"] == "d")
    # the records are what predict writes to <out>.bad_clips.csv
    write_bad_clips(tmp_path / "pred.bad_clips.csv", skipped)
    back = pd.read_csv(tmp_path / "pred.bad_clips.csv")
    assert list(back["clip_id"]) == ["c", "d", "e", "g", "h", "p"] and list(back["reason"]) == [
        "not_a_file", "dangling_link", "link_loop", "link_loop", "link_loop", "not_a_file"]
    for r in rows.itertuples():  # every row is a clip the real decoder reads (as data/ingest passes it)
        audio = r.audio_abspath if isinstance(r.audio_abspath, str) else None
        assert len(extract_segments(r.video_abspath, audio, CFG).frame_index) == 2


def test_names_that_differ_only_in_case_keep_their_extension(tmp_path: Path) -> None:
    make_clip(tmp_path / "a.mp4", 1.0)
    make_clip(tmp_path / "a.MP4", 1.0)
    make_clip(tmp_path / "b.mp4", 1.0)
    rows, skipped = folder_rows(tmp_path)
    assert sorted(rows["clip_id"]) == ["a.MP4", "a.mp4", "b"] and skipped == []


def test_a_folder_of_only_broken_entries_is_an_error_naming_them(tmp_path: Path) -> None:
    os.symlink("nowhere.mp4", tmp_path / "x.mp4")
    with pytest.raises(FileNotFoundError, match=r"no \.mp4 files found, only entries that are not video files: "
                                                r"x \(dangling_link\)"):
        folder_rows(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        folder_rows(tmp_path / "x.mp4")


def _model_file(path: Path, poison: bool) -> Path:
    model = tiny_model()
    if poison:  # finite weights (a model file with NaN weights is refused on load) whose logits overflow to inf
        with torch.no_grad():
            model.emo_head.weight.fill_(3e38)
            model.emo_head.bias.fill_(3e38)
    kwargs = dict(num_speakers=6, width=0.125, emo_dim=16, spk_dim=8, pooling="mean")
    torch.save({"model": model.state_dict(), "model_kwargs": kwargs, "num_speakers": 6, "config": {},
                "epoch": 0, "metrics": {}}, path)
    return path


def _rows(tmp_path: Path, names: list[str]) -> dict[str, list]:
    rows = [to_row(n, "predict", -1, -1, extract_segments(make_clip(tmp_path / f"{n}.mp4", 3.0), None, CFG), CFG)
            for n in names]
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_a_clip_with_non_finite_probabilities_is_a_bad_clip_not_a_prediction(tmp_path: Path) -> None:
    features = asdict(CFG)
    good = EmbedClips(str(_model_file(tmp_path / "good.pt", poison=False)), features)(_rows(tmp_path, ["a", "b"]))
    nan = EmbedClips(str(_model_file(tmp_path / "nan.pt", poison=True)), features)(_rows(tmp_path, ["c"]))
    assert nan["emo_emb"].sum() > 0.2  # so the logits overflow to inf
    assert np.isnan(nan["emo_prob"]).all() and nan["emo_pred"].tolist() == [0]  # softmax(inf) is NaN: "neutral"
    cols = {k: np.concatenate([good[k], nan[k]]) for k in good}
    df, bad = predictions_frame(cols)
    assert list(df["clip_id"]) == ["a", "b"]
    probs = df[[c for c in df.columns if c.startswith("p_")]].to_numpy()
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [(b["clip_id"], b["reason"]) for b in bad] == [("c", "non_finite")]
    assert "emotion probabilities" in bad[0]["detail"] and "embedding" not in bad[0]["detail"]
    df2, bad2 = predictions_frame(good, embeddings=False)  # all finite: nothing left out
    assert list(df2["clip_id"]) == ["a", "b"] and bad2 == [] and "emo_emb" not in df2.columns
    empty, none = predictions_frame({k: v[:0] for k, v in cols.items()})  # every clip bad upstream
    assert len(empty) == 0 and none == []
