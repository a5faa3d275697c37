"""The serialisable records of an evaluation (docs/design.md §7): :class:`Estimate` (a value with its
bootstrap interval), :class:`Evaluation` (one run's test figures, written as ``evaluation.json``) and
:class:`Comparison` (two runs on the same test clips). Plain data: JSON in and out, NaN as null. The
files an evaluation leaves in a run folder are written and read here.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emodis_ray.core.scores import accuracy, macro_f1
from emodis_ray.data.labels import EMOTIONS
from emodis_ray.evaluation.stats import (
    StuartMaxwell,
    _num,
    bootstrap_ci,
    contingency,
    paired_bootstrap_diff,
    stuart_maxwell,
)

EVALUATION_FILE = "evaluation.json"
PREDICTIONS_FILE = "predictions.parquet"
LEAKAGE_PREDICTIONS_FILE = "leakage_predictions.npz"  # every probe seed's per-clip predictions, for studies


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


SCHEMA_VERSION = 2  # 2: leakage above the identity-only floor (1: above majority chance, not read any more)
_ESTIMATES = ("emo_f1", "spk_acc", "probe_emo_from_spk_f1", "probe_spk_from_emo_acc", "leakage")


@dataclass(frozen=True)
class Evaluation:
    """What one evaluated run reports (``evaluation.json``). All scores are on the test split, as fractions.

    ``emo_f1``/``spk_acc`` come from the primary heads (None where the method does not train that head:
    ``stl-speaker`` has no emotion head, ``stl-emotion`` no identity head). The probes are trained on the
    frozen embeddings (docs/design.md §7), their scores the mean over probe seeds. ``leakage`` is the
    leakage above the identity-only floor of the directions the method targets (``leakage_targets``);
    ``leakage_emo_from_spk``/``leakage_spk_from_emo`` each direction's; ``leakage_detail`` every figure of
    the measure (probe, log-loss, chance, both floors, per seed). ``aux_emo_f1``/``aux_spk_acc`` are the
    model's own auxiliary heads on the test split (the online leakage estimate). ``emo_confusion`` is the
    primary emotion head's [K, K] confusion counts (rows truth, columns prediction).
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
    leakage_targets: list[str] = field(default_factory=lambda: ["emo_from_spk"])
    leakage_detail: dict[str, Any] = field(default_factory=dict)
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
            raise ValueError(f"evaluation schema version {d.get('schema_version')} (this code reads {SCHEMA_VERSION}): "
                             f"evaluate the run again with `emodis evaluate`")
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
                     emo_pred: np.ndarray | None, spk_pred: np.ndarray | None, leak: Mapping[str, Any],
                     aux_emo_pred: np.ndarray | None = None, aux_spk_pred: np.ndarray | None = None,
                     num_emotions: int = len(EMOTIONS), n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                     extra: Mapping[str, Any] | None = None) -> Evaluation:
    """Every headline figure of one run with its bootstrap interval, from per-clip test arrays: labels
    (``emotion``, ``speaker``), primary-head predictions (None for a head the method does not train) and,
    optionally, the aux heads' predictions; ``leak`` is the leakage measure on the same clips
    (:meth:`~emodis_ray.evaluation.leakage.LeakageReport.to_dict`)."""
    emotion, speaker = np.asarray(emotion), np.asarray(speaker)
    f1 = functools.partial(macro_f1, num_classes=num_emotions)
    boot = dict(n=n_boot, alpha=alpha, seed=seed)
    d_emo, d_spk = leak["directions"]["emo_from_spk"], leak["directions"]["spk_from_emo"]
    cm = contingency(emotion, emo_pred, num_emotions).tolist() if emo_pred is not None else None
    return Evaluation(
        run=run, method=method, spk_dim=int(spk_dim), n_test=int(emotion.size),
        emo_f1=None if emo_pred is None else Estimate.of(bootstrap_ci(f1, emotion, emo_pred, **boot)),
        spk_acc=None if spk_pred is None else Estimate.of(bootstrap_ci(accuracy, speaker, spk_pred, **boot)),
        probe_emo_from_spk_f1=_estimate(d_emo["probe"], d_emo.get("probe_ci")),
        probe_spk_from_emo_acc=_estimate(d_spk["probe"], d_spk.get("probe_ci")),
        chance_emo_f1=float(d_emo["chance"]), chance_spk_acc=float(d_spk["chance"]),
        leakage=_estimate(leak["headline"], leak.get("headline_ci")),
        leakage_emo_from_spk=float(d_emo["above_floor"]), leakage_spk_from_emo=float(d_spk["above_floor"]),
        leakage_targets=list(leak["targets"]), leakage_detail=dict(leak),
        aux_emo_f1=None if aux_emo_pred is None else macro_f1(emotion, aux_emo_pred, num_emotions),
        aux_spk_acc=None if aux_spk_pred is None else accuracy(speaker, aux_spk_pred),
        emo_confusion=cm, seed=seed, extra=dict(extra or {}),
    )


def _estimate(value: float, ci: Sequence[float] | None) -> Estimate:
    return Estimate(float(value), *(float(c) for c in ci)) if ci else Estimate(float(value))


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


# --- in a run folder -----------------------------------------------------------------------------------
def write_predictions(path: Path, test: dict[str, np.ndarray], probe_emo_from_spk: np.ndarray,
                      probe_spk_from_emo: np.ndarray) -> None:
    """``predictions.parquet``: per test clip, truth and every prediction (the probes': their first seed's)."""
    df = pd.DataFrame({
        "clip_id": test["clip_id"].astype(str), "emotion": test["emotion"], "speaker": test["speaker"],
        "emo_pred": test["emo_pred"], "spk_pred": test["spk_pred"], "aux_emo_pred": test["aux_emo_pred"],
        "aux_spk_pred": test["aux_spk_pred"], "probe_emo_from_spk": probe_emo_from_spk,
        "probe_spk_from_emo": probe_spk_from_emo,
    })
    df.to_parquet(path, index=False)


def load_evaluation(run: Path) -> Evaluation:
    """The evaluation `emodis evaluate` wrote into a run folder."""
    f = run / EVALUATION_FILE
    if not f.exists():
        raise FileNotFoundError(f"{run}: not evaluated yet (no evaluation.json); run `emodis evaluate {run}`")
    return Evaluation.from_json(f.read_text())


def load_predictions(run: Path) -> pd.DataFrame:
    """Per test clip: truth, each head's and each probe's prediction."""
    return pd.read_parquet(run / PREDICTIONS_FILE)
