"""Evaluation statistics (docs/design.md §7), pure NumPy/scikit-learn/statsmodels: chance levels, the
leakage score, bootstrap intervals over test clips and the Stuart–Maxwell test. The records that an
evaluation writes are in :mod:`emodis_ray.evaluation.records`.

Bootstrap intervals are percentile intervals over clips resampled with replacement. For the metrics of this
module (:func:`macro_f1`, :func:`accuracy`, and ``functools.partial`` of them) the resamples are scored in
vectorised blocks from per-resample confusion counts; any other ``metric_fn`` is called once per resample.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from emodis_ray.core.scores import accuracy, macro_f1
from emodis_ray.data.labels import EMOTIONS, majority_chance_f1

ALPHA_STUART_MAXWELL = 0.01  # the paper's significance level
_BLOCK = 128  # resamples scored at once by the vectorised bootstrap


# --- metrics ----------------------------------------------------------------------------------------
def majority_share(y: np.ndarray) -> float:
    """The share of the most frequent label (accuracy of always predicting it)."""
    y = np.asarray(y)
    if y.size == 0:
        return 0.0
    _, counts = np.unique(y, return_counts=True)
    return float(counts.max() / y.size)


def chance_levels(test_emotion: np.ndarray, test_speaker: np.ndarray,
                  num_emotions: int = len(EMOTIONS)) -> tuple[float, float]:
    """``(emotion macro-F1, identity accuracy)`` of always predicting the test set's majority class."""
    return majority_chance_f1(np.asarray(test_emotion), num_emotions), majority_share(test_speaker)


def above_chance(score: float, chance: float) -> float:
    """``(score - chance) / (1 - chance)`` floored at 0: 0 at chance (or below), 1 at a perfect score."""
    if chance >= 1.0:
        return 0.0
    return max(0.0, (score - chance) / (1.0 - chance))


@dataclass(frozen=True)
class Leakage:
    """The leakage score (lower is better) and its two directions, each rescaled above chance."""

    score: float  # mean of the two directions
    emo_from_spk: float  # emotion macro-F1 from the speaker embedding, rescaled
    spk_from_emo: float  # identity accuracy from the emotion embedding, rescaled


def leakage(emo_f1_from_spk: float, spk_acc_from_emo: float, chances: tuple[float, float]) -> Leakage:
    """Both directions of leakage and their mean; ``chances`` as returned by :func:`chance_levels`."""
    e = above_chance(emo_f1_from_spk, chances[0])
    s = above_chance(spk_acc_from_emo, chances[1])
    return Leakage(score=(e + s) / 2, emo_from_spk=e, spk_from_emo=s)


def leakage_score(emo_f1_from_spk: float, spk_acc_from_emo: float, chances: tuple[float, float]) -> float:
    """docs/design.md §7: the mean of the two probe scores, each rescaled above chance and floored at 0."""
    return leakage(emo_f1_from_spk, spk_acc_from_emo, chances).score


# --- vectorised scoring of resamples -------------------------------------------------------------------
def _macro_f1_rows(idx: np.ndarray, y: np.ndarray, yhat: np.ndarray, num_classes: int = len(EMOTIONS)) -> np.ndarray:
    """Macro-F1 of each resample; ``idx`` [B, N] clip indices. Same definition as :func:`macro_f1`."""
    b, k = idx.shape[0], num_classes
    y, yhat = np.asarray(y, dtype=np.int64), np.asarray(yhat, dtype=np.int64)
    ok = (y >= 0) & (y < k)
    # Labels or predictions outside 0..K-1 still count as errors; give them an extra "other" bin.
    yb, pb = np.where(ok, y, k)[idx], np.where((yhat >= 0) & (yhat < k), yhat, k)[idx]  # [B, N]
    k1 = k + 1
    flat = (np.arange(b)[:, None] * k1 * k1 + yb * k1 + pb).ravel()
    cm = np.bincount(flat, minlength=b * k1 * k1).reshape(b, k1, k1)  # [B, true, pred]
    tp = np.diagonal(cm, axis1=1, axis2=2)[:, :k]  # [B, K]
    denom = cm.sum(2)[:, :k] + cm.sum(1)[:, :k]  # true + predicted counts = 2tp + fp + fn
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)
    return f1.mean(1)


def _accuracy_rows(idx: np.ndarray, y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    correct = (np.asarray(y) == np.asarray(yhat)).astype(np.float64)
    return correct[idx].mean(1)


_ROWWISE: dict[Callable[..., float], Callable[..., np.ndarray]] = {macro_f1: _macro_f1_rows,
                                                                    accuracy: _accuracy_rows}


def _rowwise(metric_fn: Callable[..., float]) -> Callable[..., np.ndarray]:
    """Per-resample version of ``metric_fn`` taking (idx [B, N], *arrays): vectorised when known."""
    if metric_fn in _ROWWISE:
        return _ROWWISE[metric_fn]
    if isinstance(metric_fn, functools.partial) and metric_fn.func in _ROWWISE and not metric_fn.args:
        return functools.partial(_ROWWISE[metric_fn.func], **metric_fn.keywords)

    def loop(idx: np.ndarray, *arrays: np.ndarray) -> np.ndarray:
        return np.array([metric_fn(*(a[i] for a in arrays)) for i in idx], dtype=np.float64)

    return loop


def _clips(arrays: Sequence[np.ndarray]) -> int:
    """The number of clips: the one length shared by every array."""
    sizes = {len(a) for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"arrays must have one length (one entry per clip), got lengths {sorted(sizes)}")
    m = sizes.pop()
    if m == 0:
        raise ValueError("cannot bootstrap an empty set of clips")
    return m


def _resample_scores(rowwise: Callable[..., np.ndarray], arrays: Sequence[np.ndarray], n: int,
                     seed: int) -> np.ndarray:
    m = _clips(arrays)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(n, m))  # [n, N] one row of clip indices per resample
    return np.concatenate([rowwise(idx[i:i + _BLOCK], *arrays) for i in range(0, n, _BLOCK)])


def _interval(scores: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(scores, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(metric_fn: Callable[..., float], *arrays: np.ndarray, n: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(point, lo, hi)``: ``metric_fn(*arrays)`` and the ``1 - alpha`` percentile interval of it over ``n``
    resamples of the clips (the rows shared by every array), drawn with replacement from ``seed``."""
    arrays = tuple(np.asarray(a) for a in arrays)
    _clips(arrays)
    point = float(metric_fn(*arrays))
    scores = _resample_scores(_rowwise(metric_fn), arrays, n, seed)
    return (point, *_interval(scores, alpha))


def paired_bootstrap_diff(metric_fn: Callable[..., float], y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                          n: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """``(point, lo, hi)`` of ``metric_fn(y, pred_a) - metric_fn(y, pred_b)``, both models scored on the same
    resampled clips (a paired bootstrap): an interval excluding 0 means the models differ."""
    y, pred_a, pred_b = np.asarray(y), np.asarray(pred_a), np.asarray(pred_b)
    _clips((y, pred_a, pred_b))
    point = float(metric_fn(y, pred_a) - metric_fn(y, pred_b))
    rowwise = _rowwise(metric_fn)
    diff = lambda idx, y_, a_, b_: rowwise(idx, y_, a_) - rowwise(idx, y_, b_)
    scores = _resample_scores(diff, (y, pred_a, pred_b), n, seed)
    return (point, *_interval(scores, alpha))


# --- Stuart–Maxwell -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StuartMaxwell:
    """Stuart–Maxwell marginal homogeneity test of two models' predictions on the same clips."""

    statistic: float  # chi^2; NaN when the covariance of the margin differences is singular
    pvalue: float
    df: int
    singular: bool
    categories_used: tuple[int, ...]  # classes left after dropping those neither model predicted
    alpha: float = ALPHA_STUART_MAXWELL

    @property
    def reject(self) -> bool:
        """The marginal distributions differ at level ``alpha`` (never for a singular table)."""
        return not self.singular and self.pvalue < self.alpha

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(statistic=_num(self.statistic), pvalue=_num(self.pvalue),
                 categories_used=list(self.categories_used), reject=self.reject)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StuartMaxwell:
        nan = lambda v: math.nan if v is None else float(v)
        return cls(statistic=nan(d["statistic"]), pvalue=nan(d["pvalue"]), df=int(d["df"]),
                   singular=bool(d["singular"]), categories_used=tuple(int(c) for c in d["categories_used"]),
                   alpha=float(d.get("alpha", ALPHA_STUART_MAXWELL)))


def contingency(pred_a: np.ndarray, pred_b: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] counts: rows model A's prediction, columns model B's, over the same clips."""
    a, b = np.asarray(pred_a, dtype=np.int64), np.asarray(pred_b, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"the two prediction arrays differ in shape: {a.shape} vs {b.shape}")
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= num_classes):
        raise ValueError(f"predictions must lie in 0..{num_classes - 1}")
    return np.bincount(a * num_classes + b, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def stuart_maxwell(pred_a: np.ndarray, pred_b: np.ndarray, num_classes: int = len(EMOTIONS),
                   alpha: float = ALPHA_STUART_MAXWELL) -> StuartMaxwell:
    """statsmodels ``SquareTable(table, shift_zeros=False).homogeneity()`` on the contingency table of the two
    models' predictions, after dropping the classes empty in both margins. A singular covariance (e.g. two
    models that agree on every clip) gives ``singular=True`` and a NaN statistic, never a rejection."""
    from statsmodels.stats.contingency_tables import SquareTable

    table = contingency(pred_a, pred_b, num_classes)
    used = np.flatnonzero(table.sum(0) + table.sum(1) > 0)
    if used.size == 0:
        raise ValueError("no predictions to compare")
    sub = table[np.ix_(used, used)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels warns on a singular table; reported below instead
        res = SquareTable(sub, shift_zeros=False).homogeneity()
    stat, pvalue, df = float(res.statistic), float(res.pvalue), int(res.df)
    singular = not math.isfinite(stat) or (used.size > 1 and _singular_cov(sub))
    if singular:
        stat = pvalue = math.nan
    return StuartMaxwell(statistic=stat, pvalue=pvalue, df=df, singular=singular,
                         categories_used=tuple(int(c) for c in used), alpha=alpha)


def _singular_cov(table: np.ndarray) -> bool:
    """Whether statsmodels' Stuart–Maxwell covariance (last category dropped) is numerically singular:
    LU may not raise on a matrix that is singular only up to rounding."""
    pr = table.astype(np.float64) / table.sum()
    row, col, p = pr.sum(1)[:-1], pr.sum(0)[:-1], pr[:-1, :-1]
    vmat = -(p + p.T)
    np.fill_diagonal(vmat, row + col - 2 * np.diag(p))
    return int(np.linalg.matrix_rank(vmat)) < vmat.shape[0]


def _num(v: float | None) -> float | None:
    """A float for JSON: NaN and infinities become None (strict JSON has no NaN)."""
    return None if v is None or not math.isfinite(v) else float(v)
