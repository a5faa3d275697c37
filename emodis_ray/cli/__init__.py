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


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")


def _elapsed(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f} s"


# --- synth -------------------------------------------------------------------------------------------


def _cmd_synth(args: argparse.Namespace) -> int:
    from emodis_ray.synth.generate import generate

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
    from emodis_ray.data.manifest import write_manifest

    write_manifest(df, out)  # validates first; nothing is written on error
    print(report.format())  # type: ignore[attr-defined]
    print(f"wrote {out} ({len(df)} clips)")  # type: ignore[arg-type]


def _cmd_manifest_emovox(args: argparse.Namespace) -> int:
    from emodis_ray.data.sources import emovox_manifest

    sets = [f"labels.rule={args.rule}"] if args.rule else []
    cfg = load_config(args.config, [*args.overrides, *sets])
    t0 = time.perf_counter()
    df, report = emovox_manifest(Path(args.mat), Path(args.meta), Path(args.videos), cfg.labels,
                                 audio=Path(args.audio) if args.audio else None)
    _write_manifest(df, report, Path(args.out), cfg)
    print(f"manifest took {_elapsed(t0)}")
    return 0


def _cmd_manifest_table(args: argparse.Namespace) -> int:
    from emodis_ray.data.sources import table_manifest

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
    from emodis_ray.data.ingest import preprocess
    from emodis_ray.runtime.session import ray_session

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
    _add_address(p)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=_cmd_preprocess)


# --- train -----------------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    from emodis_ray.config import replace
    from emodis_ray.runtime.session import ray_session
    from emodis_ray.train.fit import fit

    sets = [f"{k}={v}" for k, v in (("method.name", args.method), ("train.workers", args.workers),
                                    ("train.epochs", args.epochs)) if v is not None]
    cfg = load_config(args.config, [*args.overrides, *sets])
    if args.cache:
        cfg = replace(cfg, data={"cache_dir": args.cache})  # a path, not parsed as YAML
    out = Path(args.out)
    print(f"train {cfg.method.name} ({cfg.method.direction}) with {cfg.train.workers} worker(s), "
          f"{cfg.train.epochs} epochs -> {out}")
    with ray_session(args.address, num_cpus=args.num_cpus):
        res = fit(Path(args.manifest), out, cfg, progress=True, storage=args.storage)
    f = res.final
    if f:
        print(f"final (epoch {int(f['epoch']) + 1}): val emotion macro-F1 {f.get('val_emo_f1', float('nan')):.3f}, "
              f"identity accuracy {f.get('val_spk_acc', float('nan')):.3f}; leakage (aux heads): emotion F1 from "
              f"the speaker embedding {f.get('val_aux_emo_f1', float('nan')):.3f}, identity accuracy from the "
              f"emotion embedding {f.get('val_aux_spk_acc', float('nan')):.3f}")
    print(f"{res.source or 'nothing trained'}; {res.elapsed_s:.0f} s; outputs in {res.out}/ "
          f"(metrics.csv, curves.png, model.pt, tensorboard/)")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a method with Ray Train (DDP), resumable",
        description="Train the multitask model with one method (stl-emotion, stl-speaker, mtl, gr, alt, conf) on "
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
    p.add_argument("--method", choices=["stl-emotion", "stl-speaker", "mtl", "gr", "alt", "conf"],
                   help="training method (default: method.name from the config)")
    p.add_argument("--workers", type=int, help="Ray Train workers (default: train.workers)")
    p.add_argument("--epochs", type=int, help="epochs in total (default: train.epochs)")
    p.add_argument("--cache", help="feature cache folder made by `emodis preprocess` (sets data.cache_dir)")
    p.add_argument("--storage", help="where Ray Train keeps checkpoints: a folder every node can reach (NFS) or "
                                     "an object-store URI such as s3://bucket/runs (default: OUT/checkpoints)")
    _add_address(p)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)


# --- bench -------------------------------------------------------------------------------------------


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from emodis_ray.bench.ingest import main as bench

    bench(args.clips, args.rows, args.soak, args.json, args.workdir)
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: ingest, train, tune",
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
    _add_bench_train(bsub)
    _add_bench_tune(bsub)


def _cmd_bench_train(args: argparse.Namespace) -> int:
    from emodis_ray.bench.train import bench_train, write_json

    cfg = load_config(args.config, args.overrides)
    res = bench_train(epochs=args.epochs, cfg=cfg, manifest=Path(args.manifest) if args.manifest else None,
                      workdir=Path(args.workdir) if args.workdir else None)
    print()
    print(res.format())
    if args.json:
        write_json(res, Path(args.json))
        print(f"wrote {args.json}")
    return 0


def _add_bench_train(bsub: argparse._SubParsersAction) -> None:
    b = bsub.add_parser(
        "train", help="pure training loop vs the same loop under TorchTrainer (1 and 2 workers)",
        description="On one feature cache (by default a synthetic set of the config's synth.* size, written to a "
                    "temporary folder), measure in one run: (a) the pure per-epoch loop in this process without "
                    "Ray, (b) the same loop under TorchTrainer with one worker, (c) with two workers. Prints "
                    "seconds per epoch (training, and whole epochs with validation and checkpoint), clips/s, "
                    "Ray start-up, and the ratios: overhead (b)/(a) - 1 (target <= 10 %) and the 2-worker speedup.")
    b.add_argument("--epochs", type=int, default=4, help="epochs per loop; the first is warm-up (default: 4)")
    b.add_argument("--manifest", help="use this manifest instead of writing a synthetic set")
    b.add_argument("--workdir", help="keep the synthetic set, cache and runs here (default: a temp folder)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    _add_config_args(b)
    b.set_defaults(func=_cmd_bench_train)


def _cmd_bench_tune(args: argparse.Namespace) -> int:
    from emodis_ray.bench.tune import bench_tune, write_json

    cfg = load_config(args.config, args.overrides)
    res = bench_tune(Path(args.space), [p.strip() for p in args.params.split(",") if p.strip()], cfg,
                     grid_values=args.grid_values, tpe_trials=args.trials, epochs=args.epochs,
                     manifest=Path(args.manifest) if args.manifest else None,
                     workdir=Path(args.workdir) if args.workdir else None, floor=args.floor, seed=args.seed)
    print()
    print(res.format())
    if args.json:
        write_json(res, Path(args.json))
        print(f"wrote {args.json}")
    return 0


def _add_bench_tune(bsub: argparse._SubParsersAction) -> None:
    b = bsub.add_parser(
        "tune", help="Tune+Train overhead per trial; trials TPE needs to match a grid",
        description="On one feature cache (by default a synthetic set of the config's synth.* size), measure in one "
                    "run: (a) a bare TorchTrainer run of the grid's centre point, (b) a grid search over two "
                    "parameters of a space under Tune (the same trial function as `emodis tune`), (c) an Optuna TPE "
                    "search with ASHA over the same two parameters. Prints each trial's fit time over (a), start-up "
                    "seconds, Tune's gap between trials, and how many TPE trials reach a validation leakage within "
                    "10% of the grid's best feasible one (target: a third of the grid's size or fewer). About "
                    "15 minutes on two CPUs with the defaults.")
    b.add_argument("--space", default="tune_spaces/gr.yaml", help="search space (default: tune_spaces/gr.yaml)")
    b.add_argument("--params", default="method.grl_lambda,method.w_spk_aux",
                   help="comma-separated parameters of the space to search (default: method.grl_lambda,"
                        "method.w_spk_aux)")
    b.add_argument("--grid-values", type=int, default=3, help="grid values per parameter (default: 3)")
    b.add_argument("--trials", type=int, default=6, help="TPE trials (default: 6)")
    b.add_argument("--epochs", type=int, default=3, help="epochs per trial (default: 3)")
    b.add_argument("--floor", type=float, help="emotion-F1 floor (default: an MTL baseline's val F1 - tolerance)")
    b.add_argument("--seed", type=int, default=0, help="sampler and probe seed (default: 0)")
    b.add_argument("--manifest", help="use this manifest instead of writing a synthetic set")
    b.add_argument("--workdir", help="keep the data, cache and searches here (default: a temp folder)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    _add_config_args(b)
    b.set_defaults(func=_cmd_bench_tune)


# --- tune --------------------------------------------------------------------------------------------


def _cmd_tune(args: argparse.Namespace) -> int:
    from emodis_ray.runtime.session import ray_session
    from emodis_ray.search.driver import search
    from emodis_ray.search.space import load_space

    cfg = load_config(args.config, args.overrides)
    space = load_space(args.space, cfg)
    with ray_session(args.address, num_cpus=args.num_cpus):
        res = search(space, Path(args.manifest), Path(args.out), cfg, args.trials,
                         multi_objective=args.multi_objective, resume=args.resume, floor=args.floor,
                         baseline=Path(args.baseline) if args.baseline else None, seed=args.seed,
                         max_concurrent=args.max_concurrent)
    return 3 if res.interrupted else 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="search hyperparameters for the lowest validation leakage (Ray Tune + Optuna)",
        description="Search a space of tune_spaces/ (loss weights, learning rates, GR lambda and schedule, speaker "
                    "embedding size, method) with Ray Tune: Optuna TPE (seeded), ASHA early stopping on the online "
                    "leakage estimate of each epoch, and at each trial's end the probe-based validation leakage "
                    "(probes trained on train, early-stopped and scored on val; test is never read). The chosen "
                    "trial has the lowest validation leakage among those whose validation emotion F1 meets the "
                    "floor (default: an MTL baseline's, trained first, minus the space's tolerance); infeasible "
                    "trials are never chosen. --multi-objective: the Pareto front of emotion F1 and leakage (FIFO, "
                    "no ASHA). Each trial is a TorchTrainer run on the feature cache (made first if missing). OUT "
                    "gets best.yaml (for `emodis train --config`), trials.csv, pareto.png, optuna.db, runs/<trial>/. "
                    "--resume continues an interrupted search without re-running finished trials, or adds trials "
                    "to a finished one (a larger --trials). Exit code 3: interrupted (resume it).",
        epilog="example: emodis tune --space tune_spaces/gr.yaml --trials 12 --manifest demo/manifest.parquet "
               "--set data.cache_dir=demo/cache --out runs/tune-gr")
    p.add_argument("--space", required=True, help="search space YAML (see tune_spaces/)")
    p.add_argument("--trials", type=int, required=True, help="trials in total (with --resume: the new total)")
    p.add_argument("--manifest", required=True, help="manifest.parquet")
    p.add_argument("--out", required=True, help="search folder")
    p.add_argument("--multi-objective", action="store_true", help="Pareto front of emotion F1 and leakage")
    p.add_argument("--resume", action="store_true", help="continue or extend the search in OUT")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--floor", type=float, help="emotion-F1 floor (default: MTL baseline's val F1 - tolerance)")
    g.add_argument("--baseline", help="an MTL run folder whose last val emotion F1 sets the floor")
    p.add_argument("--seed", type=int, default=0, help="sampler and probe seed (default: 0)")
    p.add_argument("--max-concurrent", type=int, help="concurrent trials (default: from the cluster's resources)")
    _add_address(p)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_tune)


# --- evaluate / compare / report / reproduce / predict ------------------------------------------------


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from emodis_ray.evaluation.evaluate import evaluate_run
    from emodis_ray.runtime.session import ray_session

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
                    "levels from the test priors, the leakage score, bootstrap 95% intervals and the emotion "
                    "confusion matrix. Writes RUN/evaluation.json, evaluation.md, predictions.parquet, confusion.png.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders made by `emodis train`")
    p.add_argument("--manifest", help="manifest to evaluate on (default: the one the run trained on)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes and the bootstrap (default: 0)")
    _add_address(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_compare(args: argparse.Namespace) -> int:
    from emodis_ray.evaluation.report import compare_runs, comparison_text

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
    from emodis_ray.evaluation.report import report_runs

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
    from emodis_ray.workflows.reproduce import GRID_METHODS, reproduce

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
    _add_address(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_reproduce)


def _cmd_predict(args: argparse.Namespace) -> int:
    from emodis_ray.evaluation.predict import predict_clips

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
    _add_address(p)
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
    from emodis_ray.workflows.demo import run_demo

    cfg = load_config(args.config, args.overrides)
    run_demo(Path(args.out), cfg, address=args.address)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the main job end to end on a synthetic set",
        description="End to end on the embedded default, on a local Ray cluster that it starts (or RAY_ADDRESS): "
                    "write a synthetic EmoVox set in the real formats, build its manifest with the EmoVox label "
                    "rules, decode it once into the feature cache, train the MTL baseline and gradient reversal "
                    "with Ray Train, evaluate both with leakage probes and write a report (OUT/report/report.md). "
                    "A rerun keeps finished steps.")
    p.add_argument("--out", default="demo", help="output folder (default: ./demo)")
    _add_address(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_demo)


# --- submit / jobs: run commands on a Ray cluster through the Job API --------------------------------


def _cmd_submit(args: argparse.Namespace) -> int:
    from emodis_ray.runtime.jobs import run, submit_command

    return run(submit_command, "submit", args.cmd, address=args.address, wait=not args.no_wait,
               working_dir=args.working_dir, excludes=args.exclude, env=args.env, submission_id=args.job_id)


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit", help="run an emodis command on a Ray cluster as a job, follow its logs",
        description="Submit `emodis ARGS...` to a Ray cluster through its Job API: the project folder (without "
                    "data, caches, runs, .venv, .git) travels as the job's working_dir, the logs stream here, and "
                    "the exit code is the job's: 0 when it SUCCEEDED, the command's code when it FAILED, 3 when "
                    "STOPPED. Paths in ARGS are the cluster's: use absolute paths on storage every node shares. "
                    "The token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is always sent.",
        epilog="example: emodis submit --address http://127.0.0.1:8265 -- synth /shared/data --people 8")
    p.add_argument("--address", help="the dashboard URL (default: RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--working-dir", help="folder to ship as the job's working_dir (default: this project's)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="one more gitignore-style pattern to leave out of the working_dir (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable of the job (repeatable)")
    p.add_argument("--job-id", help="the submission id (default: emodis-<command>-<random>)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the emodis command to run")
    p.set_defaults(func=_cmd_submit)


def _cmd_jobs(args: argparse.Namespace) -> int:
    from emodis_ray.runtime.jobs import jobs_command, run

    return run(jobs_command, "jobs", args.action, args.job_id, address=args.address, follow=args.follow)


def _add_jobs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="list, show, print the logs of, or stop jobs on a Ray cluster",
                       description="Jobs of the cluster at --address / RAY_ADDRESS (the dashboard URL).")
    p.add_argument("action", nargs="?", default="list", choices=["list", "show", "logs", "stop"])
    p.add_argument("job_id", nargs="?", help="a submission id (for show, logs, stop)")
    p.add_argument("--follow", "-f", action="store_true", help="logs: follow until the job ends")
    p.add_argument("--address", help="the dashboard URL (default: RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.set_defaults(func=_cmd_jobs)


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_synth, _add_manifest, _add_preprocess, _add_train, _add_bench, _add_evaluate, _add_compare, _add_report,
    _add_reproduce, _add_predict, _add_tune, _add_demo, _add_config,
    _add_submit, _add_jobs,
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
