"""Evaluation subcommands: `emodis evaluate`, `emodis compare`, `emodis report`, `emodis predict`."""

from __future__ import annotations

import argparse
from pathlib import Path

from emodis_ray.cli.common import add_address, check_manifest, check_run

# --- evaluate / compare / report / reproduce / predict ------------------------------------------------


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from emodis_ray.evaluation.evaluate import evaluate_run
    from emodis_ray.runtime.session import ray_session

    for run in args.runs:
        check_run(run)
    check_manifest(args.manifest)
    with ray_session(args.address):
        for run in args.runs:
            evaluate_run(Path(run), Path(args.manifest) if args.manifest else None, n_boot=args.bootstrap,
                         seed=args.seed)
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="leakage probes, chance levels, bootstrap intervals for trained runs",
        description="For each RUN: embeddings of train/val/test from the frozen model (Ray Data batch inference), "
                    "one-hidden-layer MLP probes (emotion macro-F1 from the speaker embedding, identity accuracy "
                    "from the emotion embedding; trained on train, early-stopped on train rows held out for them, "
                    "scored on test), chance levels from the test priors, the leakage score, bootstrap 95% intervals "
                    "and the emotion confusion matrix. Writes RUN/evaluation.json, evaluation.md, predictions.parquet, "
                    "confusion.png.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders made by `emodis train`")
    p.add_argument("--manifest", help="manifest to evaluate on (default: the one the run trained on)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes and the bootstrap (default: 0)")
    add_address(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_compare(args: argparse.Namespace) -> int:
    from emodis_ray.evaluation.report import compare_runs, comparison_text

    c = compare_runs(Path(args.run_a), Path(args.run_b), n_boot=args.bootstrap)
    print(comparison_text(c))
    if args.json:
        Path(args.json).write_text(c.to_json())
    return 0


def add_compare(sub: argparse._SubParsersAction) -> None:
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


def add_report(sub: argparse._SubParsersAction) -> None:
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


def _cmd_predict(args: argparse.Namespace) -> int:
    from emodis_ray.evaluation.predict import predict_clips

    check_run(args.run, model=True)
    check_manifest(args.manifest)
    predict_clips(Path(args.run), Path(args.out), videos=Path(args.videos) if args.videos else None,
                  manifest=Path(args.manifest) if args.manifest else None, address=args.address)
    return 0


def add_predict(sub: argparse._SubParsersAction) -> None:
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
    add_address(p)
    p.set_defaults(func=_cmd_predict)
