"""The two scores every layer reports: emotion macro-F1 and identity accuracy (docs/design.md §7).

Defined once here, below everything that uses them: the epoch loop's validation, the probes and the
evaluation statistics.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

from emodis_ray.data.labels import EMOTIONS


def macro_f1(y: np.ndarray, yhat: np.ndarray, num_classes: int = len(EMOTIONS)) -> float:
    """Unweighted mean of the per-class F1 over all ``num_classes`` classes (absent classes count as 0)."""
    return float(f1_score(np.asarray(y), np.asarray(yhat), average="macro", labels=list(range(num_classes)),
                          zero_division=0))


def accuracy(y: np.ndarray, yhat: np.ndarray) -> float:
    """Top-1 accuracy (0 for no labels)."""
    y, yhat = np.asarray(y), np.asarray(yhat)
    if y.shape != yhat.shape:
        raise ValueError(f"labels {y.shape} and predictions {yhat.shape} differ in shape")
    return float(np.mean(y == yhat)) if y.size else 0.0
