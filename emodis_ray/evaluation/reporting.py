"""`emodis compare` and `emodis report`: evaluated runs -> Stuart–Maxwell tests and one Markdown report.

Ray-free: everything here reads the files ``emodis evaluate`` wrote into each run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emodis_ray.evaluation.evaluate import load_evaluation, load_predictions
from emodis_ray.evaluation.stats import Comparison, Evaluation, compare

BASELINE = "mtl"


def compare_runs(run_a: Path, run_b: Path, n_boot: int = 1000, seed: int = 0) -> Comparison:
    """Stuart–Maxwell marginal homogeneity of two runs' test emotion predictions (α = 0.01), plus paired
    bootstrap intervals of the differences A − B. Both runs must have been evaluated on the same clips."""
    a, b = load_evaluation(run_a), load_evaluation(run_b)
    pa, pb = load_predictions(run_a), load_predictions(run_b)
    if set(pa["clip_id"]) != set(pb["clip_id"]):
        only_a = sorted(set(pa["clip_id"]) - set(pb["clip_id"]))
        only_b = sorted(set(pb["clip_id"]) - set(pa["clip_id"]))
        raise ValueError(f"{run_a} and {run_b} were evaluated on different test clips ({len(only_a)} only in A, "
                         f"e.g. {only_a[:3]}; {len(only_b)} only in B, e.g. {only_b[:3]})")
    pb = pb.set_index("clip_id").loc[pa["clip_id"]].reset_index()
    if not np.array_equal(pa["emotion"].to_numpy(), pb["emotion"].to_numpy()):
        raise ValueError(f"{run_a} and {run_b} disagree on the test labels: were they built from the same manifest?")
    has_spk = a.spk_acc is not None and b.spk_acc is not None
    return compare(a, b, pa["emotion"].to_numpy(), pa["emo_pred"].to_numpy(), pb["emo_pred"].to_numpy(),
                   speaker=pa["speaker"].to_numpy() if has_spk else None,
                   spk_pred_a=pa["spk_pred"].to_numpy() if has_spk else None,
                   spk_pred_b=pb["spk_pred"].to_numpy() if has_spk else None, n_boot=n_boot, seed=seed)


def comparison_text(c: Comparison) -> str:
    sm = c.stuart_maxwell
    if sm.singular:
        test = (f"Stuart–Maxwell: the table is singular (categories used: {list(sm.categories_used)}); "
                f"the marginal homogeneity test is undefined here")
    else:
        verdict = "differ" if sm.reject else "do not differ"
        test = (f"Stuart–Maxwell χ² = {sm.statistic:.2f}, df = {sm.df}, p = {sm.pvalue:.3g}: the emotion prediction "
                f"margins {verdict} at α = {sm.alpha:g}")
    diffs = "; ".join(f"Δ {k} (A − B) = {v.fmt()} points" for k, v in c.diffs.items())
    return f"A = {c.run_a} ({c.method_a}), B = {c.run_b} ({c.method_b})\n{test}\n{diffs}"


def comparisons_vs_baseline(runs: Sequence[Path], evals: Sequence[Evaluation]) -> list[Comparison]:
    """Each non-baseline run with an emotion head vs the MTL run of the same speaker-embedding size."""
    base = {e.spk_dim: r for r, e in zip(runs, evals, strict=True) if e.method == BASELINE}
    out = []
    for r, e in zip(runs, evals, strict=True):
        if e.method != BASELINE and e.emo_f1 is not None and e.spk_dim in base:
            out.append(compare_runs(r, base[e.spk_dim]))
    return out


def report_runs(runs: Sequence[Path], out: Path, title: str = "emodis report") -> Path:
    """Render evaluated runs (and each method vs the MTL baseline) into ``out/report.md`` with the figures."""
    from emodis_ray.evaluation.report import write_report

    evals = [load_evaluation(r) for r in runs]
    comparisons = comparisons_vs_baseline(runs, evals)
    return write_report(out, evals, title=title, comparisons=comparisons)
