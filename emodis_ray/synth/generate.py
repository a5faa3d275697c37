"""Synthetic EmoVox, written in the real on-disk formats (docs/design.md §3.4).

``generate`` writes, under one folder:

- ``videos/idNNNNN/<video-id>/NNNNN.mp4``: VoxCeleb2-style face crops, H.264 with an AAC mono track; or, in the
  VoxCeleb1 layout, ``raw/<video-id>.mp4`` (wide videos of several tracks), ``txt/idNNNNN/<video-id>/NNNNN.txt``
  (face tracks) and ``wav/idNNNNN/<video-id>/NNNNN.wav`` (:mod:`emodis_ray.synth.vox1`);
- ``vox1_meta.csv``: the VoxCeleb1 meta table (tab-separated), one row per person;
- ``senet50-ferplus-logits.mat``: EmoVoxCeleb teacher logits (``wavLogits``) and ``images`` (``name``,
  ``set``: 1 train, 2 unheard, 3 heard; ``sp``: speaker number);
- ``truth.parquet``: the generator's ground truth per clip; ``synth_config.yaml``: the config used.

Everything is a deterministic function of the config: labels come from one generator seeded with
``cfg.seed``, each clip's pixels and samples from a generator seeded with ``(cfg.seed, clip index)``,
so serial and Ray-parallel runs write the same content (the encoders run single-threaded and give
byte-identical files).

AAC timing: the encoder's 1024-sample priming delay is recorded in the MP4 edit list, so decoders
(decord, PyAV) return the audio with no start offset (measured: 0 samples); the decoded track is
zero-padded at the end to a whole number of 1024-sample AAC frames.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from emodis_ray.config import SynthConfig
from emodis_ray.data.labels import FERPLUS_CLASSES
from emodis_ray.synth.render import TAG_LABELS, ClipSpec, make_person, make_session, render_clip

MAT_NAME = "senet50-ferplus-logits.mat"
META_NAME = "vox1_meta.csv"
TRUTH_NAME = "truth.parquet"
CONFIG_NAME = "synth_config.yaml"
#: Overall emotion prior, neutral dominant like EmoVox (FER+ class order).
GLOBAL_PRIOR = np.array([0.40, 0.18, 0.08, 0.10, 0.09, 0.05, 0.05, 0.05])
MIN_SHORT_S = 0.6

_FIRST_F = ("Ada", "Mary-Kate", "Grace", "Zoe", "Ines", "Priya", "Lena", "Maya", "Nora", "Ruth", "Yuki", "Amara",
            "Sofia", "Clara", "Hana", "Iris", "Jo", "Kemi", "Leah", "Mira")
_FIRST_M = ("A.J.", "Jean-Luc", "Omar", "Ravi", "Tomas", "Kenji", "Luca", "Noah", "Pablo", "Sven", "Tariq",
            "Hugo", "Ivan", "Kofi", "Marco", "Felix", "Dev", "Emil", "Jonas", "Otto")
_LAST = ("Lovel-ace", "Hopper", "Van_Dyke", "Okafor", "Nakamura", "Rossi", "Lindqvist", "Moreau", "Singh",
         "Da_Silva", "Kowalski", "O.Brien", "Fischer", "Haddad", "Mendes", "Novak", "Petrov", "Quinn", "Reyes",
         "Sato", "St.Clair", "Turner", "Weber", "Young", "Zimmer-Mann")
_NATIONS = ("USA", "UK", "Canada", "India", "Australia", "Ireland", "Germany", "France", "Spain", "Brazil",
            "Nigeria", "Japan")
_ID_PLAIN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True)
class SynthSummary:
    """What ``generate`` wrote."""

    clips: int
    people: int
    seconds: float  # total clip duration
    out_dir: Path
    elapsed_s: float = 0.0

    def __str__(self) -> str:
        return (f"synthetic EmoVox: {self.clips} clips of {self.people} people "
                f"({self.seconds / 60:.1f} min of video) in {self.out_dir} [{self.elapsed_s:.1f} s]")


# --------------------------------------------------------------------------------------------- labels
def person_prior(cfg: SynthConfig, favourite: int) -> np.ndarray:
    """A person's 8-way emotion prior: the global prior pulled by ``prior_skew`` towards neutral + one favourite."""
    own = np.zeros(len(FERPLUS_CLASSES))
    own[0] += 0.5
    own[favourite] += 0.5
    p = (1.0 - cfg.prior_skew) * GLOBAL_PRIOR + cfg.prior_skew * own
    return p / p.sum()


def _video_id(rng: np.random.Generator, kind: int) -> str:
    chars = list(rng.choice(list(_ID_PLAIN), 11))
    if kind:  # 1: contains "_", 2: contains "-"
        chars[int(rng.integers(11))] = "_" if kind == 1 else "-"
    return "".join(chars)


def _names(rng: np.random.Generator, genders: list[str]) -> list[str]:
    used: set[str] = set()
    out = []
    for g in genders:
        first = _FIRST_F if g == "f" else _FIRST_M
        for attempt in range(10**6):  # past the plain first/last pairs: middle initials, then numbers
            a, b = first[rng.integers(len(first))], _LAST[rng.integers(len(_LAST))]
            name = (f"{a}_{b}" if attempt < 20 else f"{a}_{chr(65 + attempt % 26)}._{b}" if attempt < 200
                    else f"{a}_{b}-{attempt}")
            if name not in used:
                break
        used.add(name)
        out.append(name)
    return out


HEARD_CLIPS_PER_VIDEO = 8  # extra heard clips are spread over videos of about this many clips


def _heard_count(n_videos: int, fraction: float) -> int:
    if n_videos < 2:
        return 0
    if n_videos == 2:
        return 1
    return min(max(int(round(fraction * n_videos)), 1), n_videos - 2)


def check_config(cfg: SynthConfig) -> None:
    """Raise ValueError naming the first invalid ``synth`` value."""
    rules = [
        (cfg.people >= 1 and cfg.clips_per_person >= 1 and cfg.videos_per_person >= 1 and cfg.unheard_people >= 0,
         "people, clips_per_person, videos_per_person must be >= 1 and unheard_people >= 0"),
        (0 < cfg.clip_s_min <= cfg.clip_s_max, "need 0 < clip_s_min <= clip_s_max"),
        (cfg.size >= 16 and cfg.size % 2 == 0, "size must be even and >= 16 (H.264 yuv420p)"),
        (cfg.fps > 0 and cfg.sample_rate >= 8000, "fps must be > 0 and sample_rate >= 8000"),
        (0 <= cfg.intensity_min <= cfg.intensity_max, "need 0 <= intensity_min <= intensity_max"),
        (all(0 <= v <= 1 for v in (cfg.prior_skew, cfg.person_relative, cfg.heard_fraction,
                                   cfg.short_clip_fraction)),
         "prior_skew, person_relative, heard_fraction, short_clip_fraction must be in [0, 1]"),
        (cfg.noise >= 0 and cfg.teacher_noise >= 0 and cfg.workers >= 0, "noise, teacher_noise, workers >= 0"),
        (cfg.heard_clips_per_person >= 0, "heard_clips_per_person must be >= 0"),
    ]
    for ok, message in rules:
        if not ok:
            raise ValueError(f"synth: {message} (got {cfg})")


def sample_labels(cfg: SynthConfig) -> pd.DataFrame:
    """One row per clip: who, which video, which emotion and how long (no rendering; cheap)."""
    check_config(cfg)
    rng = np.random.default_rng([cfg.seed, TAG_LABELS])
    n_people = cfg.people + cfg.unheard_people
    persons = [make_person(cfg.seed, p) for p in range(n_people)]
    names = _names(rng, [p.gender for p in persons])
    favourites = (rng.permutation(7) + 1).tolist() * (n_people // 7 + 1)  # spread over the 7 non-neutral
    n_videos = min(cfg.videos_per_person, cfg.clips_per_person)
    used_ids: set[str] = set()
    rows: list[dict[str, Any]] = []

    def new_videos(rng: np.random.Generator, n: int) -> list[str]:
        vids = []
        for _ in range(n):
            vid = _video_id(rng, len(used_ids) % 3)
            while vid in used_ids:
                vid = _video_id(rng, len(used_ids) % 3)
            used_ids.add(vid)
            vids.append(vid)
        return vids

    def add_clips(rng: np.random.Generator, p: int, nationality: str, prior: np.ndarray, vids: list[str],
                  per_video: np.ndarray, first_video: int, sets: list[int]) -> None:
        for v, vid in enumerate(vids):
            for track in range(1, int(per_video[v]) + 1):
                if rng.random() < cfg.short_clip_fraction and cfg.clip_s_min > MIN_SHORT_S:
                    duration = rng.uniform(MIN_SHORT_S, cfg.clip_s_min)
                else:
                    duration = rng.uniform(cfg.clip_s_min, cfg.clip_s_max)
                frames = max(1, int(round(duration * cfg.fps)))
                rows.append({
                    "clip_index": len(rows),
                    "clip_id": f"id{10001 + p}/{vid}/{track:05d}",
                    "person": f"id{10001 + p}",
                    "person_idx": p,
                    "person_name": names[p],
                    "gender": persons[p].gender,
                    "nationality": nationality,
                    "video_id": vid,
                    "video_idx": first_video + v,
                    "track": track,
                    "true_emotion": FERPLUS_CLASSES[int(rng.choice(len(FERPLUS_CLASSES), p=prior))],
                    "intensity": float(rng.uniform(cfg.intensity_min, cfg.intensity_max)),
                    "duration_s": frames / cfg.fps,
                    "frames": frames,
                    "samples": int(round(frames / cfg.fps * cfg.sample_rate)),
                    "set": sets[v],
                })

    people: list[tuple[str, np.ndarray]] = []
    for p in range(n_people):
        unheard = p >= cfg.people
        nationality = _NATIONS[rng.integers(len(_NATIONS))]
        prior = person_prior(cfg, favourites[p])
        people.append((nationality, prior))
        vids = new_videos(rng, n_videos)
        heard = set(rng.permutation(n_videos)[: _heard_count(n_videos, cfg.heard_fraction)].tolist())
        per_video = np.full(n_videos, cfg.clips_per_person // n_videos)
        per_video[rng.permutation(n_videos)[: cfg.clips_per_person % n_videos]] += 1
        sets = [2 if unheard else (3 if v in heard else 1) for v in range(n_videos)]
        add_clips(rng, p, nationality, prior, vids, per_video, 0, sets)
    # Extra heard clips (val/test only) from a stream of their own, so the rest of the set stays as it was.
    extra = np.random.default_rng([cfg.seed, TAG_LABELS, 1])
    for p in range(cfg.people if cfg.heard_clips_per_person > 0 else 0):
        n_vid = max(2, -(-cfg.heard_clips_per_person // HEARD_CLIPS_PER_VIDEO))
        per_video = np.full(n_vid, cfg.heard_clips_per_person // n_vid)
        per_video[extra.permutation(n_vid)[: cfg.heard_clips_per_person % n_vid]] += 1
        add_clips(extra, p, *people[p], new_videos(extra, n_vid), per_video, n_videos, [3] * n_vid)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ mp4
def write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray | None, fps: float, sample_rate: int) -> None:
    """Write H.264 video (yuv420p) and, if given, an AAC mono track to ``path`` atomically.

    ``frames`` uint8 [T, H, W, 3] with even H and W; ``audio`` float32 mono in [-1, 1]. Decoders return
    the audio with no start offset and zero-padded to a multiple of 1024 samples.
    """
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or len(frames) == 0:
        raise ValueError(f"write_mp4: frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} "
                         f"{frames.shape}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"write_mp4: H.264 yuv420p needs even height and width, got {h}x{w}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            vs = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "crf": "18"})
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.codec_context.thread_count = 1  # deterministic output, and Ray parallelises clips
            ast = None
            if audio is not None:
                ast = out.add_stream("aac", rate=sample_rate, layout="mono")
                ast.codec_context.bit_rate = 64000
            for i, img in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                out.mux(vs.encode(frame))
            out.mux(vs.encode())
            if ast is not None:
                samples = np.clip(np.asarray(audio, dtype=np.float32).reshape(1, -1), -1.0, 1.0)
                aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="flt", layout="mono")
                aframe.sample_rate, aframe.pts = sample_rate, 0
                out.mux(ast.encode(aframe))
                out.mux(ast.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- generate
def _specs(table: pd.DataFrame) -> list[ClipSpec]:
    return [ClipSpec(index=int(r.clip_index), person=int(r.person_idx), video=int(r.video_idx), clip_id=r.clip_id,
                     emotion=r.true_emotion, intensity=float(r.intensity), frames=int(r.frames),
                     samples=int(r.samples)) for r in table.itertuples(index=False)]


def render_batch(groups: list[list[ClipSpec]], cfg: SynthConfig, out_dir: str,
                 layout: str = "crop") -> list[tuple[int, np.ndarray]]:
    """Render and write a batch of groups of clips (one clip each in the crop layout, one raw video's tracks in
    the VoxCeleb1 layout); returns (clip index, teacher logits) per clip."""
    from emodis_ray.synth.vox1 import render_raw_video

    out = []
    for group in groups:
        if layout == "voxceleb1":
            out.extend(render_raw_video(group, cfg, out_dir))
            continue
        for spec in group:
            clip = render_clip(spec, make_person(cfg.seed, spec.person),
                               make_session(cfg.seed, spec.person, spec.video), cfg)
            write_mp4(Path(out_dir) / "videos" / f"{spec.clip_id}.mp4", clip.frames, clip.audio, cfg.fps,
                      cfg.sample_rate)
            out.append((spec.index, clip.logits))
    return out


def _run_serial(groups: list[list[ClipSpec]], cfg: SynthConfig, out_dir: str, layout: str,
                bar: Any) -> dict[int, np.ndarray]:
    logits = {}
    for group in groups:
        logits.update(render_batch([group], cfg, out_dir, layout))
        bar.update(len(group))
    return logits


def _run_ray(groups: list[list[ClipSpec]], cfg: SynthConfig, out_dir: str, layout: str,
             bar: Any) -> dict[int, np.ndarray]:
    import ray

    from emodis_ray.runtime.session import cluster_cpus, ray_session

    # (1) the running Ray, else a local one for this call only
    with ray_session(num_cpus=cfg.workers or None, dashboard=False, log_to_driver=False):
        size = min(32, max(1, math.ceil(len(groups) / (4 * max(1, cluster_cpus())))))
        task = ray.remote(num_cpus=1)(render_batch)  # (2) one task per batch of clips (or of raw videos)
        pending = {task.remote(groups[i:i + size], cfg, out_dir, layout): sum(map(len, groups[i:i + size]))
                   for i in range(0, len(groups), size)}
        logits = {}
        while pending:  # (3) collect as they finish
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                logits.update(ray.get(ref))
                bar.update(pending.pop(ref))
        return logits


def _cell(items: list[Any]) -> np.ndarray:
    cell = np.empty((1, len(items)), dtype=object)
    for i, x in enumerate(items):
        cell[0, i] = x
    return cell


def write_tables(out_dir: Path, cfg: SynthConfig, table: pd.DataFrame, logits: dict[int, np.ndarray]) -> None:
    """The meta CSV, the EmoVoxCeleb ``.mat``, the truth table and the config."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy.io import savemat

    people = table.drop_duplicates("person_idx").sort_values("person_idx")
    meta = pd.DataFrame({"VoxCeleb1 ID": people.person, "VGGFace1 ID": people.person_name,
                         "Gender": people.gender, "Nationality": people.nationality,
                         "Set": np.where(people.set == 2, "test", "dev")})
    meta.to_csv(out_dir / META_NAME, sep="\t", index=False)
    folder = np.where(table.set == 1, "train", "test")
    names = [f"{n}/{f}/{v}_{t:07d}.wav" for n, f, v, t in
             zip(table.person_name, folder, table.video_id, table.track, strict=True)]
    savemat(out_dir / MAT_NAME, {
        "wavLogits": _cell([logits[i] for i in table.clip_index]),
        "images": {"name": _cell(names), "set": table.set.to_numpy(np.float64)[None, :],
                   "sp": (table.person_idx.to_numpy(np.float64) + 1)[None, :]},
    })
    truth = table[["clip_id", "person", "true_emotion", "intensity", "duration_s", "set", "person_name",
                   "video_id", "track", "frames"]]
    pq.write_table(pa.Table.from_pandas(truth, preserve_index=False), out_dir / TRUTH_NAME)
    (out_dir / CONFIG_NAME).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


LAYOUTS = ("crop", "voxceleb1")
_LAYOUT_DIRS = {"crop": ("videos",), "voxceleb1": ("raw", "txt", "wav")}


def generate(out_dir: Path, cfg: SynthConfig, progress: bool = True, overwrite: bool = False,
             layout: str = "crop") -> SynthSummary:
    """Write a synthetic EmoVox set to ``out_dir`` (serial when ``cfg.workers == 1``, else Ray tasks).

    ``layout="crop"``: one face-crop mp4 per clip under ``videos/`` (VoxCeleb2-style); ``"voxceleb1"``: raw wide
    videos under ``raw/`` with several tracks each, their track files under ``txt/`` and wavs under ``wav/``
    (:mod:`emodis_ray.synth.vox1`). Labels, people, the ``.mat`` and the meta table are the same for both.

    ``cfg.workers == 0`` starts a local Ray with every CPU (an already running Ray is used as it is;
    on a multi-node cluster ``out_dir`` must be on a filesystem every node sees). A folder that already
    holds a set is refused unless ``overwrite``, which removes only what this function writes.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    if layout not in LAYOUTS:
        raise ValueError(f"synth layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    check_config(cfg)  # before anything is removed
    out_dir = Path(out_dir)
    written = [out_dir / n for n in (MAT_NAME, META_NAME, TRUTH_NAME, CONFIG_NAME)]
    folders = [out_dir / d for dirs in _LAYOUT_DIRS.values() for d in dirs]
    if any(p.exists() for p in folders) or any(p.exists() for p in written):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already holds a synthetic set; pass overwrite=True or pick "
                                  f"another folder")
        for p in folders:
            shutil.rmtree(p, ignore_errors=True)
        for p in written:
            p.unlink(missing_ok=True)
    for d in _LAYOUT_DIRS[layout]:
        (out_dir / d).mkdir(parents=True, exist_ok=True)
    table = sample_labels(cfg)
    specs = _specs(table)
    if layout == "voxceleb1":  # one raw video per (person, video id), holding its tracks in order
        by_video: dict[tuple[int, int], list[ClipSpec]] = {}
        for spec in specs:
            by_video.setdefault((spec.person, spec.video), []).append(spec)
        groups = list(by_video.values())
    else:
        groups = [[spec] for spec in specs]
    run = _run_serial if cfg.workers == 1 else _run_ray
    with tqdm(total=len(specs), unit="clip", desc="synth", disable=not progress) as bar:
        logits = run(groups, cfg, str(out_dir), layout, bar)
    write_tables(out_dir, cfg, table, logits)
    return SynthSummary(clips=len(table), people=int(table.person_idx.nunique()),
                        seconds=float(table.duration_s.sum()), out_dir=out_dir,
                        elapsed_s=time.perf_counter() - start)
