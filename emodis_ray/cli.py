"""The `emodis` command line: one console script, one subcommand per capability.

Each subcommand parses its flags here and calls one function of the package with plain arguments;
heavy modules (torch, Ray) are imported inside the handlers so `emodis --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from emodis_ray.config import ConfigError, load_config

Handler = Callable[[argparse.Namespace], int]

DESCRIPTION = """\
emodis: disentangled audio-visual emotion recognition (Peri et al., ICASSP 2021) on Ray.

Typical flow:
  emodis synth data/ --people 12 --clips-per-person 24     write a synthetic EmoVox in the real formats
  emodis manifest emovox --mat data/senet50-ferplus-logits.mat --meta data/vox1_meta.csv \\
      --videos data/videos --out data/manifest.parquet     apply the EmoVox label rules
  emodis demo                                              all of the above, end to end

Every command takes --config (a preset: tiny, paper; or a YAML file) and --set SECTION.KEY=VALUE
overrides, e.g. --set model.spk_dim=64. Run `emodis COMMAND --help` for details.
"""


def _add_config_args(p: argparse.ArgumentParser, default: str = "tiny") -> None:
    p.add_argument("--config", default=default,
                   help=f"preset name (tiny, paper) or a YAML file; a file may say `preset: tiny` "
                        f"and list only what differs (default: {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set model.spk_dim=64 (repeatable)")


def _elapsed(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f} s"


# --- synth -------------------------------------------------------------------------------------------


def _cmd_synth(args: argparse.Namespace) -> int:
    from emodis_ray.synth import generate

    sets = [f"synth.{k}={v}" for k, v in (("people", args.people), ("clips_per_person", args.clips_per_person),
                                          ("seed", args.seed), ("workers", args.workers)) if v is not None]
    cfg = load_config(args.config, [*args.overrides, *sets])
    t0 = time.perf_counter()
    summary = generate(Path(args.out), cfg.synth, progress=not args.quiet)
    print(summary)
    print(f"synth took {_elapsed(t0)}")
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=_cmd_synth)


# --- manifest ----------------------------------------------------------------------------------------


def _write_manifest(df: object, report: object, out: Path, cfg: object) -> None:
    from emodis_ray.manifest import write_manifest

    write_manifest(df, out)  # validates first; nothing is written on error
    print(report.format())  # type: ignore[attr-defined]
    print(f"wrote {out} ({len(df)} clips)")  # type: ignore[arg-type]


def _cmd_manifest_emovox(args: argparse.Namespace) -> int:
    from emodis_ray.manifest import emovox_manifest

    sets = [f"labels.rule={args.rule}"] if args.rule else []
    cfg = load_config(args.config, [*args.overrides, *sets])
    t0 = time.perf_counter()
    df, report = emovox_manifest(Path(args.mat), Path(args.meta), Path(args.videos), cfg.labels,
                                 audio=Path(args.audio) if args.audio else None)
    _write_manifest(df, report, Path(args.out), cfg)
    print(f"manifest took {_elapsed(t0)}")
    return 0


def _cmd_manifest_table(args: argparse.Namespace) -> int:
    from emodis_ray.manifest import table_manifest

    df, report = table_manifest(Path(args.table))
    _write_manifest(df, report, Path(args.out), None)
    return 0


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="build a validated clip manifest (Parquet) from a dataset",
                       description="Turn a dataset into the one Parquet manifest that ingest and training read.")
    msub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    e = msub.add_parser(
        "emovox", help="the EmoVoxCeleb release format (real or synthetic)",
        description="Read EmoVoxCeleb labels (senet50-ferplus-logits.mat) with vox1_meta.csv and a videos folder, "
                    "and apply the paper's label rules: dominant emotion per clip, 8->5 classes, drop speakers in "
                    "the bottom 5th percentile of clip count, train = set 1, val/test = the heard set split by "
                    "video, closed-set identity. Prints a summary with the drops per rule.")
    e.add_argument("--mat", required=True, help="senet50-ferplus-logits.mat")
    e.add_argument("--meta", required=True, help="vox1_meta.csv (tab-separated)")
    e.add_argument("--videos", required=True, help="folder holding idNNNNN/<video-id>/NNNNN.mp4")
    e.add_argument("--audio", help="optional folder of separate audio (VoxCeleb2 layout: idNNNNN/<vid>/NNNNN.m4a)")
    e.add_argument("--rule", choices=["mean_softmax", "max_logit"],
                   help="dominant-emotion rule (default: labels.rule = mean_softmax)")
    e.add_argument("--out", required=True, help="output manifest.parquet")
    _add_config_args(e)
    e.set_defaults(func=_cmd_manifest_emovox)
    t = msub.add_parser(
        "table", help="a CSV or Parquet list of your own clips",
        description="Columns needed: clip_id, video_path, speaker, emotion (neutral, happiness, sadness, anger, "
                    "other), split (train, val, test); optional: audio_path, video_id, duration_s, fps, root.")
    t.add_argument("table", help="input .csv or .parquet")
    t.add_argument("--out", required=True, help="output manifest.parquet")
    t.set_defaults(func=_cmd_manifest_table)


# --- config ------------------------------------------------------------------------------------------


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print a resolved config (preset + file + overrides)",
                       description="Print the fully resolved configuration as YAML; a good start for a config file.")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config)


# --- demo --------------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from emodis_ray.demo import run_demo

    cfg = load_config(args.config, args.overrides)
    run_demo(Path(args.out), cfg)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the main job end to end on a synthetic set",
        description="End to end on the embedded default: write a synthetic EmoVox set, build its manifest, "
                    "and report what it made. Everything goes under OUT.")
    p.add_argument("--out", default="demo", help="output folder (default: ./demo)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_demo)


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_synth, _add_manifest, _add_demo, _add_config,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emodis", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from emodis_ray import __version__

    parser.add_argument("--version", action="version", version=f"emodis {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        # Errors about the user's input: one clear line, no traceback (EMODIS_DEBUG=1 shows it).
        if os.environ.get("EMODIS_DEBUG"):
            raise
        print(f"emodis {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
