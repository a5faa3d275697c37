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
    from emodis_ray.sources import emovox_manifest

    sets = [f"labels.rule={args.rule}"] if args.rule else []
    cfg = load_config(args.config, [*args.overrides, *sets])
    t0 = time.perf_counter()
    df, report = emovox_manifest(Path(args.mat), Path(args.meta), Path(args.videos), cfg.labels,
                                 audio=Path(args.audio) if args.audio else None)
    _write_manifest(df, report, Path(args.out), cfg)
    print(f"manifest took {_elapsed(t0)}")
    return 0


def _cmd_manifest_table(args: argparse.Namespace) -> int:
    from emodis_ray.sources import table_manifest

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


# --- preprocess --------------------------------------------------------------------------------------


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from emodis_ray.data import preprocess
    from emodis_ray.raycluster import ray_session

    cfg = load_config(args.config, args.overrides)
    with ray_session(args.address, num_cpus=args.num_cpus):
        info = preprocess(Path(args.manifest), Path(args.out), cfg, progress=not args.quiet)
    print(f"feature cache: {info.root}")
    print(f"train with:    --set data.cache_dir={args.out}")
    return 0


def _add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess", help="decode every clip once into a sharded feature cache",
        description="Decode every clip of a manifest once (faces as uint8, log-mel as float16, every segment of "
                    "the whole clip) into sharded Parquet under OUT/<manifest hash>-<feature hash>/. Training, "
                    "evaluation and search read it when data.cache_dir points to OUT and it matches the manifest "
                    "and the feature config; a cache that does not match is never used silently. Interrupted? "
                    "Run the same command again: finished shards are kept. Bad clips are skipped and listed in "
                    "bad_clips.csv; more than data.max_bad_fraction of them aborts.")
    p.add_argument("--manifest", required=True, help="manifest.parquet")
    p.add_argument("--out", required=True, help="cache folder (one folder can hold caches of several configs)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=_cmd_preprocess)


# --- bench -------------------------------------------------------------------------------------------


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from emodis_ray.bench_ingest import main as bench

    bench(args.clips, args.rows, args.soak, args.json, args.workdir)
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: ingest, train",
                       description="Benchmarks that measure side by side in one run and print ratios.")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    b = bsub.add_parser(
        "ingest", help="decode limit vs our features vs Ray Data vs the feature cache",
        description="On synthetic clips of the paper's shape (12 s, 224x224, 25 fps, AAC audio), measure in one "
                    "run: (a) PyAV decoding every frame on one thread, (b) our per-clip features on one thread, "
                    "(c) the Ray Data pipeline on all CPUs, (d) reading the feature cache into tensors; the "
                    "ratios (b)/(a), (c)/(b), (d)/(b); peak RSS per decode worker and its growth over a soak.")
    b.add_argument("--clips", type=int, default=16, help="distinct synthetic clips to write (default: 16)")
    b.add_argument("--rows", type=int, default=96, help="clip decodes in (c) and (d) (default: 96)")
    b.add_argument("--soak", type=int, default=1000, help="clip decodes in the RSS soak (default: 1000; 0: skip)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.add_argument("--workdir", help="keep the synthetic clips here and reuse them (default: a temp folder)")
    b.set_defaults(func=_cmd_bench_ingest)


# --- evaluate / compare / report / reproduce / predict ------------------------------------------------


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from emodis_ray.evaluate import evaluate_run
    from emodis_ray.raycluster import ray_session

    with ray_session(args.address):
        for run in args.runs:
            evaluate_run(Path(run), Path(args.manifest) if args.manifest else None, n_boot=args.bootstrap,
                         seed=args.seed)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="leakage probes, chance levels, bootstrap intervals for trained runs",
        description="For each RUN: embeddings of train/val/test from the frozen model (Ray Data batch inference), "
                    "one-hidden-layer MLP probes (emotion macro-F1 from the speaker embedding, identity accuracy "
                    "from the emotion embedding; trained on train, early-stopped on val, scored on test), chance "
                    "levels from the test priors, the leakage score, bootstrap 95%% intervals and the emotion "
                    "confusion matrix. Writes RUN/evaluation.json, evaluation.md, predictions.parquet, confusion.png.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders made by `emodis train`")
    p.add_argument("--manifest", help="manifest to evaluate on (default: the one the run trained on)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes and the bootstrap (default: 0)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_compare(args: argparse.Namespace) -> int:
    from emodis_ray.reporting import compare_runs, comparison_text

    c = compare_runs(Path(args.run_a), Path(args.run_b), n_boot=args.bootstrap)
    print(comparison_text(c))
    if args.json:
        Path(args.json).write_text(c.to_json())
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="Stuart-Maxwell test and paired differences of two evaluated runs",
        description="Stuart-Maxwell marginal homogeneity test (statsmodels, alpha = 0.01 as in the paper) of the two "
                    "runs' test emotion predictions, and paired-bootstrap intervals of the differences A - B in "
                    "emotion F1 and identity accuracy. Both runs must be evaluated on the same test clips.")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--json", help="also write the comparison to this JSON file")
    p.set_defaults(func=_cmd_compare)


def _cmd_report(args: argparse.Namespace) -> int:
    from emodis_ray.reporting import report_runs

    path = report_runs([Path(r) for r in args.runs], Path(args.out), title=args.title)
    print(f"wrote {path}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="render evaluated runs into one Markdown report with the paper's table and figures",
        description="Render any set of evaluated runs into OUT/report.md: every figure with its interval, a Table 1 "
                    "analog (identity accuracy per method and speaker-embedding size), Fig. 3a (emotion F1 from "
                    "emotion embeddings, STL as a line) and Fig. 3b (emotion F1 from speaker embeddings, chance as "
                    "a line), and each method vs the MTL baseline of its size with Stuart-Maxwell at alpha = 0.01.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="evaluated run folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--title", default="emodis report", help="report title")
    p.set_defaults(func=_cmd_report)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from emodis_ray.reproduce import GRID_METHODS, reproduce

    cfg = load_config(args.config, args.overrides)
    methods = tuple(args.methods.split(",")) if args.methods else GRID_METHODS
    dims = tuple(int(d) for d in args.spk_dims.split(",")) if args.spk_dims else None
    reproduce(Path(args.manifest), Path(args.out), cfg, methods, dims, address=args.address)
    return 0


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="the paper's grid: methods x speaker-embedding sizes, trained, evaluated, reported",
        description="Train and evaluate every cell of methods {stl-emotion, stl-speaker, mtl, gr, alt, conf} x speaker "
                    "embedding sizes (2048/256/64 in `paper`, scaled with the emotion embedding otherwise: 128/16/4 "
                    "in `tiny`) into OUT/<method>-d<size>/, then write OUT/report.md. Resumable: finished cells are "
                    "not trained again.")
    p.add_argument("--manifest", required=True, help="manifest.parquet")
    p.add_argument("--out", required=True, help="grid folder")
    p.add_argument("--methods", help="comma-separated subset of the methods (default: all six)")
    p.add_argument("--spk-dims", help="comma-separated speaker-embedding sizes (default: by preset)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_reproduce)


def _cmd_predict(args: argparse.Namespace) -> int:
    from emodis_ray.predict import predict_clips

    predict_clips(Path(args.run), Path(args.out), videos=Path(args.videos) if args.videos else None,
                  manifest=Path(args.manifest) if args.manifest else None, address=args.address)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="emotion predictions and embeddings for new clips",
        description="Run a trained model over new clips (a folder of mp4s, or a manifest) as a Ray Data batch-"
                    "inference job. Writes a Parquet file: clip_id, emotion_pred, p_<class> for each of the 5 "
                    "classes, emo_emb, spk_emb. Clips that cannot be decoded are listed in <out>.bad_clips.csv.")
    p.add_argument("--run", required=True, help="a run folder made by `emodis train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="folder of .mp4 clips (a .wav/.m4a beside a clip is its audio)")
    src.add_argument("--manifest", help="a manifest.parquet")
    p.add_argument("--out", required=True, help="output .parquet")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    p.set_defaults(func=_cmd_predict)


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
    run_demo(Path(args.out), cfg, address=args.address)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the main job end to end on a synthetic set",
        description="End to end on the embedded default, on a local Ray cluster that it starts (or RAY_ADDRESS): "
                    "write a synthetic EmoVox set in the real formats, build its manifest with the EmoVox label "
                    "rules, decode it once into the feature cache. Everything goes under OUT; a rerun keeps "
                    "finished steps.")
    p.add_argument("--out", default="demo", help="output folder (default: ./demo)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_demo)


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_synth, _add_manifest, _add_preprocess, _add_bench, _add_evaluate, _add_compare, _add_report,
    _add_reproduce, _add_predict, _add_demo, _add_config,
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
