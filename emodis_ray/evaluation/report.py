"""`emodis report` and `emodis compare`: evaluated runs -> a Markdown report with PNG figures, and
Stuart–Maxwell tests between runs.

The report (:func:`write_report`) is pure data in, files out: a Table 1 analog (identity accuracy), Fig. 3a
and 3b analogs, each method against the MTL baseline, the Stuart–Maxwell tests and confusion matrices, from
evaluation records (:class:`~emodis_ray.evaluation.records.Evaluation`). :func:`report_runs` and
:func:`compare_runs` read what `emodis evaluate` wrote into each run folder. No Ray.

Figures are drawn on ``matplotlib.figure.Figure`` objects (Agg canvas), never through pyplot, so rendering
neither needs a display nor changes matplotlib's global state.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from emodis_ray.config import BASELINE, DISENTANGLING, METHOD_LABELS, METHODS
from emodis_ray.data.labels import EMOTIONS
from emodis_ray.evaluation.records import Comparison, Estimate, Evaluation, compare, load_evaluation, load_predictions
from emodis_ray.evaluation.stats import ALPHA_STUART_MAXWELL

METHOD_COLORS = {m: f"C{i}" for i, m in enumerate(METHODS)}
GOAL_REDUCTION = 1 / 3  # fraction of the baseline's leakage above the identity-only floor to remove
GOAL_TOLERANCE = 0.02  # emotion F1 and identity accuracy within 2 points of the baseline

EvaluationLike = Evaluation | Mapping[str, Any]


def _as_eval(e: EvaluationLike) -> Evaluation:
    return e if isinstance(e, Evaluation) else Evaluation.from_dict(e)


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _methods(evals: Sequence[Evaluation]) -> list[str]:
    present = {e.method for e in evals}
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def _dims(evals: Sequence[Evaluation]) -> list[int]:
    return sorted({e.spk_dim for e in evals}, reverse=True)  # the paper's order: 2048, 256, 64


def _md(text: object) -> str:
    return str(text).replace("|", "\\|")


def _cell(estimates: Sequence[Estimate]) -> str:
    """One estimate with its interval, or the mean ± sd over several runs of one grid cell."""
    vals = [e for e in estimates if e is not None and math.isfinite(e.value)]
    if not vals:
        return "—"
    if len(vals) == 1:
        return vals[0].fmt()
    v = np.array([e.value for e in vals]) * 100
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f} ({len(vals)} runs)"


def _grid(evals: Sequence[Evaluation], attr: str) -> dict[tuple[str, int], list[Estimate]]:
    out: dict[tuple[str, int], list[Estimate]] = defaultdict(list)
    for e in evals:
        v = getattr(e, attr)
        if v is not None:
            out[(e.method, e.spk_dim)].append(v)
    return out


def table1_markdown(rows: Sequence[EvaluationLike]) -> str:
    """Table 1 analog: identity accuracy (%, test, 95% bootstrap interval) per method × speaker-embedding size."""
    evals = [_as_eval(r) for r in rows]
    dims, grid = _dims(evals), _grid(evals, "spk_acc")
    lines = ["| Method | " + " | ".join(f"d_spk = {d}" for d in dims) + " |",
             "|---|" + "---:|" * len(dims)]
    for m in _methods(evals):
        lines.append(f"| {_md(_label(m))} | " + " | ".join(_cell(grid.get((m, d), [])) for d in dims) + " |")
    return "\n".join(lines) + "\n"


def _yerr(ests: Sequence[Estimate]) -> np.ndarray | None:
    """[2, n] asymmetric error bars from the intervals (None when some interval is missing)."""
    if any(e.lo is None or e.hi is None for e in ests):
        return None
    return np.array([[max(e.value - e.lo, 0.0) for e in ests], [max(e.hi - e.value, 0.0) for e in ests]])


def _bars(ax: Any, evals: Sequence[Evaluation], attr: str, methods: Sequence[str]) -> None:
    """Grouped bars: one group per speaker-embedding size, one bar per method, CI error bars."""
    dims, grid = _dims(evals), _grid(evals, attr)
    x = np.arange(len(dims))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        pos, ests = [], []
        for j, d in enumerate(dims):
            cell = grid.get((m, d), [])
            if cell:  # several runs of one cell (e.g. seeds): their mean, without an interval
                ests.append(cell[0] if len(cell) == 1 else Estimate(float(np.mean([c.value for c in cell]))))
                pos.append(x[j] - 0.4 + width * (i + 0.5))
        if not ests:
            continue
        err = _yerr(ests)
        ax.bar(pos, [100 * e.value for e in ests], width * 0.9, yerr=None if err is None else 100 * err, capsize=3,
               label=_label(m), color=METHOD_COLORS.get(m, f"C{5 + i % 2}"))
    ax.set_xticks(x, [str(d) for d in dims])
    ax.set_xlabel("Speaker embedding size (d_spk)")
    ax.set_ylim(0, 105)  # percent, as in the tables
    ax.grid(axis="y", alpha=0.3)


def _hline(ax: Any, value: float, band: tuple[float, float] | None, label: str, style: str) -> None:
    """A reference line at ``value`` (a fraction, drawn in percent) with an optional interval band."""
    ax.axhline(100 * value, color="k", linestyle=style, linewidth=1.2, label=label)
    if band is not None:
        ax.axhspan(100 * band[0], 100 * band[1], color="k", alpha=0.08)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_fig3a(results: Sequence[EvaluationLike], path: str | Path) -> Path:
    """Fig. 3a analog: emotion macro-F1 of the primary head (from the emotion embedding) per method and speaker
    embedding size, error bars from the bootstrap intervals; single-task emotion (STL) as a horizontal line."""
    evals = [_as_eval(r) for r in results]
    methods = [m for m in _methods(evals) if not m.startswith("stl-")]
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    _bars(ax, evals, "emo_f1", methods)
    stl = [e.emo_f1 for e in evals if e.method == "stl-emotion" and e.emo_f1 is not None]
    if stl:
        band = (stl[0].lo, stl[0].hi) if len(stl) == 1 and stl[0].lo is not None else None
        _hline(ax, float(np.mean([s.value for s in stl])), band, "STL (emotion only)", "--")  # type: ignore[arg-type]
    ax.set_ylabel("Emotion macro-F1 (test, %)")
    ax.set_title("Emotion recognition from the emotion embedding")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def plot_fig3b(results: Sequence[EvaluationLike], path: str | Path) -> Path:
    """Fig. 3b analog: emotion macro-F1 of the probe on the speaker embedding (leakage) per method and speaker
    embedding size, error bars from the bootstrap intervals; majority-class chance and the identity-only floors
    (what knowing only the speaker gives) as horizontal lines."""
    evals = [_as_eval(r) for r in results]
    methods = [m for m in _methods(evals) if m != "stl-emotion"]
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    _bars(ax, evals, "probe_emo_from_spk_f1", methods)
    chances = [e.chance_emo_f1 for e in evals if math.isfinite(e.chance_emo_f1)]
    if chances:
        _hline(ax, float(np.mean(chances)), None, "Chance (majority class)", ":")
    for kind, style in (("floor_shuffled", "--"), ("floor_prior", "-.")):
        vals = [_direction(e, "emo_from_spk").get(kind) for e in evals]
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        if vals:
            _hline(ax, float(np.mean(vals)), None, f"Identity-only floor ({kind.split('_')[1]})", style)
    ax.set_ylabel("Emotion macro-F1 from the speaker embedding (test, %)")
    ax.set_title("Emotion leakage into the speaker embedding (lower is better)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def confusion_png(cm: np.ndarray | Sequence[Sequence[int]], labels: Sequence[str], path: str | Path,
                  title: str = "Emotion confusion (test)") -> Path:
    """Row-normalised confusion matrix (rows: truth, columns: prediction) with the counts in the cells."""
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig = Figure(figsize=(1.0 + 0.9 * len(labels), 0.6 + 0.8 * len(labels)))
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    return _save(fig, path)


def significance_markdown(comparisons: Sequence[Comparison], alpha: float = ALPHA_STUART_MAXWELL) -> str:
    """Each comparison (a method vs the baseline) as a row: Stuart–Maxwell χ², df, p, whether the emotion
    prediction margins differ at ``alpha``, and the paired-bootstrap differences (points, A − B)."""
    lines = [f"| Method | d_spk | vs | χ² | df | p | differs at α = {alpha:g} | Δ emotion F1 | Δ identity acc |",
             "|---|---:|---|---:|---:|---:|---|---:|---:|"]
    for c in comparisons:
        sm = c.stuart_maxwell
        if sm.singular:
            stat = p = "singular"
            verdict = "n/a (singular table)"
        else:
            stat, p = f"{sm.statistic:.2f}", f"{sm.pvalue:.2g}"
            verdict = "yes" if sm.pvalue < alpha else "no"
        d_f1, d_acc = (c.diffs[k].fmt() if k in c.diffs else "—" for k in ("emo_f1", "spk_acc"))
        lines.append(f"| {_md(_label(c.method_a))} | {c.spk_dim_a} | {_md(c.run_b)} | {stat} | {sm.df} | {p} | "
                     f"{verdict} | {d_f1} | {d_acc} |")
    if any(c.stuart_maxwell.singular for c in comparisons):
        lines += ["", SINGULAR_NOTE]
    return "\n".join(lines) + "\n"


SINGULAR_NOTE = ("*Singular table*: the Stuart–Maxwell test compares how often each model predicts each emotion, "
                 "using the covariance of the clips on which the two models disagree. When they disagree too "
                 "little (e.g. they agree on every clip, or every disagreement moves between the same two "
                 "classes), that covariance cannot be inverted and the test is undefined: the table reports "
                 "no p-value rather than a made-up one. Read the paired differences beside it instead.")


def _direction(e: Evaluation, name: str) -> dict[str, Any]:
    return e.leakage_detail.get("directions", {}).get(name, {})


def runs_markdown(evals: Sequence[EvaluationLike]) -> str:
    """Every figure of every run, one row each (%, 95% bootstrap intervals)."""
    lines = ["| Run | Method | d_spk | Emotion F1 | Identity acc | Probe: emotion F1 from spk emb | floor shuffled / "
             "prior | Probe: identity acc from emo emb | floor shuffled / prior | Chance F1 / acc | Leakage above "
             "the floor (targeted) | emo←spk / spk←emo above floor | Online aux F1 / acc |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda v: "—" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"
    opt = lambda est: "—" if est is None else est.fmt()
    floors = lambda d: f"{pct(d.get('floor_shuffled'))} / {pct(d.get('floor_prior'))}"
    for e in map(_as_eval, evals):
        de, ds = _direction(e, "emo_from_spk"), _direction(e, "spk_from_emo")
        lines.append(
            f"| {_md(e.run)} | {_md(_label(e.method))} | {e.spk_dim} | {opt(e.emo_f1)} | {opt(e.spk_acc)} | "
            f"{e.probe_emo_from_spk_f1.fmt()} | {floors(de)} | {e.probe_spk_from_emo_acc.fmt()} | {floors(ds)} | "
            f"{pct(e.chance_emo_f1)} / {pct(e.chance_spk_acc)} | {e.leakage.fmt()} | "
            f"{pct(e.leakage_emo_from_spk)} / {pct(e.leakage_spk_from_emo)} | "
            f"{pct(e.aux_emo_f1)} / {pct(e.aux_spk_acc)} |")
    return "\n".join(lines) + "\n"


def baseline_markdown(evals: Sequence[EvaluationLike]) -> str:
    """Each disentangling method vs the MTL baseline of the same size: the share of the baseline's emotion
    leakage above the identity-only floor that it removes, and its emotion F1 and identity accuracy changes
    (points). One run each: read the intervals of `emodis study` before calling a difference real."""
    evs = _ordered([_as_eval(e) for e in evals])
    base = {e.spk_dim: e for e in evs if e.method == BASELINE}
    lines = ["| Method | d_spk | Leakage above the floor (emo from spk, %) | Removed vs MTL | Δ emotion F1 | "
             "Δ identity acc | Goal met |", "|---|---:|---:|---:|---:|---:|---|"]
    for e in evs:
        b = base.get(e.spk_dim)
        if b is None or e.method not in DISENTANGLING:
            continue
        removed = 1 - e.leakage_emo_from_spk / b.leakage_emo_from_spk if b.leakage_emo_from_spk > 0 else math.nan
        d_f1 = e.emo_f1.value - b.emo_f1.value if e.emo_f1 is not None and b.emo_f1 is not None else math.nan
        d_acc = (e.spk_acc.value - b.spk_acc.value if e.spk_acc is not None and b.spk_acc is not None
                 else math.nan)
        met = removed >= GOAL_REDUCTION and abs(d_f1) <= GOAL_TOLERANCE and abs(d_acc) <= GOAL_TOLERANCE
        lines.append(f"| {_md(_label(e.method))} ({_md(e.run)}) | {e.spk_dim} | {100 * e.leakage_emo_from_spk:.1f} "
                     f"(MTL {100 * b.leakage_emo_from_spk:.1f}) | {removed:.0%} | {100 * d_f1:+.1f} | "
                     f"{100 * d_acc:+.1f} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def _ordered(evals: Sequence[Evaluation]) -> list[Evaluation]:
    """Method order, then the larger speaker embedding first, then run name."""
    rank = {m: i for i, m in enumerate(_methods(evals))}
    return sorted(evals, key=lambda e: (rank[e.method], -e.spk_dim, e.run))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def write_report(out_dir: str | Path, evaluations: Sequence[EvaluationLike], title: str = "Evaluation report",
                 comparisons: Sequence[Comparison] = (), emotion_labels: Sequence[str] = EMOTIONS) -> Path:
    """Render ``evaluations`` (and optional Stuart–Maxwell ``comparisons``) into ``out_dir/report.md`` with
    ``fig3a.png``, ``fig3b.png`` and one ``confusion_<run>.png`` per run that has a confusion matrix."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evals = _ordered([_as_eval(e) for e in evaluations])
    if not evals:
        raise ValueError("nothing to report: no evaluations given")
    fig_a, fig_b = plot_fig3a(evals, out / "fig3a.png"), plot_fig3b(evals, out / "fig3b.png")
    md = [f"# {title}", "",
          "All figures are on the test split, in percent, with 95% bootstrap intervals over test clips. Emotion: "
          "macro-F1 over the 5 classes; identity: top-1 accuracy. Probes are one-hidden-layer MLPs trained on the "
          "frozen embeddings (train split), early-stopped on train rows held out for them, averaged over several "
          "seeds. Chance is always predicting the test "
          "majority class. People have skewed emotion priors, so knowing only who speaks already predicts emotion "
          "above chance: leakage is measured above the identity-only floor (the same probe on embeddings shuffled "
          "among the clips of one speaker; the prior floor maps each speaker to one emotion), "
          "(probe − floor)/(1 − floor) floored at 0, lower is better; the headline is the direction the method "
          "targets. One seed per run: compare methods with `emodis study`.", "",
          "## Identity accuracy (Table 1 analog)", "", table1_markdown(evals),
          "## Emotion F1 from the emotion embedding (Fig. 3a analog)", "", f"![Fig. 3a]({fig_a.name})", "",
          "## Emotion F1 from the speaker embedding (Fig. 3b analog)", "", f"![Fig. 3b]({fig_b.name})", ""]
    if any(e.method == BASELINE for e in evals) and any(e.method in DISENTANGLING for e in evals):
        md += ["## Disentangling methods vs the MTL baseline", "",
               f"Goal: remove at least {GOAL_REDUCTION:.0%} of the baseline's emotion leakage above the floor while "
               f"emotion F1 and identity accuracy stay within {100 * GOAL_TOLERANCE:.0f} points.", "",
               baseline_markdown(evals)]
    if comparisons:
        md += ["## Significance: Stuart–Maxwell marginal homogeneity of the emotion predictions", "",
               "Differences are A − B in points with paired-bootstrap 95% intervals.", "",
               significance_markdown(comparisons)]
    md += ["## All runs", "", runs_markdown(evals)]
    confusions = [e for e in evals if e.emo_confusion is not None]
    if confusions:
        md += ["## Emotion confusion matrices", ""]
        used: set[str] = set()
        for e in confusions:
            slug = _slug(e.run)
            while slug in used:  # two run names that differ only in characters a file name cannot hold
                slug += "_"
            used.add(slug)
            png = confusion_png(e.emo_confusion, emotion_labels, out / f"confusion_{slug}.png",  # type: ignore[arg-type]
                                title=f"{e.run}: emotion confusion (test)")
            md += [f"### {_md(e.run)}", "", f"![{_md(e.run)}]({png.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(md).rstrip() + "\n")
    return path


# --- from run folders --------------------------------------------------------------------------------
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
    evals = [load_evaluation(r) for r in runs]
    comparisons = comparisons_vs_baseline(runs, evals)
    return write_report(out, evals, title=title, comparisons=comparisons)
