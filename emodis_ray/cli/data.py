"""Data subcommands: `emodis synth`, `emodis manifest`, `emodis preprocess`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from emodis_ray.cli.common import ExamplesFormatter, add_address, add_config_args, check_manifest, elapsed
from emodis_ray.config import load_config

# --- synth -------------------------------------------------------------------------------------------


def _cmd_synth(args: argparse.Namespace) -> int:
    from emodis_ray.synth.generate import generate

    sets = [f"synth.{k}={v}" for k, v in (("people", args.people), ("clips_per_person", args.clips_per_person),
                                          ("seed", args.seed), ("workers", args.workers)) if v is not None]
    cfg = load_config(args.config, [*args.overrides, *sets])
    t0 = time.perf_counter()
    summary = generate(Path(args.out), cfg.synth, progress=not args.quiet, layout=args.layout)
    print(summary)
    print(f"synth took {elapsed(t0)}")
    return 0


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth", help="write a synthetic EmoVox set in the real on-disk formats",
        description="Write a synthetic EmoVox set: VoxCeleb-style mp4 face tracks (H.264 + AAC mono 16 kHz) "
                    "under OUT/videos/idNNNNN/<video-id>/NNNNN.mp4, vox1_meta.csv, an EmoVoxCeleb-style "
                    "senet50-ferplus-logits.mat of per-frame teacher logits, and truth.parquet (the generator's "
                    "ground truth). Deterministic for a seed; parallel as Ray tasks. The synth.* config keys "
                    "control entanglement (prior_skew, person_relative), intensity, noise and clip lengths.")
    p.add_argument("out", help="output folder")
    p.add_argument("--people", type=int, help="number of people (default: from the config)")
    p.add_argument("--clips-per-person", type=int, help="clips per person (default: from the config)")
    p.add_argument("--seed", type=int, help="random seed (default: from the config)")
    p.add_argument("--workers", type=int, help="0: one Ray task per CPU; 1: serial, no Ray")
    p.add_argument("--layout", choices=["crop", "voxceleb1"], default="crop",
                   help="crop: one face-crop mp4 per clip under OUT/videos (VoxCeleb2-style, the default); "
                        "voxceleb1: raw wide videos OUT/raw/<video-id>.mp4 holding several face tracks each, "
                        "track files OUT/txt/idNNNNN/<video-id>/NNNNN.txt and wavs OUT/wav/... (VoxCeleb1 as "
                        "distributed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(p)
    p.set_defaults(func=_cmd_synth)


# --- manifest ----------------------------------------------------------------------------------------


def _write_manifest(df: object, report: object, out: Path, cfg: object) -> None:
    from emodis_ray.data.manifest import write_manifest

    write_manifest(df, out)  # validates first; nothing is written on error
    print(report.format())  # type: ignore[attr-defined]
    print(f"wrote {out} ({len(df)} clips)")  # type: ignore[arg-type]


def _cmd_manifest_emovox(args: argparse.Namespace) -> int:
    from emodis_ray.data.sources import emovox_manifest

    layout_error = _layout_error(args)
    if layout_error:
        raise ValueError(layout_error)
    sets = [f"labels.rule={args.rule}"] if args.rule else []
    cfg = load_config(args.config, [*args.overrides, *sets])
    t0 = time.perf_counter()
    df, report = emovox_manifest(Path(args.mat), Path(args.meta), Path(args.videos or args.raw_videos), cfg.labels,
                                 audio=Path(args.audio) if args.audio else None,
                                 tracks=Path(args.tracks) if args.tracks else None)
    _write_manifest(df, report, Path(args.out), cfg)
    print(f"manifest took {elapsed(t0)}")
    return 0


def _layout_error(args: argparse.Namespace) -> str | None:
    """Face crops take --videos; face tracks take --tracks, --raw-videos and --audio together."""
    if args.videos and (args.tracks or args.raw_videos):
        return "give either --videos (face crops) or --tracks with --raw-videos and --audio (VoxCeleb1), not both"
    if not args.videos and not (args.tracks and args.raw_videos and args.audio):
        missing = [f for f, v in (("--tracks", args.tracks), ("--raw-videos", args.raw_videos),
                                  ("--audio", args.audio)) if not v]
        return ("give --videos DIR (face crops), or the VoxCeleb1 layout's " + ", ".join(missing)
                if args.tracks or args.raw_videos else "give --videos DIR (face crops) or --tracks DIR "
                "--raw-videos DIR --audio DIR (VoxCeleb1: face tracks over raw video)")
    return None


def _cmd_manifest_table(args: argparse.Namespace) -> int:
    from emodis_ray.data.sources import table_manifest

    df, report = table_manifest(Path(args.table))
    _write_manifest(df, report, Path(args.out), None)
    return 0


def add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="build a validated clip manifest (Parquet) from a dataset",
                       description="Turn a dataset into the one Parquet manifest that ingest and training read.")
    msub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    e = msub.add_parser(
        "emovox", help="the EmoVoxCeleb release format (real or synthetic)",
        description="Read EmoVoxCeleb labels (senet50-ferplus-logits.mat) with vox1_meta.csv and the clips, and "
                    "apply the paper's label rules: dominant emotion per clip, 8->5 classes, drop speakers in "
                    "the bottom 5th percentile of clip count, train = set 1, val/test = the heard set split by "
                    "video, closed-set identity. Prints a summary with the drops per rule. The clips are either "
                    "face crops (--videos, one mp4 per track) or VoxCeleb1 as distributed (--tracks, --raw-videos, "
                    "--audio: face-track files over the raw YouTube videos, one wav per track).",
        epilog="examples:\n  emodis manifest emovox --mat senet50-ferplus-logits.mat --meta vox1_meta.csv \\\n"
               "      --videos vox/videos --out manifest.parquet\n"
               "  emodis manifest emovox --mat senet50-ferplus-logits.mat --meta vox1_meta.csv \\\n"
               "      --tracks vox1/txt --raw-videos vox1/raw --audio vox1/wav --out manifest.parquet",
        formatter_class=ExamplesFormatter)
    e.add_argument("--mat", required=True, help="senet50-ferplus-logits.mat")
    e.add_argument("--meta", required=True, help="vox1_meta.csv (tab-separated)")
    e.add_argument("--videos", help="face crops: folder holding idNNNNN/<video-id>/NNNNN.mp4")
    e.add_argument("--tracks", help="VoxCeleb1: folder of face-track files idNNNNN/<youtube-id>/NNNNN.txt")
    e.add_argument("--raw-videos", help="VoxCeleb1: folder of the raw videos <youtube-id>.mp4")
    e.add_argument("--audio", help="folder of separate audio: idNNNNN/<vid>/NNNNN.wav (VoxCeleb1, required with "
                                   "--tracks) or .m4a (VoxCeleb2, optional)")
    e.add_argument("--rule", choices=["mean_softmax", "max_logit"],
                   help="dominant-emotion rule (default: labels.rule = mean_softmax)")
    e.add_argument("--out", required=True, help="output manifest.parquet")
    add_config_args(e)
    e.set_defaults(func=_cmd_manifest_emovox)
    t = msub.add_parser(
        "table", help="a CSV or Parquet list of your own clips",
        description="Columns needed: clip_id, video_path, speaker, emotion (neutral, happiness, sadness, anger, "
                    "other), split (train, val, test); optional: audio_path, video_id, duration_s, fps, root.")
    t.add_argument("table", help="input .csv or .parquet")
    t.add_argument("--out", required=True, help="output manifest.parquet")
    t.set_defaults(func=_cmd_manifest_table)


# --- preprocess --------------------------------------------------------------------------------------


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from emodis_ray.data.ingest import preprocess
    from emodis_ray.runtime.session import ray_session

    cfg = load_config(args.config, args.overrides)
    check_manifest(args.manifest)
    with ray_session(args.address, num_cpus=args.num_cpus):
        info = preprocess(Path(args.manifest), Path(args.out), cfg, progress=not args.quiet)
    print(f"feature cache: {info.root}")
    print(f"train with:    --set data.cache_dir={args.out}")
    return 0


def add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess", help="decode every clip once into the feature cache (keyed by clip)",
        description="Decode every clip of a manifest once into a feature cache keyed by clip: OUT/features-<feature "
                    "hash>/part-*.parquet, one row per clip (the faces as JPEG, or raw with features.face_codec=raw; "
                    "the clip's log-mel once, as float16), no labels. A clip is known by its files' paths, sizes "
                    "and modification times, so another manifest over the same clips (a new label rule, new "
                    "splits) decodes nothing, added clips decode alone and a changed file is decoded again. "
                    "Training, evaluation and search read it when data.cache_dir points to OUT, joining labels "
                    "from their manifest; a cache that lacks some of the manifest's clips is never used silently. "
                    "Interrupted? Run the same command again: finished parts are kept. Bad clips are skipped and "
                    "listed in bad_clips-<manifest hash>.csv; more than data.max_bad_fraction of them aborts.",
        epilog="examples:\n  emodis preprocess --manifest demo/manifest.parquet --out demo/cache --config tiny\n"
               "  emodis preprocess --manifest m.parquet --out cache --config paper --set features.face_quality=75",
        formatter_class=ExamplesFormatter)
    p.add_argument("--manifest", required=True, help="manifest.parquet")
    p.add_argument("--out", required=True, help="cache folder (one folder can hold caches of several configs)")
    add_address(p)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(p)
    p.set_defaults(func=_cmd_preprocess)
