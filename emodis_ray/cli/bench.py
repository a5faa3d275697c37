"""`emodis bench ingest|train|startup|tune|scale`: benchmarks measured side by side in one run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emodis_ray.cli.common import add_config_args
from emodis_ray.config import load_config

# --- bench -------------------------------------------------------------------------------------------


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from emodis_ray.bench.ingest import main as bench

    bench(args.clips, args.rows, args.soak, args.json, args.workdir)
    return 0


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: ingest, train, startup, tune, scale",
                       description="Benchmarks that measure side by side in one run and print ratios.")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    b = bsub.add_parser(
        "ingest", help="decode limit vs our features vs Ray Data vs the feature cache",
        description="On synthetic clips of the paper's shape (12 s, 224x224, 25 fps, AAC audio), measure in one "
                    "run: (a) PyAV decoding every frame on one thread, (b) our per-clip features on one thread, "
                    "(b1) the same clips as face tracks over raw video, (c) the Ray Data pipeline on all CPUs, "
                    "(d) the JPEG feature cache through Ray Data into one consumer that collates tensors, (e) "
                    "bytes per clip of each cache format (first format, raw, JPEG q90 and q75) and their collate "
                    "cost, (f) the clips/s one GPU would train (FLOPs counted from the paper model, H100 bf16 peak, "
                    "30 % MFU) and (d)'s ratio to it; the ratios (b)/(a), (c)/(b), (d)/(b); peak RSS per decode "
                    "worker and its growth over a soak.",
        epilog="example: emodis bench ingest --json ingest.json --workdir /tmp/ingest")
    b.add_argument("--clips", type=int, default=16, help="distinct synthetic clips to write (default: 16)")
    b.add_argument("--rows", type=int, default=96, help="clip decodes in (c) and (d) (default: 96)")
    b.add_argument("--soak", type=int, default=1000, help="clip decodes in the RSS soak (default: 1000; 0: skip)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.add_argument("--workdir", help="keep the synthetic clips here and reuse them (default: a temp folder)")
    b.set_defaults(func=_cmd_bench_ingest)
    add_bench_train(bsub)
    add_bench_startup(bsub)
    add_bench_tune(bsub)
    add_bench_scale(bsub)


def _show(res: Any, json_path: str | None, write_json: Callable[[Any, Path], None]) -> int:
    """Print a benchmark's table and ratios; also write them as JSON when asked."""
    print()
    print(res.format())
    if json_path:
        write_json(res, Path(json_path))
        print(f"wrote {json_path}")
    return 0


def _cmd_bench_train(args: argparse.Namespace) -> int:
    from emodis_ray.bench.train import bench_train, write_json

    cfg = load_config(args.config, args.overrides)
    res = bench_train(epochs=args.epochs, cfg=cfg, manifest=Path(args.manifest) if args.manifest else None,
                      workdir=Path(args.workdir) if args.workdir else None)
    return _show(res, args.json, write_json)


def add_bench_train(bsub: argparse._SubParsersAction) -> None:
    b = bsub.add_parser(
        "train", help="pure training loop vs the same loop under TorchTrainer (1 and 2 workers); NHWC vs NCHW",
        description="On one feature cache (by default a synthetic set of the config's synth.* size, written to a "
                    "temporary folder), measure in one run: (a) the pure per-epoch loop in this process without "
                    "Ray, (a') the same with the convolution weights in the plain NCHW layout instead of NHWC, "
                    "(b) the loop under TorchTrainer with one worker, (c) with two workers. Prints seconds per "
                    "epoch (training, and whole epochs with validation and checkpoint), clips/s, Ray start-up, and "
                    "the ratios: overhead (b)/(a) - 1 (target <= 10 %), the 2-worker speedup and the NHWC "
                    "speedups (a')/(a) of the training and validation passes.",
        epilog="example: emodis bench train --manifest demo/manifest.parquet --config demo/config.yaml --epochs 4")
    b.add_argument("--epochs", type=int, default=4, help="epochs per loop; the first is warm-up (default: 4)")
    b.add_argument("--manifest", help="use this manifest instead of writing a synthetic set")
    b.add_argument("--workdir", help="keep the synthetic set, cache and runs here (default: a temp folder)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    add_config_args(b)
    b.set_defaults(func=_cmd_bench_train)


def _cmd_bench_tune(args: argparse.Namespace) -> int:
    from emodis_ray.bench.tune import bench_tune, write_json

    cfg = load_config(args.config, args.overrides)
    res = bench_tune(Path(args.space), [p.strip() for p in args.params.split(",") if p.strip()], cfg,
                     grid_values=args.grid_values, tpe_trials=args.trials, epochs=args.epochs,
                     manifest=Path(args.manifest) if args.manifest else None,
                     workdir=Path(args.workdir) if args.workdir else None, seed=args.seed)
    return _show(res, args.json, write_json)


def add_bench_tune(bsub: argparse._SubParsersAction) -> None:
    b = bsub.add_parser(
        "tune", help="Tune+Train overhead per trial; screen vs end-to-end cost; ASHA vs FIFO; TPE vs a grid",
        description="On one feature cache (by default a synthetic set of the config's synth.* size), measure in one "
                    "run: (a) a bare TorchTrainer run of MTL (the screen's trunk), (b) the same config as one "
                    "end-to-end Tune trial, (c) a grid over two parameters of a space screened on (a)'s frozen trunk "
                    "(the stage-1 trial function of `emodis tune`), (d) the same grid under ASHA, (e) Optuna TPE "
                    "over the same two parameters on the screen. Prints Tune's overhead per trial, the screen's cost "
                    "per configuration beside an end-to-end trial's, ASHA's wall time and whether it stopped any of "
                    "the grid's best three, and how many TPE trials reach a validation leakage within 10% of the "
                    "grid's best (target: a third of the grid or fewer). About 10 minutes on two CPUs.",
        epilog="example: emodis bench tune --manifest demo/manifest.parquet --config demo/config.yaml "
               "--set data.cache_dir=demo/cache --json bench_tune.json")
    b.add_argument("--space", default="conf", help="a shipped search space by name, or a file (default: conf)")
    b.add_argument("--params", default="method.w_spk_aux,optim.aux_lr",
                   help="comma-separated parameters of the space to search (default: method.w_spk_aux,optim.aux_lr)")
    b.add_argument("--grid-values", type=int, default=5, help="grid values per parameter (default: 5)")
    b.add_argument("--trials", type=int, default=8, help="TPE trials (default: 8)")
    b.add_argument("--epochs", type=int, default=3, help="epochs of the end-to-end runs (a) and (b) (default: 3)")
    b.add_argument("--seed", type=int, default=0, help="sampler and probe seed (default: 0)")
    b.add_argument("--manifest", help="use this manifest instead of writing a synthetic set")
    b.add_argument("--workdir", help="keep the data, cache and searches here (default: a temp folder)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    add_config_args(b)
    b.set_defaults(func=_cmd_bench_tune)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes wants comma-separated clip counts, got {text!r}") from None
    if not sizes or min(sizes) < 50:
        raise argparse.ArgumentTypeError(f"--sizes wants clip counts of at least 50, got {text!r}")
    return sizes


def _cmd_bench_scale(args: argparse.Namespace) -> int:
    import tempfile

    from emodis_ray.bench.scale import bench_scale, write_json

    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory(prefix="emodis-scale-") as tmp:
        res = bench_scale(args.sizes, cfg, Path(args.workdir or tmp), metadata_entries=args.metadata)
    return _show(res, args.json, write_json)


def _cmd_bench_startup(args: argparse.Namespace) -> int:
    from emodis_ray.bench.startup import bench_startup, write_json

    res = bench_startup(reps=args.reps, epochs=args.epochs, workers=args.workers,
                        workdir=Path(args.workdir) if args.workdir else None)
    return _show(res, args.json, write_json)


def add_bench_startup(bsub: argparse._SubParsersAction) -> None:
    b = bsub.add_parser(
        "startup", help="the fixed cost of a Ray Train run: this program's local-cluster settings vs Ray's defaults",
        description="Trains a 48-clip synthetic set (a run that is almost all start-up and shut-down) REPS times "
                    "on a local cluster with the settings ray_session gives one it starts (LOCAL_TRAIN_ENV: the "
                    "Train controller polling every 0.5 s, no preemption watcher) and REPS times with Ray Train's "
                    "defaults (2 s, a watcher), alternating, each run on a fresh cluster. Prints each run's fit "
                    "seconds, the means, and their difference with a 95 % Welch interval. About 5 minutes on two "
                    "CPUs at the defaults.",
        epilog="example: emodis bench startup --reps 3 --json startup.json")
    b.add_argument("--reps", type=int, default=3, help="runs per setting (default: 3)")
    b.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2)")
    b.add_argument("--workers", type=int, default=2, help="train workers per run (default: 2, as in the demo)")
    b.add_argument("--workdir", help="keep the set, its cache and the runs here (default: a temp folder)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.set_defaults(func=_cmd_bench_startup)


def add_bench_scale(bsub: argparse._SubParsersAction) -> None:
    b = bsub.add_parser(
        "scale", help="time per clip and peak memory as the data grows, synth to evaluate",
        description="For each size, a synthetic set of about that many clips (the config's people, more clips and "
                    "videos per person) goes through manifest, preprocess, one training epoch and evaluate; prints "
                    "ms per clip of each stage, the peak RSS of the driver and of the largest Ray worker, the peak "
                    "object-store use, the marginal ms of each added clip between sizes (flat: the cost per clip "
                    "does not grow) and the ratios of the largest size to the smallest (target <= 1.3). Then "
                    "builds, writes and validates the manifest of a metadata-only table (no videos). About 40 "
                    "minutes on two CPUs at the default sizes.",
        epilog="example: emodis bench scale --sizes 500,2000,8000 --json scale.json")
    b.add_argument("--sizes", type=_sizes, default=[500, 2000, 8000],
                   help="comma-separated clip counts (default: 500,2000,8000)")
    b.add_argument("--metadata", type=int, default=150_000,
                   help="entries of the metadata-only manifest (default: 150000; 0: skip)")
    b.add_argument("--workdir", help="keep the sets, caches and runs here (default: a temp folder)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    add_config_args(b)
    b.set_defaults(func=_cmd_bench_scale)
