"""Leakage above the identity-only floor (docs/design.md §7), per direction, pure NumPy/torch.

People have skewed emotion priors, so a representation that knows only *who* is speaking already predicts
emotion above majority-class chance. Leakage is therefore measured against what identity alone gives:

- **probe**: a one-hidden-layer MLP (:func:`~emodis_ray.evaluation.probe.train_probe`) trained on the train
  split's embeddings, early-stopped on rows of *train* held out for it (never on the split being scored),
  averaged over several probe seeds; its macro-F1 (or accuracy) and log-loss on the scored split;
- **shuffled floor**: the same probe trained and scored on embeddings permuted among the clips of one speaker
  within each split: identity and priors kept, the clip-level emotion destroyed;
- **prior floor**: the best identity-only predictor fitted on train, a map speaker -> emotion chosen for the
  score (exhaustively when the maps are few, else by coordinate ascent from the lift rule, each speaker's class
  of highest p(e | s) / p(e));
- **leakage above the floor**: ``max(0, (probe - floor) / (1 - floor))``.

For the other direction (identity from the emotion embedding) the roles swap: the floor is what knowing only
the emotion gives about identity. Directions are named ``emo_from_spk`` (the paper's spk2emo) and
``spk_from_emo`` (emo2spk).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from emodis_ray.core.scores import accuracy, macro_f1
from emodis_ray.data.labels import majority_chance_f1
from emodis_ray.evaluation.probe import ProbeMetric, train_probe
from emodis_ray.evaluation.stats import _accuracy_rows, _interval, _macro_f1_rows, majority_share

Direction = Literal["emo_from_spk", "spk_from_emo"]
FloorKind = Literal["shuffled", "prior"]
METHOD_DIRECTIONS: dict[str, tuple[Direction, ...]] = {  # method.direction -> the directions it targets
    "spk2emo": ("emo_from_spk",), "emo2spk": ("spk_from_emo",), "both": ("emo_from_spk", "spk_from_emo")}
EXHAUSTIVE_MAPS = 20_000  # search every group -> class map up to this many; coordinate ascent beyond
BOOT_SEED = 0  # the clips' bootstrap resamples (the same for both directions)


# --- the identity-only floors -------------------------------------------------------------------------------


def shuffle_within(groups: np.ndarray, seed: int | np.random.Generator) -> np.ndarray:
    """A permutation of ``range(len(groups))`` that moves each row only among the rows of its own group."""
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    perm = np.arange(len(groups))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        perm[idx] = idx[rng.permutation(len(idx))]
    return perm


def _score(metric: ProbeMetric, y: np.ndarray, yhat: np.ndarray, num_classes: int) -> float:
    return macro_f1(y, yhat, num_classes) if metric == "f1" else accuracy(y, yhat)


def map_scores(counts: np.ndarray, maps: np.ndarray, metric: ProbeMetric = "f1") -> np.ndarray:
    """The score of each group -> class map in ``maps`` [M, G] on the clips counted in ``counts`` [G, K] (clips
    of group g and class k), every clip of a group given its group's class: macro-F1 over all K classes (a class
    neither present nor predicted counts 0, as in :func:`~emodis_ray.core.scores.macro_f1`) or accuracy. Exact,
    from the counts alone, so thousands of maps cost what one call of sklearn's scorer does."""
    counts, maps = np.asarray(counts, np.float64), np.atleast_2d(np.asarray(maps, np.int64))
    k = counts.shape[1]
    tp = np.zeros((len(maps), k))  # [M, K] clips of class c given c
    pred = np.zeros((len(maps), k))  # [M, K] clips given c
    for g in range(counts.shape[0]):
        given = maps[:, g, None] == np.arange(k)  # [M, K]
        tp += given * counts[g]
        pred += given * counts[g].sum()
    if metric == "acc":
        return tp.sum(1) / max(1.0, counts.sum())
    denom = pred + counts.sum(0)  # [M, K] predicted + true
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(1)


def prior_map(groups: np.ndarray, labels: np.ndarray, num_classes: int, metric: ProbeMetric = "f1") -> dict[int, int]:
    """The map group -> class that scores best on (``groups``, ``labels``) when every clip of a group is given
    its group's class. For accuracy that is each group's majority; for macro-F1 every map is tried when there
    are at most :data:`EXHAUSTIVE_MAPS` (the first best in ``itertools.product`` order), else coordinate ascent
    starts from the lift rule (argmax p(c | g) / p(c)) and changes one group at a time while the score rises."""
    groups, labels = np.asarray(groups), np.asarray(labels, dtype=np.int64)
    keys = np.unique(groups)
    counts = np.stack([np.bincount(labels[groups == g], minlength=num_classes) for g in keys])  # [G, K]
    if metric == "acc":
        return {int(g): int(c) for g, c in zip(keys, counts.argmax(1), strict=True)}

    def score(assign: Sequence[int]) -> float:
        return float(map_scores(counts, np.asarray([assign]))[0])

    if num_classes ** len(keys) <= EXHAUSTIVE_MAPS:
        maps = np.asarray(list(itertools.product(range(num_classes), repeat=len(keys))), np.int64)  # [M, G]
        best = maps[int(np.argmax(np.round(map_scores(counts, maps), 12)))]  # rounded: ties go to the first
        return {int(g): int(c) for g, c in zip(keys, best, strict=True)}
    p_class = counts.sum(0) / counts.sum()
    lift = (counts / counts.sum(1, keepdims=True)) / np.where(p_class > 0, p_class, 1.0)
    assign, current = list(lift.argmax(1)), -1.0
    current = score(assign)
    improved = True
    while improved:
        improved = False
        for i in range(len(keys)):
            for c in range(num_classes):
                if c == assign[i]:
                    continue
                trial = assign.copy()
                trial[i] = c
                s = score(trial)
                if s > current + 1e-12:
                    assign, current, improved = trial, s, True
    return {int(g): int(c) for g, c in zip(keys, assign, strict=True)}


def apply_map(mapping: Mapping[int, int], groups: np.ndarray, default: int) -> np.ndarray:
    """Each clip's class under ``mapping`` (``default`` for a group it does not know)."""
    return np.asarray([mapping.get(int(g), default) for g in np.asarray(groups)], dtype=np.int64)


def above_floor(score: float | np.ndarray, floor: float | np.ndarray) -> Any:
    """``max(0, (score - floor) / (1 - floor))``: 0 at (or below) the floor, 1 at a perfect score."""
    score, floor = np.asarray(score, dtype=np.float64), np.asarray(floor, dtype=np.float64)
    out = np.maximum(0.0, np.divide(score - floor, 1.0 - floor, out=np.zeros(np.broadcast(score, floor).shape),
                                    where=floor < 1.0))
    return float(out) if out.ndim == 0 else out


# --- one direction ------------------------------------------------------------------------------------------


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit rows, held-out rows)`` of ``n`` train rows: the probe's early-stopping rows come from train."""
    if n < 2:
        raise ValueError(f"a probe needs at least 2 training clips (one to fit, one to early-stop on), got {n}")
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    k = min(n - 1, max(1, round(fraction * n)))
    return np.sort(perm[k:]), np.sort(perm[:k])


def _log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0))))


@dataclass
class DirectionLeakage:
    """One direction on one scored split. Scores are fractions; ``*_seeds`` hold one value per probe seed."""

    direction: str
    metric: str  # "f1" (macro-F1) or "acc"
    n_scored: int
    chance: float  # majority class of the scored split
    probe: float  # mean over probe seeds
    probe_logloss: float
    floor_shuffled: float
    floor_shuffled_logloss: float
    floor_prior: float
    floor_kind: str  # which floor ``above_floor`` uses
    above_floor: float
    above_floor_ci: tuple[float, float] | None = None
    probe_ci: tuple[float, float] | None = None
    probe_seeds: list[float] = field(default_factory=list)
    floor_shuffled_seeds: list[float] = field(default_factory=list)
    holdout_rows: int = 0
    # per scored clip, for intervals and comparisons (not serialised)
    probe_pred: list[np.ndarray] = field(default_factory=list, repr=False)
    shuffled_pred: list[np.ndarray] = field(default_factory=list, repr=False)
    prior_pred: np.ndarray | None = field(default=None, repr=False)
    boot_above: np.ndarray | None = field(default=None, repr=False)  # [n_boot] above-floor leakage per resample

    @property
    def floor(self) -> float:
        return self.floor_shuffled if self.floor_kind == "shuffled" else self.floor_prior

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("probe_pred", "shuffled_pred", "prior_pred", "boot_above"):
            d.pop(k)
        d["floor"] = self.floor
        d["above_floor_ci"] = list(self.above_floor_ci) if self.above_floor_ci else None
        d["probe_ci"] = list(self.probe_ci) if self.probe_ci else None
        return d


def measure_direction(direction: str, x_train: np.ndarray, y_train: np.ndarray, g_train: np.ndarray,
                      x_scored: np.ndarray, y_scored: np.ndarray, g_scored: np.ndarray, num_classes: int,
                      metric: ProbeMetric, seeds: Sequence[int] = (0, 1, 2), floor_kind: FloorKind = "shuffled",
                      holdout_fraction: float = 0.2, n_boot: int = 1000, alpha: float = 0.05,
                      stop_on: str = "logloss", **probe_kwargs: Any) -> DirectionLeakage:
    """Probe ``y`` from the embeddings ``x`` on the scored split, beside the floors of what the group ``g``
    alone gives (``g`` is the speaker for emotion-from-speaker, the emotion for identity-from-emotion).

    Per probe seed: the train rows are split into fit and held-out rows (early stopping on their cross-entropy
    by default, ``stop_on``: on ~80 held-out rows a macro-F1 stops early and at random), the probe is trained
    on the real embeddings and, for the shuffled floor, on embeddings permuted within groups (train and scored
    splits each permuted within themselves). The bootstrap interval of the leakage above the floor resamples the
    scored clips, each resample scored with every seed's predictions."""
    x_train, x_scored = np.asarray(x_train, np.float32), np.asarray(x_scored, np.float32)
    y_train, y_scored = np.asarray(y_train, np.int64), np.asarray(y_scored, np.int64)
    g_train, g_scored = np.asarray(g_train), np.asarray(g_scored)
    if not seeds:
        raise ValueError("at least one probe seed is needed")
    # per kind (the probe on the real embeddings, and on embeddings shuffled within groups): scores, log-losses,
    # per-clip predictions, one entry per seed
    runs: dict[bool, tuple[list[float], list[float], list[np.ndarray]]] = {False: ([], [], []), True: ([], [], [])}
    holdout_rows = 0
    for seed in seeds:
        fit, hold = holdout_split(len(y_train), holdout_fraction, seed)
        holdout_rows = len(hold)
        for shuffled in (False, True):
            xt, xs = x_train, x_scored
            if shuffled:
                xt = x_train[shuffle_within(g_train, [seed, 1])]
                xs = x_scored[shuffle_within(g_scored, [seed, 2])]
            probe = train_probe(xt[fit], y_train[fit], xt[hold], y_train[hold], num_classes, seed=seed,
                                metric=metric, stop_on=stop_on, **probe_kwargs)
            proba = probe.predict_proba(xs)
            pred = proba.argmax(1).astype(np.int64)
            scores, losses, preds = runs[shuffled]
            scores.append(_score(metric, y_scored, pred, num_classes))
            losses.append(_log_loss(proba, y_scored))
            preds.append(pred)
    (probe_scores, probe_losses, probe_pred), (shuf_scores, shuf_losses, shuffled_pred) = runs[False], runs[True]
    mapping = prior_map(g_train, y_train, num_classes, metric)
    default = int(np.bincount(y_train, minlength=num_classes).argmax())
    prior_pred = apply_map(mapping, g_scored, default)
    chance = (majority_chance_f1(y_scored, num_classes) if metric == "f1" else majority_share(y_scored)) \
        if len(y_scored) else float("nan")
    out = DirectionLeakage(
        direction=direction, metric=metric, n_scored=len(y_scored), chance=float(chance),
        probe=float(np.mean(probe_scores)), probe_logloss=float(np.mean(probe_losses)),
        floor_shuffled=float(np.mean(shuf_scores)), floor_shuffled_logloss=float(np.mean(shuf_losses)),
        floor_prior=_score(metric, y_scored, prior_pred, num_classes), floor_kind=floor_kind, above_floor=0.0,
        probe_seeds=[float(s) for s in probe_scores], floor_shuffled_seeds=[float(s) for s in shuf_scores],
        holdout_rows=holdout_rows, probe_pred=probe_pred, shuffled_pred=shuffled_pred, prior_pred=prior_pred)
    out.above_floor = above_floor(out.probe, out.floor)
    if n_boot and len(y_scored):
        probe_rows, out.boot_above = _resampled(out, y_scored, num_classes, n_boot, seed=BOOT_SEED)
        out.probe_ci, out.above_floor_ci = _interval(probe_rows, alpha), _interval(out.boot_above, alpha)
    return out


def _resampled(d: DirectionLeakage, y: np.ndarray, num_classes: int, n: int, seed: int) -> tuple[np.ndarray, ...]:
    """The probe score (mean over seeds) and the leakage above the floor on ``n`` bootstrap resamples of the
    scored clips ([n] each). The resamples depend only on ``seed`` and the number of clips, so both
    directions of one model are resampled alike and their per-resample values can be averaged."""
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n, len(y)))

    def rows(pred: np.ndarray) -> np.ndarray:
        return _macro_f1_rows(idx, y, pred, num_classes) if d.metric == "f1" else _accuracy_rows(idx, y, pred)

    probe = np.mean([rows(p) for p in d.probe_pred], axis=0)
    if d.floor_kind == "shuffled":
        floor = np.mean([rows(p) for p in d.shuffled_pred], axis=0)
    else:
        floor = rows(d.prior_pred)  # type: ignore[arg-type]
    return probe, above_floor(probe, floor)


# --- both directions of one model ---------------------------------------------------------------------------


@dataclass
class LeakageReport:
    """Both directions of one model on one scored split, and the headline of the directions a method targets."""

    scored: str  # "val" or "test"
    directions: dict[str, DirectionLeakage]
    targets: tuple[str, ...]  # the directions the method attacks (``method.direction``)

    @property
    def headline(self) -> float:
        """Leakage above the floor, averaged over the targeted directions (lower is better)."""
        return float(np.mean([self.directions[t].above_floor for t in self.targets]))

    def headline_ci(self, alpha: float = 0.05) -> tuple[float, float] | None:
        """The bootstrap interval of :attr:`headline` (the targeted directions averaged per resample)."""
        boots = [self.directions[t].boot_above for t in self.targets]
        if any(b is None for b in boots):
            return None
        return _interval(np.mean(boots, axis=0), alpha)

    @property
    def mean_both(self) -> float:
        """The two-direction mean (secondary)."""
        return float(np.mean([d.above_floor for d in self.directions.values()]))

    def to_dict(self) -> dict[str, Any]:
        ci = self.headline_ci()
        return {"scored": self.scored, "targets": list(self.targets), "headline": self.headline,
                "headline_ci": list(ci) if ci else None, "mean_both": self.mean_both,
                "directions": {k: v.to_dict() for k, v in self.directions.items()}}


def save_predictions(report: LeakageReport, labels: Mapping[str, np.ndarray], path: Any) -> None:
    """Every scored clip's predictions of the measure (``.npz``): per direction its labels, each probe seed's
    and each shuffled-floor probe's predictions and the prior floor's, so that a study can resample clips and
    seeds later (:mod:`emodis_ray.evaluation.study`). ``labels``: ``{"emotion": [N], "speaker": [N]}``."""
    arrays: dict[str, np.ndarray] = {}
    for name, d in report.directions.items():
        y = labels["emotion"] if name == "emo_from_spk" else labels["speaker"]
        arrays |= {f"{name}.y": np.asarray(y), f"{name}.probe": np.stack(d.probe_pred),
                   f"{name}.shuffled": np.stack(d.shuffled_pred), f"{name}.prior": np.asarray(d.prior_pred)}
    np.savez_compressed(path, **arrays)


def measure_leakage(emb: Mapping[str, Mapping[str, np.ndarray]], scored: str = "test",
                    method_direction: str = "spk2emo", seeds: Sequence[int] = (0, 1, 2),
                    floor_kind: FloorKind = "shuffled", num_emotions: int = 5, num_speakers: int | None = None,
                    n_boot: int = 1000, **probe_kwargs: Any) -> LeakageReport:
    """Both directions for the embeddings of one model: ``emb[split]`` holds ``emo_emb`` [N, D_emo], ``spk_emb``
    [N, D_spk], ``emotion`` [N] and ``speaker`` [N]. Probes train on ``emb["train"]`` (early-stopped on held-out
    train rows) and are scored on ``emb[scored]``; nothing of the scored split reaches training."""
    if method_direction not in METHOD_DIRECTIONS:
        raise ValueError(f"method direction must be one of {list(METHOD_DIRECTIONS)}, got {method_direction!r}")
    train, test = emb["train"], emb[scored]
    if num_speakers is None:
        num_speakers = int(max(np.max(train["speaker"]), np.max(test["speaker"], initial=0))) + 1
    common = {"seeds": seeds, "floor_kind": floor_kind, "n_boot": n_boot, **probe_kwargs}
    emo = measure_direction("emo_from_spk", train["spk_emb"], train["emotion"], train["speaker"], test["spk_emb"],
                            test["emotion"], test["speaker"], num_emotions, "f1", **common)
    spk = measure_direction("spk_from_emo", train["emo_emb"], train["speaker"], train["emotion"], test["emo_emb"],
                            test["speaker"], test["emotion"], num_speakers, "acc", **common)
    return LeakageReport(scored=scored, directions={"emo_from_spk": emo, "spk_from_emo": spk},
                         targets=METHOD_DIRECTIONS[method_direction])
