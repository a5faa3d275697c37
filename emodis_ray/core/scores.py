"""The scores every layer reports: emotion macro-F1, identity accuracy, and the cross-entropy of the
identity-only prior (docs/design.md §7).

Defined once here, below everything that uses them: the epoch loop's validation, the trainer's re-encoding
signal, the probes and the evaluation statistics.
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


def prior_cross_entropy(train_groups: np.ndarray, train_labels: np.ndarray, groups: np.ndarray, labels: np.ndarray,
                        num_classes: int, smoothing: float = 1.0) -> float:
    """Mean cross-entropy of predicting each clip's label with its group's train distribution p(label | group)
    (add-``smoothing`` counts): what an aux head that knows only the group reaches. An aux head trained on the
    embedding that ends *above* it is not just failing to read the label: it is being pushed away from it (the
    signature of re-encoding, docs/design.md §9)."""
    train_groups, train_labels = np.asarray(train_groups), np.asarray(train_labels, dtype=np.int64)
    groups, labels = np.asarray(groups), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    glob = np.bincount(train_labels, minlength=num_classes) + smoothing
    ce = np.empty(len(labels))
    for g in np.unique(groups):
        counts = np.bincount(train_labels[train_groups == g], minlength=num_classes) + smoothing
        if counts.sum() == smoothing * num_classes:  # a group train never saw: the global prior
            counts = glob
        logp = np.log(counts / counts.sum())
        sel = groups == g
        ce[sel] = -logp[labels[sel]]
    return float(ce.mean())
