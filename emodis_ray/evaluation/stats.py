"""Evaluation statistics (DESIGN §7), pure NumPy/scikit-learn/statsmodels: metrics, chance levels, the
leakage score, bootstrap intervals over test clips, the Stuart–Maxwell test, and the records that the
evaluation writes (:class:`Evaluation`, :class:`Comparison`).

Bootstrap intervals are percentile intervals over clips resampled with replacement. For the metrics of this
module (:func:`macro_f1`, :func:`accuracy`, and ``functools.partial`` of them) the resamples are scored in
vectorised blocks from per-resample confusion counts; any other ``metric_fn`` is called once per resample.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from emodis_ray.data.labels import EMOTIONS, majority_chance_f1

ALPHA_STUART_MAXWELL = 0.01  # the paper's significance level
_BLOCK = 128  # resamples scored at once by the vectorised bootstrap


# --- metrics ----------------------------------------------------------------------------------------
def macro_f1(y: np.ndarray, yhat: np.ndarray, num_classes: int = len(EMOTIONS)) -> float:
    """Unweighted mean of the per-class F1 over all ``num_classes`` classes (absent classes count as 0)."""
    return float(f1_score(np.asarray(y), np.asarray(yhat), average="macro", labels=list(range(num_classes)),
                          zero_division=0))


def accuracy(y: np.ndarray, yhat: np.ndarray) -> float:
    y, yhat = np.asarray(y), np.asarray(yhat)
    if y.shape != yhat.shape:
        raise ValueError(f"labels {y.shape} and predictions {yhat.shape} differ in shape")
    return float(np.mean(y == yhat)) if y.size else 0.0


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
    """DESIGN §7: the mean of the two probe scores, each rescaled above chance and floored at 0."""
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


def _leakage_rows(idx: np.ndarray, emotion: np.ndarray, emo_pred: np.ndarray, speaker: np.ndarray,
                  spk_pred: np.ndarray, num_emotions: int) -> np.ndarray:
    """Leakage score of each resample, with the chance levels recomputed from the resample's own priors."""
    f1 = _macro_f1_rows(idx, emotion, emo_pred, num_emotions)
    acc = _accuracy_rows(idx, speaker, spk_pred)
    e_shares = _max_share_rows(idx, emotion)
    chance_f1 = 2 * e_shares / (1 + e_shares) / num_emotions
    chance_acc = _max_share_rows(idx, speaker)
    resc = lambda s, c: np.maximum(0.0, np.divide(s - c, 1 - c, out=np.zeros_like(s), where=c < 1))
    return (resc(f1, chance_f1) + resc(acc, chance_acc)) / 2


def _max_share_rows(idx: np.ndarray, y: np.ndarray) -> np.ndarray:
    _, codes = np.unique(np.asarray(y), return_inverse=True)
    k = int(codes.max()) + 1
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * k + codes.reshape(-1)[idx]).ravel()
    counts = np.bincount(flat, minlength=b * k).reshape(b, k)
    return counts.max(1) / idx.shape[1]


def leakage_ci(emotion: np.ndarray, emo_from_spk_pred: np.ndarray, speaker: np.ndarray,
               spk_from_emo_pred: np.ndarray, num_emotions: int = len(EMOTIONS), n: int = 1000,
               alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Bootstrap ``(point, lo, hi)`` of the leakage score from the two probes' test predictions; chance levels
    are those of the test set (point) or of each resample (interval)."""
    arrays = tuple(np.asarray(a) for a in (emotion, emo_from_spk_pred, speaker, spk_from_emo_pred))
    _clips(arrays)
    chances = chance_levels(arrays[0], arrays[2], num_emotions)
    point = leakage_score(macro_f1(arrays[0], arrays[1], num_emotions), accuracy(arrays[2], arrays[3]), chances)
    rowwise = functools.partial(_leakage_rows, num_emotions=num_emotions)
    return (point, *_interval(_resample_scores(rowwise, arrays, n, seed), alpha))


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


# --- records ---------------------------------------------------------------------------------------------
def _num(v: float | None) -> float | None:
    """A float for JSON: NaN and infinities become None (strict JSON has no NaN)."""
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval (``lo``/``hi`` None when not computed)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    @classmethod
    def of(cls, triple: tuple[float, float, float]) -> Estimate:
        return cls(*(float(t) for t in triple))

    def to_dict(self) -> dict[str, float | None]:
        return {"value": _num(self.value), "lo": _num(self.lo), "hi": _num(self.hi)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | float) -> Estimate:
        if isinstance(d, (int, float)):
            return cls(float(d))
        f = lambda v: None if v is None else float(v)
        return cls(math.nan if d["value"] is None else float(d["value"]), f(d.get("lo")), f(d.get("hi")))

    def fmt(self, percent: bool = True, digits: int = 1) -> str:
        """``"61.2 [58.0, 64.1]"`` (percent) or ``"0.612 [0.580, 0.641]"``."""
        if not math.isfinite(self.value):
            return "n/a"
        scale, d = (100.0, digits) if percent else (1.0, digits + 2)
        s = f"{self.value * scale:.{d}f}"
        if self.lo is not None and self.hi is not None:
            s += f" [{self.lo * scale:.{d}f}, {self.hi * scale:.{d}f}]"
        return s


SCHEMA_VERSION = 1
_ESTIMATES = ("emo_f1", "spk_acc", "probe_emo_from_spk_f1", "probe_spk_from_emo_acc", "leakage")


@dataclass(frozen=True)
class Evaluation:
    """What one evaluated run reports (``evaluation.json``). All scores are on the test split, as fractions.

    ``emo_f1``/``spk_acc`` come from the primary heads (None where the method does not train that head:
    ``stl-speaker`` has no emotion head, ``stl-emotion`` no identity head). The probes are trained on the
    frozen embeddings (DESIGN §7). ``aux_emo_f1``/``aux_spk_acc`` are the model's own auxiliary heads on the
    test split (the online leakage estimate). ``emo_confusion`` is the primary emotion head's [K, K] confusion
    counts (rows truth, columns prediction).
    """

    run: str
    method: str
    spk_dim: int
    n_test: int
    emo_f1: Estimate | None
    spk_acc: Estimate | None
    probe_emo_from_spk_f1: Estimate
    probe_spk_from_emo_acc: Estimate
    chance_emo_f1: float
    chance_spk_acc: float
    leakage: Estimate
    leakage_emo_from_spk: float
    leakage_spk_from_emo: float
    aux_emo_f1: float | None = None
    aux_spk_acc: float | None = None
    emo_confusion: list[list[int]] | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in _ESTIMATES:
            v = getattr(self, k)
            d[k] = None if v is None else v.to_dict()
        for k in ("chance_emo_f1", "chance_spk_acc", "leakage_emo_from_spk", "leakage_spk_from_emo",
                  "aux_emo_f1", "aux_spk_acc"):
            d[k] = _num(d[k])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evaluation:
        d = dict(d)
        if d.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(f"evaluation schema version {d['schema_version']} (this code reads {SCHEMA_VERSION})")
        for k in _ESTIMATES:
            if d.get(k) is not None:
                d[k] = Estimate.from_dict(d[k])
        nan = lambda v: math.nan if v is None else float(v)
        for k in ("chance_emo_f1", "chance_spk_acc", "leakage_emo_from_spk", "leakage_spk_from_emo"):
            d[k] = nan(d[k])
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown evaluation fields: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> Evaluation:
        return cls.from_dict(json.loads(text))


def build_evaluation(run: str, method: str, spk_dim: int, emotion: np.ndarray, speaker: np.ndarray,
                     emo_pred: np.ndarray | None, spk_pred: np.ndarray | None, probe_emo_from_spk_pred: np.ndarray,
                     probe_spk_from_emo_pred: np.ndarray, aux_emo_pred: np.ndarray | None = None,
                     aux_spk_pred: np.ndarray | None = None, num_emotions: int = len(EMOTIONS), n_boot: int = 1000,
                     alpha: float = 0.05, seed: int = 0, extra: Mapping[str, Any] | None = None) -> Evaluation:
    """Every headline figure of one run with its bootstrap interval, from per-clip test arrays: labels
    (``emotion``, ``speaker``), primary-head predictions (None for a head the method does not train),
    the two probes' predictions and, optionally, the aux heads' predictions."""
    emotion, speaker = np.asarray(emotion), np.asarray(speaker)
    f1 = functools.partial(macro_f1, num_classes=num_emotions)
    boot = dict(n=n_boot, alpha=alpha, seed=seed)
    chances = chance_levels(emotion, speaker, num_emotions)
    p_f1 = Estimate.of(bootstrap_ci(f1, emotion, probe_emo_from_spk_pred, **boot))
    p_acc = Estimate.of(bootstrap_ci(accuracy, speaker, probe_spk_from_emo_pred, **boot))
    leak = leakage(p_f1.value, p_acc.value, chances)
    cm = contingency(emotion, emo_pred, num_emotions).tolist() if emo_pred is not None else None
    return Evaluation(
        run=run, method=method, spk_dim=int(spk_dim), n_test=int(emotion.size),
        emo_f1=None if emo_pred is None else Estimate.of(bootstrap_ci(f1, emotion, emo_pred, **boot)),
        spk_acc=None if spk_pred is None else Estimate.of(bootstrap_ci(accuracy, speaker, spk_pred, **boot)),
        probe_emo_from_spk_f1=p_f1, probe_spk_from_emo_acc=p_acc,
        chance_emo_f1=chances[0], chance_spk_acc=chances[1],
        leakage=Estimate.of(leakage_ci(emotion, probe_emo_from_spk_pred, speaker, probe_spk_from_emo_pred,
                                       num_emotions, **boot)),
        leakage_emo_from_spk=leak.emo_from_spk, leakage_spk_from_emo=leak.spk_from_emo,
        aux_emo_f1=None if aux_emo_pred is None else macro_f1(emotion, aux_emo_pred, num_emotions),
        aux_spk_acc=None if aux_spk_pred is None else accuracy(speaker, aux_spk_pred),
        emo_confusion=cm, seed=seed, extra=dict(extra or {}),
    )


@dataclass(frozen=True)
class Comparison:
    """Model A vs model B on the same test clips (``compare.json``): Stuart–Maxwell on the emotion
    predictions and paired-bootstrap differences (A − B) of the headline figures."""

    run_a: str
    run_b: str
    method_a: str
    method_b: str
    spk_dim_a: int
    spk_dim_b: int
    stuart_maxwell: StuartMaxwell
    diffs: dict[str, Estimate]  # e.g. "emo_f1", "spk_acc", "probe_emo_from_spk_f1"

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("run_a", "run_b", "method_a", "method_b", "spk_dim_a", "spk_dim_b")}
        d["stuart_maxwell"] = self.stuart_maxwell.to_dict()
        d["diffs"] = {k: v.to_dict() for k, v in self.diffs.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        return cls(run_a=d["run_a"], run_b=d["run_b"], method_a=d["method_a"], method_b=d["method_b"],
                   spk_dim_a=int(d["spk_dim_a"]), spk_dim_b=int(d["spk_dim_b"]),
                   stuart_maxwell=StuartMaxwell.from_dict(d["stuart_maxwell"]),
                   diffs={k: Estimate.from_dict(v) for k, v in d["diffs"].items()})

    @classmethod
    def from_json(cls, text: str) -> Comparison:
        return cls.from_dict(json.loads(text))


def compare(a: Evaluation, b: Evaluation, emotion: np.ndarray, emo_pred_a: np.ndarray, emo_pred_b: np.ndarray,
            speaker: np.ndarray | None = None, spk_pred_a: np.ndarray | None = None,
            spk_pred_b: np.ndarray | None = None, num_emotions: int = len(EMOTIONS), n_boot: int = 1000,
            alpha: float = 0.05, seed: int = 0) -> Comparison:
    """Stuart–Maxwell (α = 0.01) on the two models' emotion predictions, and paired-bootstrap intervals of the
    differences A − B in emotion macro-F1 (and identity accuracy when the speaker arrays are given)."""
    f1 = functools.partial(macro_f1, num_classes=num_emotions)
    boot = dict(n=n_boot, alpha=alpha, seed=seed)
    diffs = {"emo_f1": Estimate.of(paired_bootstrap_diff(f1, emotion, emo_pred_a, emo_pred_b, **boot))}
    if speaker is not None and spk_pred_a is not None and spk_pred_b is not None:
        diffs["spk_acc"] = Estimate.of(paired_bootstrap_diff(accuracy, speaker, spk_pred_a, spk_pred_b, **boot))
    return Comparison(run_a=a.run, run_b=b.run, method_a=a.method, method_b=b.method, spk_dim_a=a.spk_dim,
                      spk_dim_b=b.spk_dim, stuart_maxwell=stuart_maxwell(emo_pred_a, emo_pred_b, num_emotions),
                      diffs=diffs)
