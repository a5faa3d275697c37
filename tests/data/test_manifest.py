from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io as sio

from emodis_ray.config import LabelConfig
from emodis_ray.data.labels import EMOTION_INDEX, FERPLUS_CLASSES
from emodis_ray.data.manifest import (
    MANIFEST_SCHEMA,
    ManifestError,
    manifest_hash,
    read_manifest,
    validate,
    write_manifest,
)
from emodis_ray.data.sources import emovox_manifest, parse_emovox_mat, parse_emovox_name, table_manifest

K = FERPLUS_CLASSES.index
PEOPLE = {  # name in the .mat -> VoxCeleb1 id
    "A.J._Buckley": "id10001",
    "Jane_Doe": "id10002",
    "Bob-Smith": "id10003",
    "Rare_Person": "id10004",  # one clip: below the 5th percentile
    "Heard_Only": "id10005",  # heard clips only: unseen in train
    "Unheard_Guy": "id10006",  # set 2
}


def frames(cls: str, n: int = 4, level: float = 3.0) -> np.ndarray:
    x = np.zeros((n, 8), dtype=np.float32)
    x[:, K(cls)] = level
    return x


def disagreeing() -> np.ndarray:
    """One frame with a huge anger logit, four mildly happy frames: mean_softmax says happiness,
    max_logit says anger."""
    x = np.zeros((5, 8), dtype=np.float32)
    x[0, K("anger")] = 20.0
    x[1:, K("happiness")] = 2.0
    return x


def entries() -> list[tuple[str, str, int, int, np.ndarray]]:
    """(person, youtube id, track, set, logits)."""
    e = []
    for person, vids in [("A.J._Buckley", ["Y8hIVOBu_ls", "a-b_c-d"]), ("Jane_Doe", ["-xY_z0", "q_q"]),
                         ("Bob-Smith", ["bob_1", "bob-2"])]:
        for v in vids:  # train: 2 videos x 2 tracks
            for t in (1, 2):
                e.append((person, v, t, 1, frames("neutral" if t == 1 else "happiness")))
        for j, v in enumerate([f"{vids[0]}_h1", f"{vids[0]}-h2", f"h-{person[:3]}_3"]):  # heard: 3 videos
            for t in (1, 2):
                e.append((person, v, t, 3, frames(["neutral", "sadness", "anger"][j])))
    e[0] = (*e[0][:4], disagreeing())  # id10001/Y8hIVOBu_ls/00001
    e[1] = (*e[1][:4], frames("surprise"))  # -> other
    e[2] = (*e[2][:4], frames("contempt"))  # -> other
    e.append(("Rare_Person", "rare_v", 1, 1, frames("neutral")))
    e += [("Heard_Only", "ho_v", t, 3, frames("neutral")) for t in (1, 2, 3)]
    e += [("Unheard_Guy", "uh_v", t, 2, frames("fear")) for t in (1, 2)]
    e.append(("Jane_Doe", "-xY_z0", 7, 3, frames("neutral")))  # heard track of a train video
    return e


def clip_of(person: str, yt: str, track: int) -> str:
    return f"{PEOPLE[person]}/{yt}/{track:05d}"


def write_mat(path: Path, ents, struct_array: bool = False, **extra) -> None:
    n = len(ents)
    cell = np.empty((1, n), dtype=object)
    names = np.empty((1, n), dtype=object)
    for i, (person, yt, track, _, lg) in enumerate(ents):
        cell[0, i] = lg
        names[0, i] = f"{person}/{'test' if i % 2 else 'dev'}/{yt}_{track:07d}.wav"
    sets = np.array([[e[3] for e in ents]], dtype=np.float64)
    sp = np.array([[int(PEOPLE.get(e[0], "id0")[2:]) for e in ents]], dtype=np.float64)
    if struct_array:  # a 1xN struct array instead of a 1x1 struct of 1xN fields
        images = np.zeros((1, n), dtype=[("name", "O"), ("set", "O"), ("sp", "O")])
        for i in range(n):
            images[0, i] = (names[0, i], sets[0, i], sp[0, i])
    else:
        images = {"name": names, "set": sets, "sp": sp}
    sio.savemat(path, {"wavLogits": cell, "images": images, **extra})


def write_meta(path: Path, header: str = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet") -> None:
    lines = [header] + [f"{i} \t{name}\tm\tUSA\tdev" for name, i in PEOPLE.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def emovox(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    ents = entries()
    write_mat(data / "senet50-ferplus-logits.mat", ents)
    write_meta(data / "vox1_meta.csv")
    for person, yt, track, *_ in ents:
        p = data / "videos" / f"{clip_of(person, yt, track)}.mp4"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return data


def build(data: Path, cfg: LabelConfig | None = None, **kw):
    mat, meta = data / "senet50-ferplus-logits.mat", data / "vox1_meta.csv"
    return emovox_manifest(mat, meta, data / "videos", cfg or LabelConfig(), **kw)


# ------------------------------------------------------------------------------------------------ EmoVox
def test_parse_name_with_underscores_and_dashes():
    got = parse_emovox_name("A.J._Buckley/test/Y8hIVOBuels_0000001.wav")
    assert got == ("A.J._Buckley", "Y8hIVOBuels", "00001")
    assert parse_emovox_name("Bob-Smith/dev/a-b_c-d__x_0000123.wav") == ("Bob-Smith", "a-b_c-d__x", "00123")
    for bad in ("noslash_0000001.wav", "P/dev/noTrack.wav", "P/dev/yt_12a.wav", "P/dev/_0000001.wav"):
        with pytest.raises(ValueError, match="cannot parse"):
            parse_emovox_name(bad)


def test_emovox_build(emovox: Path):
    df, rep = build(emovox)
    assert list(df.columns) == MANIFEST_SCHEMA.names
    assert set(df.source) == {"emovox"}
    by = df.set_index("clip_id")
    # names with '_' and '-' in the YouTube id map to VoxCeleb1 clip ids
    assert by.loc["id10001/a-b_c-d/00002", "video_id"] == "a-b_c-d"
    assert by.loc["id10002/-xY_z0/00001", "video_path"] == "id10002/-xY_z0/00001.mp4"
    assert by.loc["id10001/Y8hIVOBu_ls/00001", "root"] == os.path.abspath(emovox / "videos")
    # 8 -> 5 merge
    assert by.loc["id10001/Y8hIVOBu_ls/00002", "emotion"] == "other"  # surprise
    assert by.loc["id10001/a-b_c-d/00001", "emotion"] == "other"  # contempt
    assert set(df.emotion) <= {"neutral", "happiness", "sadness", "anger", "other"}
    assert (df.emotion.map(EMOTION_INDEX) == df.emotion_idx).all()
    probs = by.loc["id10001/a-b_c-d/00001", "emotion_probs"]
    assert probs.dtype == np.float32 and probs.shape == (8,) and abs(probs.sum() - 1) < 1e-5
    # drops: unheard set, percentile, closed-set identity, heard track of a train video
    assert rep.dropped == {"unheard_set": 2, "speaker_percentile": 1, "unseen_speaker": 3,
                           "heard_video_in_train": 1}
    assert not df.speaker.isin(["id10004", "id10005", "id10006"]).any()
    assert "id10002/-xY_z0/00007" not in by.index
    assert rep.people == 3 and sorted(df.speaker.unique()) == ["id10001", "id10002", "id10003"]
    # speaker_idx dense over kept speakers sorted by id
    assert dict(zip(df.speaker, df.speaker_idx, strict=True)) == {"id10001": 0, "id10002": 1, "id10003": 2}
    # splits: train = set 1; heard split by video, no video in two splits, every heard speaker in train
    assert (df.split == "train").sum() == 12 and rep.clips["train"] == 12
    assert rep.clips["val"] + rep.clips["test"] == 18 and rep.clips["val"] > 0 and rep.clips["test"] > 0
    assert (df.groupby("video_id").split.nunique() == 1).all()
    assert set(df.speaker[df.split != "train"]) <= set(df.speaker[df.split == "train"])
    assert rep.clips_read == len(entries())
    assert sum(rep.classes["test"].values()) == rep.clips["test"]
    text = rep.format()
    assert "speaker percentile" in text and "chance macro-F1" in text
    validate(df)


def test_dominant_label_rules(emovox: Path):
    mean, _ = build(emovox, LabelConfig(rule="mean_softmax"))
    mx, _ = build(emovox, LabelConfig(rule="max_logit"))
    cid = "id10001/Y8hIVOBu_ls/00001"
    assert mean.set_index("clip_id").loc[cid, "emotion"] == "happiness"
    assert mx.set_index("clip_id").loc[cid, "emotion"] == "anger"
    # emotion_probs is the mean softmax whatever the rule
    np.testing.assert_allclose(mean.set_index("clip_id").loc[cid, "emotion_probs"],
                               mx.set_index("clip_id").loc[cid, "emotion_probs"])


def test_percentile_off_keeps_rare_speaker(emovox: Path):
    df, rep = build(emovox, LabelConfig(drop_percentile=0.0))
    assert rep.dropped["speaker_percentile"] == 0 and "id10004" in set(df.speaker)


def test_split_is_seeded_and_by_video(emovox: Path):
    a, _ = build(emovox, LabelConfig(seed=1))
    b, _ = build(emovox, LabelConfig(seed=1))
    pd.testing.assert_frame_equal(a, b)
    heard = a[a.split != "train"]
    assert (heard.groupby("speaker").split.nunique() == 2).all()  # each speaker's videos go both ways
    assert (heard.groupby("video_id").split.nunique() == 1).all()


@pytest.mark.parametrize("kw", [{}, {"squeeze_me": True}, {"struct_as_record": False},
                                {"squeeze_me": True, "struct_as_record": False}, {"simplify_cells": True}])
def test_mat_layouts(tmp_path: Path, kw):
    ents = entries()
    p = tmp_path / "a.mat"
    write_mat(p, ents)
    logits, names, sets = parse_emovox_mat(sio.loadmat(p, **kw), p)
    assert len(logits) == len(names) == len(sets) == len(ents)
    assert names[1] == "A.J._Buckley/test/Y8hIVOBu_ls_0000002.wav"
    assert sets == [e[3] for e in ents]
    for lg, e in zip(logits, ents, strict=True):
        np.testing.assert_array_equal(lg, e[4])
    q = tmp_path / "b.mat"  # 1xN struct array, one clip with a single frame (squeezed to a vector)
    ents[0] = (*ents[0][:4], frames("anger", n=1))
    write_mat(q, ents, struct_array=True)
    logits2, names2, sets2 = parse_emovox_mat(sio.loadmat(q, **kw), q)
    assert names2 == names and sets2 == sets and logits2[0].shape == (1, 8)


def test_audio_and_check_files(emovox: Path):
    audio = emovox / "audio"
    (audio / "id10001/a-b_c-d").mkdir(parents=True)
    (audio / "id10001/a-b_c-d/00001.m4a").write_bytes(b"")
    (audio / "id10001/a-b_c-d/00002.wav").write_bytes(b"")
    os.remove(emovox / "videos/id10002/q_q/00002.mp4")
    df, rep = build(emovox, audio=audio, check_files=True)
    by = df.set_index("clip_id")
    assert by.loc["id10001/a-b_c-d/00001", "audio_path"] == "../audio/id10001/a-b_c-d/00001.m4a"
    assert by.loc["id10001/a-b_c-d/00002", "audio_path"] == "../audio/id10001/a-b_c-d/00002.wav"
    assert pd.isna(by.loc["id10002/q_q/00001", "audio_path"])
    assert rep.dropped["missing_video"] == 1 and "id10002/q_q/00002" not in by.index
    assert any("audio" in n for n in rep.notes)
    write_manifest(df, emovox / "m.parquet")
    back = read_manifest(emovox / "m.parquet", check_files=True)
    b = back.set_index("clip_id")
    assert b.loc["id10001/a-b_c-d/00001", "audio_abspath"] == str(audio / "id10001/a-b_c-d/00001.m4a")
    assert pd.isna(b.loc["id10002/q_q/00001", "audio_abspath"])


def test_probe_reads_fps_and_duration(emovox: Path):
    av = pytest.importorskip("av")
    pytest.importorskip("decord")
    path = emovox / "videos/id10001/Y8hIVOBu_ls/00001.mp4"
    with av.open(str(path), "w") as out:
        st = out.add_stream("mpeg4", rate=25)
        st.width = st.height = 32
        st.pix_fmt = "yuv420p"
        for _ in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            out.mux(st.encode(frame))
        out.mux(st.encode())
    df, rep = build(emovox, probe=True)
    by = df.set_index("clip_id")
    assert by.loc["id10001/Y8hIVOBu_ls/00001", "fps"] == pytest.approx(25.0)
    assert by.loc["id10001/Y8hIVOBu_ls/00001", "duration_s"] == pytest.approx(0.4)
    assert np.isnan(by.loc["id10001/a-b_c-d/00001", "fps"])  # empty placeholder: left null
    assert any("probed" in n for n in rep.notes)
    plain, _ = build(emovox)
    assert plain.fps.isna().all() and plain.duration_s.isna().all()


def test_emovox_errors(tmp_path: Path, emovox: Path):
    meta, videos, cfg = emovox / "vox1_meta.csv", emovox / "videos", LabelConfig()
    ents = entries()
    bad = tmp_path / "bad.mat"
    write_mat(bad, ents)
    d = sio.loadmat(bad)
    d["wavLogits"] = d["wavLogits"][:, :-1]
    with pytest.raises(ManifestError, match=r"bad\.mat: wavLogits has 36 entries but images\.name has 37"):
        parse_emovox_mat(d, bad)
    sio.savemat(bad, {"images": {"name": np.array(["x"], dtype=object)}})
    with pytest.raises(ManifestError, match=r"bad\.mat: missing top-level key wavLogits"):
        emovox_manifest(bad, meta, videos, cfg)
    write_mat(bad, [*ents[:3], ("Nobody_Known", "vid_x", 1, 1, frames("neutral"))])
    with pytest.raises(ManifestError, match=r"bad\.mat: entry 3: name 'Nobody_Known/test/vid_x_0000001.wav'"):
        emovox_manifest(bad, meta, videos, cfg)
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = frames("neutral")
    names = np.empty((1, 1), dtype=object)
    names[0, 0] = "Jane_Doe/dev/notrack.wav"
    sio.savemat(bad, {"wavLogits": cell, "images": {"name": names, "set": np.array([[1.0]])}})
    with pytest.raises(ManifestError, match=r"bad\.mat: entry 0: cannot parse EmoVox name 'Jane_Doe/dev/no"):
        emovox_manifest(bad, meta, videos, cfg)
    wrong = tmp_path / "meta.csv"
    write_meta(wrong, header="VoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set")
    with pytest.raises(ManifestError, match=r"meta\.csv: not a VoxCeleb1 meta file"):
        emovox_manifest(emovox / "senet50-ferplus-logits.mat", wrong, videos, cfg)


# ------------------------------------------------------------------------------------------- user tables
def table_rows() -> pd.DataFrame:
    rows = []
    for s, spk in enumerate(["spkB", "spkA", "spkC"]):
        for t in range(3):
            rows.append({"clip_id": f"{spk}/trainvid{s}/{t:05d}", "video_path": f"v/{spk}_{t}.mp4",
                         "speaker": spk, "emotion": ["neutral", "happiness", "anger"][t], "split": "train"})
    rows += [
        {"clip_id": "spkA/valvid/00000", "video_path": "v/a_val.mp4", "speaker": "spkA", "emotion": "sadness",
         "split": "val"},
        {"clip_id": "spkA/tv1/00000", "video_path": "v/a_t0.mp4", "speaker": "spkA", "emotion": "neutral",
         "split": "test"},
        {"clip_id": "spkA/tv1/00001", "video_path": "v/a_t1.mp4", "speaker": "spkA", "emotion": "neutral",
         "split": "test"},
        {"clip_id": "spkB/tv2/00000", "video_path": "v/b_t0.mp4", "speaker": "spkB", "emotion": "neutral",
         "split": "test"},
        {"clip_id": "spkC/tv3/00000", "video_path": "v/c_t0.mp4", "speaker": "spkC", "emotion": "fear",
         "split": "test"},  # FER+ name: merged to other
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def table(tmp_path: Path) -> Path:
    d = tmp_path / "tbl"
    (d / "v").mkdir(parents=True)
    t = table_rows()
    for p in t.video_path:
        (d / p).write_bytes(b"")
    t["audio_path"] = None
    t.loc[0, "audio_path"] = "v/spkB_0.wav"
    (d / "v/spkB_0.wav").write_bytes(b"")
    t["emotion_probs"] = None
    t.loc[1, "emotion_probs"] = " ".join(["0.125"] * 8)
    t.to_csv(d / "clips.csv", index=False)
    return d / "clips.csv"


def test_table_manifest_csv_and_parquet(table: Path):
    df, rep = table_manifest(table)
    assert list(df.columns) == MANIFEST_SCHEMA.names and set(df.source) == {"table"}
    assert dict(zip(df.speaker, df.speaker_idx, strict=True)) == {"spkA": 0, "spkB": 1, "spkC": 2}
    by = df.set_index("clip_id")
    assert by.loc["spkA/tv1/00001", "video_id"] == "tv1"  # default: the clip id's middle part
    assert by.loc["spkC/tv3/00000", "emotion"] == "other" and by.loc["spkC/tv3/00000", "emotion_idx"] == 4
    assert by.loc["spkB/trainvid0/00000", "audio_path"] == "v/spkB_0.wav"
    assert pd.isna(by.loc["spkB/trainvid0/00001", "audio_path"])
    np.testing.assert_allclose(by.loc["spkB/trainvid0/00001", "emotion_probs"], [0.125] * 8)
    assert by.loc["spkB/trainvid0/00002", "emotion_probs"] is None
    assert set(df.root) == {os.path.abspath(table.parent)}
    validate(df, check_files=True)
    # test split: 3 neutral of 4 -> p = 0.75, chance macro-F1 = 2p/(1+p)/5 = 1.5/1.75/5 = 0.171428...
    assert rep.clips == {"train": 9, "val": 1, "test": 4}
    assert rep.classes["test"] == {"neutral": 3, "happiness": 0, "sadness": 0, "anger": 0, "other": 1}
    assert rep.chance_f1 == pytest.approx(0.17142857)
    assert "17.1 %" in rep.format()  # percent, as every figure
    pq_path = table.with_suffix(".parquet")
    raw = pd.read_csv(table, dtype=str)
    raw["emotion_probs"] = [None if not isinstance(x, str) else [0.125] * 8 for x in raw.emotion_probs]
    raw.to_parquet(pq_path)
    df2, _ = table_manifest(pq_path)
    pd.testing.assert_frame_equal(df, df2)


def test_table_manifest_errors(tmp_path: Path):
    p = tmp_path / "t.csv"
    table_rows().drop(columns=["split"]).to_csv(p, index=False)
    with pytest.raises(ManifestError, match=r"t\.csv: missing required columns split"):
        table_manifest(p)
    t = table_rows()
    t.loc[2, "emotion"] = "joy"
    t.to_csv(p, index=False)
    with pytest.raises(ManifestError, match=r"t\.csv: .*unknown emotion class \[.joy.\].*row 2 \(spkB/"):
        table_manifest(p)


# ----------------------------------------------------------------------------------------------- validate
@pytest.fixture
def valid(table: Path) -> pd.DataFrame:
    return table_manifest(table)[0]


def _bad(df: pd.DataFrame, pattern: str, **kw) -> None:
    with pytest.raises(ManifestError, match=pattern):
        validate(df, **kw)


def test_validate_errors(valid: pd.DataFrame):
    validate(valid)
    _bad(valid.drop(columns=["split", "fps"]), r"missing columns: split, fps")
    df = valid.copy()
    df["speaker_idx"] = df["speaker_idx"].astype(str)
    _bad(df, r"column speaker_idx must be an integer .*rows 0 \(spkB/trainvid0/00000\)")
    df = valid.copy()
    df["emotion_probs"] = df["emotion_probs"].astype(object)
    df.at[3, "emotion_probs"] = [0.5, 0.5]
    _bad(df, r"column emotion_probs must be null or 8 numbers.*row 3 \(spkA/trainvid1/00000\)")
    df = valid.copy()
    df.loc[1, "video_path"] = None
    _bad(df, r"column video_path must be a string .*row 1 \(spkB/trainvid0/00001\)")
    df = valid.copy()
    df.loc[4, "emotion"] = "joy"
    _bad(df, r"unknown emotion class \['joy'\].*row 4 \(spkA/trainvid1/00001\)")
    df = valid.copy()
    df.loc[5, "emotion_idx"] = 0
    _bad(df, r"emotion_idx does not match emotion.*row 5 \(spkA/trainvid1/00002\)")
    df = valid.copy()
    df.loc[9, "split"] = "dev"
    _bad(df, r"unknown split \['dev'\].*row 9 \(spkA/valvid/00000\)")
    df = valid.copy()
    df.loc[11, "clip_id"] = df.loc[10, "clip_id"]
    _bad(df, r"duplicate clip_id: rows 10 \(spkA/tv1/00000\), 11 \(spkA/tv1/00000\)")
    df = valid.copy()
    df.loc[12, ["speaker", "speaker_idx"]] = ["spkZ", 3]
    _bad(df, r"val/test speakers unseen in train \['spkZ'\]: row 12 \(spkB/tv2/00000\)")
    df = valid.copy()
    df.loc[0, "speaker_idx"] = 2
    _bad(df, r"speaker_idx inconsistent with speaker.*0 \(spkB/trainvid0/00000\)")
    df = valid.copy()
    df.loc[13, "video_id"] = "tv1"  # same split: fine
    validate(df)
    df.loc[9, "video_id"] = "tv1"
    _bad(df, r"video_id in two splits \['tv1'\]: rows 9 \(spkA/valvid/00000\), 10 \(spkA/tv1/00000\), "
         r"11 \(spkA/tv1/00001\), 13 \(spkC/tv3/00000\)$")


def test_validate_missing_files_and_long_lists(valid: pd.DataFrame, tmp_path: Path):
    df = valid.copy()
    df.loc[7, "video_path"] = "v/gone.mp4"
    df.loc[0, "audio_path"] = "v/gone.wav"
    validate(df)  # files are only checked on request
    _bad(df, r"missing video files .*gone\.mp4.*row 7 \(spkC/trainvid2/00001\).*missing audio files.*row 0 ",
         check_files=True)
    rel = valid.copy()  # relative roots resolve against base
    rel["root"] = "tbl"
    validate(rel, base=tmp_path, check_files=True)
    _bad(rel, r"missing video files", base=tmp_path / "elsewhere", check_files=True)
    df = valid.copy()
    df["emotion"] = "joy"
    _bad(df, r"rows 0 \(spkB/trainvid0/00000\), .*9 \(spkA/valvid/00000\) and 4 more")


# ------------------------------------------------------------------------------------------ read / write
def test_roundtrip_and_move(emovox: Path, tmp_path: Path):
    df, _ = build(emovox)
    path = emovox / "manifests" / "emovox.parquet"
    write_manifest(df, path)
    assert pq.read_table(path).schema.equals(MANIFEST_SCHEMA, check_metadata=False)
    assert set(pq.read_table(path).column("root").to_pylist()) == {"../videos"}
    back = read_manifest(path, check_files=True)
    pd.testing.assert_frame_equal(back[df.columns.tolist()], df)
    assert back.video_abspath[0] == os.path.join(df.root[0], df.video_path[0])
    assert back.audio_abspath.isna().all()
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp files left
    moved = tmp_path / "moved"
    shutil.move(str(emovox), str(moved))
    again = read_manifest(moved / "manifests" / "emovox.parquet", check_files=True)
    assert all(p.startswith(str(moved)) and os.path.exists(p) for p in again.video_abspath)
    assert manifest_hash(again) == manifest_hash(df)
    write_manifest(again, moved / "copy.parquet")  # extra columns are dropped on write
    assert pq.read_table(moved / "copy.parquet").schema.names == MANIFEST_SCHEMA.names


def test_nothing_written_on_error(valid: pd.DataFrame, tmp_path: Path):
    df = valid.copy()
    df.loc[0, "split"] = "dev"
    out = tmp_path / "out" / "m.parquet"
    with pytest.raises(ManifestError, match="unknown split"):
        write_manifest(df, out)
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
    write_manifest(valid, out)
    valid.astype({"speaker_idx": "int64"}).to_parquet(out.with_name("wrong.parquet"))  # refused on read
    with pytest.raises(ManifestError, match=r"wrong\.parquet: wrong schema: column speaker_idx is int64"):
        read_manifest(out.with_name("wrong.parquet"))
    table = pq.read_table(out)
    pq.write_table(table.drop_columns(["source"]), out.with_name("short.parquet"))
    with pytest.raises(ManifestError, match=r"short\.parquet: wrong schema: missing column source"):
        read_manifest(out.with_name("short.parquet"))
    bad = table.set_column(table.schema.get_field_index("split"), "split",
                           pa.array(["dev"] + table.column("split").to_pylist()[1:]))
    pq.write_table(bad, out.with_name("invalid.parquet"))
    with pytest.raises(ManifestError, match=r"invalid\.parquet: invalid manifest: unknown split.*row 0 "):
        read_manifest(out.with_name("invalid.parquet"))


def test_manifest_hash(valid: pd.DataFrame):
    h = manifest_hash(valid)
    assert len(h) == 16 and int(h, 16) >= 0
    shuffled = valid.sample(frac=1.0, random_state=3)
    assert manifest_hash(shuffled) == h
    assert manifest_hash(valid.assign(root="/somewhere/else")) == h
    changed = valid.copy()
    changed.loc[0, "emotion"] = "sadness"
    assert manifest_hash(changed) != h


def test_face_tracks_enter_the_hash_and_older_manifests_read(valid: pd.DataFrame, tmp_path: Path):
    """A crop-layout manifest keeps the hash it had before ``track_path`` existed (so its feature cache stays
    valid), a manifest written without the column reads as all null, and a row's track file enters the hash."""
    import hashlib
    import json

    old_columns = ("clip_id", "video_path", "audio_path", "speaker", "speaker_idx", "emotion", "emotion_idx",
                   "split", "video_id")  # the hash as computed before face tracks were read
    rows = sorted(json.dumps([None if v is None or (isinstance(v, float) and np.isnan(v))
                              else (int(v) if isinstance(v, (int, np.integer)) else str(v)) for v in r])
                  for r in valid.loc[:, list(old_columns)].itertuples(index=False, name=None))
    before = hashlib.sha256("".join(r + "\n" for r in rows).encode()).hexdigest()[:16]
    assert valid["track_path"].isna().all() and manifest_hash(valid) == before
    with_track = valid.copy()
    with_track.loc[0, "track_path"] = "../txt/id1/v/00001.txt"
    assert manifest_hash(with_track) != before
    out = tmp_path / "m.parquet"
    write_manifest(valid, out)
    table = pq.read_table(out)
    pq.write_table(table.drop(["track_path"]), out)  # as an older version wrote it
    back = read_manifest(out)
    assert back["track_path"].isna().all() and back["track_abspath"].isna().all()
    assert manifest_hash(back) == before
