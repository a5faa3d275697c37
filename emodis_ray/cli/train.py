"""Training subcommands: `emodis train`, `emodis tune`, `emodis reproduce`, `emodis demo`, `emodis config`."""

from __future__ import annotations

import argparse
from pathlib import Path

from emodis_ray.cli.common import ExamplesFormatter, add_address, add_config_args, check_cache, check_manifest
from emodis_ray.config import METHODS, ConfigError, load_config, replace

# --- train -----------------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    sets = [f"{k}={v}" for k, v in (("method.name", args.method), ("train.workers", args.workers),
                                    ("train.epochs", args.epochs)) if v is not None]
    cfg = load_config(args.config, [*args.overrides, *sets])
    if args.cache:
        cfg = replace(cfg, data={"cache_dir": args.cache})  # a path, not parsed as YAML
    check_manifest(args.manifest)
    check_cache(cfg.data.cache_dir)

    from emodis_ray.runtime.session import ray_session
    from emodis_ray.train.fit import fit

    out = Path(args.out)
    print(f"train {cfg.method.name} ({cfg.method.direction}) with {cfg.train.workers} worker(s), "
          f"{cfg.train.epochs} epochs -> {out}")
    with ray_session(args.address, num_cpus=args.num_cpus):
        res = fit(Path(args.manifest), out, cfg, progress=True, storage=args.storage)
    f = res.final
    if f:
        pc = lambda k: 100 * f.get(k, float("nan"))  # noqa: E731
        print(f"final (epoch {int(f['epoch']) + 1}): val emotion macro-F1 {pc('val_emo_f1'):.1f} %, identity "
              f"accuracy {pc('val_spk_acc'):.1f} %; leakage (aux heads): emotion F1 from the speaker embedding "
              f"{pc('val_aux_emo_f1'):.1f} %, identity accuracy from the emotion embedding "
              f"{pc('val_aux_spk_acc'):.1f} %")
    print(f"{res.source or 'nothing trained'}; {res.elapsed_s:.0f} s; outputs in {res.out}/ "
          f"(metrics.csv, curves.png, model.pt, tensorboard/)")
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a method with Ray Train (DDP), resumable",
        description=f"Train the multitask model with one method ({', '.join(METHODS)}) on "
                    "the manifest's train split with N Ray Train workers (DDP: gloo on CPU; NCCL and "
                    "train.precision=bf16 on GPU, one worker per GPU), validating on its val split every epoch "
                    "(emotion macro-F1, identity accuracy, aux-head leakage). Reads the feature cache when "
                    "--cache / data.cache_dir is set, else decodes on the fly. OUT gets config.yaml, metrics.csv/"
                    ".json, tensorboard/, bad_clips.csv, curves.png, model.pt and checkpoints/. Run the same "
                    "command again (e.g. with more --epochs) to resume from the latest checkpoint; a worker that "
                    "dies is replaced up to train.max_failures times and the run resumes from its last epoch.",
        epilog="example: emodis train --manifest data/manifest.parquet --cache cache/ --method gr --workers 2 "
               "--out runs/gr")
    p.add_argument("--manifest", required=True, help="manifest.parquet")
    p.add_argument("--out", required=True, help="run folder (an existing one is resumed)")
    p.add_argument("--method", choices=METHODS,
                   help="training method (default: method.name from the config)")
    p.add_argument("--workers", type=int, help="Ray Train workers (default: train.workers)")
    p.add_argument("--epochs", type=int, help="epochs in total (default: train.epochs)")
    p.add_argument("--cache", help="feature cache folder made by `emodis preprocess` (sets data.cache_dir)")
    p.add_argument("--storage", help="where Ray Train keeps checkpoints: a folder every node can reach (NFS) or "
                                     "an object-store URI such as s3://bucket/runs (default: OUT/checkpoints)")
    add_address(p)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    add_config_args(p)
    p.set_defaults(func=_cmd_train)


# --- tune --------------------------------------------------------------------------------------------


def _cmd_tune(args: argparse.Namespace) -> int:
    from emodis_ray.search.space import load_space

    cfg = load_config(args.config, args.overrides)
    space = load_space(args.space, cfg)
    for flag, v in (("--trials", args.trials), ("--top", args.top), ("--seeds", args.seeds)):
        if v < 0:
            raise ValueError(f"{flag} must be >= 0, got {v}")
    check_manifest(args.manifest)

    from emodis_ray.runtime.session import ray_session
    from emodis_ray.search.driver import search

    with ray_session(args.address, num_cpus=args.num_cpus):
        res = search(space, Path(args.manifest), Path(args.out), cfg, args.trials,
                         multi_objective=args.multi_objective, resume=args.resume, floor=args.floor,
                         baseline=Path(args.baseline) if args.baseline else None, seed=args.seed,
                         max_concurrent=args.max_concurrent, stage1=args.stage1, top=args.top, seeds=args.seeds,
                     asha=args.asha)
    return 3 if res.interrupted else 0


def add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="search hyperparameters for the lowest validation leakage (Ray Tune + Optuna), in two stages",
        description="Search a space (a shipped one by name: gr, alt, conf, all; or a YAML file like those in "
                    "tune_spaces/) for the configuration with the lowest validation leakage above the identity-only "
                    "floor in the direction its method targets, among those whose emotion F1 and identity accuracy "
                    "stay within the space's tolerance of an MTL baseline (averaged over --seeds seeds, trained "
                    "first). Stage 1 screens --trials configurations with Ray Tune and Optuna TPE (seeded): on the "
                    "baseline's frozen trunk (--stage1 screen, seconds per configuration), or as end-to-end Ray "
                    "Train runs with ASHA (--stage1 train). Stage 2 trains the --top best end to end at --seeds "
                    "seeds and chooses by the mean over seeds, with its interval. Probes are trained on train, "
                    "early-stopped on held-out train rows and scored on val; test is never read. OUT gets best.yaml "
                    "(a plain config without data paths, for `emodis train --config` or `emodis study --arm`), "
                    "trials.csv, confirm.csv, pareto.png, optuna.db, runs/<trial>/ and confirm/runs/<arm>/seed<k>/. "
                    "--resume continues an interrupted search without re-running finished work, or adds trials to a "
                    "finished one (a larger --trials). Ctrl-C: exit code 130 (resume it with --resume); exit "
                    "code 3: stopped otherwise before the end (resume it).",
        epilog="example: emodis tune --space conf --trials 40 --top 2 --manifest demo/manifest.parquet "
               "--config demo/config.yaml --out runs/tune-conf")
    p.add_argument("--space", required=True,
                   help="a shipped space by name (gr, alt, conf, all) or a search-space YAML file")
    p.add_argument("--trials", type=int, required=True, help="trials in total (with --resume: the new total)")
    p.add_argument("--manifest", required=True, help="manifest.parquet")
    p.add_argument("--out", required=True, help="search folder")
    p.add_argument("--multi-objective", action="store_true", help="Pareto front of emotion F1 and leakage")
    p.add_argument("--resume", action="store_true", help="continue or extend the search in OUT")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--floor", type=float, help="emotion-F1 floor (default: the MTL baseline's mean val F1 - "
                                                "tolerance); no identity floor")
    g.add_argument("--baseline", help="an MTL run folder (one seed) whose val emotion F1 and identity set the "
                                      "floors and whose trunk the screen keeps")
    p.add_argument("--seed", type=int, default=0, help="sampler and probe seed (default: 0)")
    p.add_argument("--stage1", choices=("screen", "train"), default="screen",
                   help="stage 1's trials: the frozen-trunk screen (default) or end-to-end Train runs")
    p.add_argument("--asha", action=argparse.BooleanOptionalAction, default=None,
                   help="ASHA early stopping in stage 1 (default: on for --stage1 train, off for the screen)")
    p.add_argument("--top", type=int, default=3, help="configurations stage 2 trains end to end (0: no stage 2; "
                                                     "default: 3)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds of the MTL baseline and of each stage-2 "
                                                       "configuration (default: 3)")
    p.add_argument("--max-concurrent", type=int, help="concurrent trials (default: from the cluster's resources)")
    add_address(p)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    add_config_args(p)
    p.set_defaults(func=_cmd_tune)


# --- reproduce ---------------------------------------------------------------------------------------


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from emodis_ray.workflows.reproduce import GRID_METHODS, reproduce

    cfg = load_config(args.config, args.overrides)
    methods = tuple(args.methods.split(",")) if args.methods else GRID_METHODS
    dims = tuple(int(d) for d in args.spk_dims.split(",")) if args.spk_dims else None
    check_manifest(args.manifest)
    reproduce(Path(args.manifest), Path(args.out), cfg, methods, dims, address=args.address)
    return 0


def add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="the paper's grid: methods x speaker-embedding sizes, trained, evaluated, reported",
        description=f"Train and evaluate every cell of methods {{{', '.join(METHODS)}}} x speaker "
                    "embedding sizes (2048/256/64 in `paper`, scaled with the emotion embedding otherwise: 128/16/4 "
                    "in `tiny`) into OUT/<method>-d<size>/, then write OUT/report.md. Resumable: finished cells are "
                    "not trained again.")
    p.add_argument("--manifest", required=True, help="manifest.parquet")
    p.add_argument("--out", required=True, help="grid folder")
    p.add_argument("--methods", help="comma-separated subset of the methods (default: all six)")
    p.add_argument("--spk-dims", help="comma-separated speaker-embedding sizes (default: by preset)")
    add_address(p)
    add_config_args(p)
    p.set_defaults(func=_cmd_reproduce)


# --- config ------------------------------------------------------------------------------------------


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print a resolved config (preset + file + overrides)",
                       description="Print the fully resolved configuration as YAML; a good start for a config file.")
    add_config_args(p)
    p.set_defaults(func=_cmd_config)


# --- demo --------------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from emodis_ray.workflows.demo import run_demo

    cfg = load_config(args.config, args.overrides)
    run_demo(Path(args.out), cfg, address=args.address, layout=args.layout)
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the main job end to end on a synthetic set",
        description="End to end on the embedded default, on a local Ray cluster that it starts (or RAY_ADDRESS): "
                    "write a synthetic EmoVox set in the real formats, build its manifest with the EmoVox label "
                    "rules, decode it once into the feature cache, train the MTL baseline, the confusion loss and "
                    "gradient reversal with Ray Train, evaluate each (leakage above the identity-only floor) and "
                    "write a report (OUT/report/report.md). "
                    "A rerun keeps finished steps.",
        epilog="examples:\n  emodis demo                                  # face crops, into ./demo\n"
               "  emodis demo --layout voxceleb1 --out demo-vox1  # face tracks over raw video, wav audio",
        formatter_class=ExamplesFormatter)
    p.add_argument("--out", default="demo", help="output folder (default: ./demo)")
    p.add_argument("--layout", choices=["crop", "voxceleb1"], default="crop",
                   help="how the synthetic set is stored: crop (one face-crop mp4 per clip, the default) or "
                        "voxceleb1 (face-track files over raw wide videos, one wav per track)")
    add_address(p)
    add_config_args(p)
    p.set_defaults(func=_cmd_demo)


# --- study -------------------------------------------------------------------------------------------


def _cmd_study(args: argparse.Namespace) -> int:
    from emodis_ray.workflows.study import parse_arms, run_study

    cfg = load_config(args.config, args.overrides)
    if args.cache:
        cfg = replace(cfg, data={"cache_dir": args.cache})
    if args.seeds < 1:
        raise ConfigError(f"--seeds: expected at least 1, got {args.seeds}")
    arms = parse_arms(args.arm, cfg)  # errors name the arm, before Ray starts
    check_manifest(args.manifest)
    check_cache(cfg.data.cache_dir)
    run_study(Path(args.manifest), Path(args.out), arms, list(range(args.first_seed, args.first_seed + args.seeds)),
              n_boot=args.bootstrap, max_concurrent=args.max_concurrent, address=args.address,
              frozen_trunk=Path(args.frozen_trunk) if args.frozen_trunk else None)
    return 0


def add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="several seeds per arm, evaluated and compared with intervals (MTL vs CONF vs GR, ...)",
        description="Train K seeds of every arm (a method name, or NAME=FILE.yaml for a config such as a search's "
                    "best.yaml) end to end with Ray Train, evaluate each run (leakage above the identity-only "
                    "floor, per direction, several probe seeds), and write OUT/study.json, study.md and study.png: "
                    "per arm and seed every figure, per arm the mean and SD over seeds, each arm against the first "
                    "with 95% intervals from a hierarchical bootstrap (seeds, then test clips) and a Stuart-Maxwell "
                    "test per seed. Resumable per (arm, seed): run the same command again after an interruption.",
        epilog="example: emodis study --manifest demo/manifest.parquet --cache demo/cache --arm mtl --arm conf "
               "--arm gr --seeds 5 --out runs/study")
    p.add_argument("--manifest", required=True, help="manifest.parquet")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--arm", action="append", default=[], required=True, metavar="METHOD|NAME=FILE",
                   help="an arm (repeatable); the first is the reference the others are compared with")
    p.add_argument("--seeds", type=int, default=5, help="training seeds per arm (default: 5)")
    p.add_argument("--first-seed", type=int, default=0, help="the first training seed (default: 0)")
    p.add_argument("--cache", help="feature cache folder made by `emodis preprocess` (sets data.cache_dir)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--max-concurrent", type=int, help="runs at once (default: from the cluster's CPUs)")
    p.add_argument("--frozen-trunk", metavar="RUN",
                   help="a screen: keep RUN's trunks fixed (their outputs computed once) and train only the "
                        "embeddings and heads per arm and seed; minutes instead of hours, labelled a screen")
    add_address(p)
    add_config_args(p)
    p.set_defaults(func=_cmd_study)
