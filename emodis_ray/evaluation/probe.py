"""Leakage probes on frozen embeddings (docs/design.md §7), pure torch/NumPy.

A probe is a one-hidden-layer MLP trained on embeddings and early-stopped on other rows given to it
(:func:`train_probe`). :mod:`emodis_ray.evaluation.leakage` runs the two of the paper, emotion from the
*speaker* embedding (macro-F1) and identity from the *emotion* embedding (accuracy), early-stopped on rows
held out from train, so the labels of the split being scored never reach training.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emodis_ray.core.scores import accuracy, macro_f1

ProbeMetric = Literal["f1", "acc"]
EMB_KEYS = ("emo_emb", "spk_emb", "emotion", "speaker")


@dataclass
class Probe:
    """A trained probe: feature standardisation (train statistics) and the MLP at its best validation epoch."""

    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    net: nn.Module
    num_classes: int
    metric: ProbeMetric
    best_epoch: int
    best_val: float  # the validation score (macro-F1 or accuracy) of the kept weights
    history: list[float] = field(default_factory=list)  # validation score per epoch

    @torch.no_grad()
    def logits(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """[M, K] logits for embeddings ``x`` [M, D]."""
        self.net.eval()
        z = _standardise(x, self.mean, self.std)  # [M, D]
        if len(z) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return torch.cat([self.net(b) for b in z.split(batch_size)]).numpy()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """[M, K] class probabilities."""
        return torch.softmax(torch.from_numpy(self.logits(x)), dim=1).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[M] predicted class indices (int64)."""
        return self.logits(x).argmax(1).astype(np.int64)

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        return _score(self.metric, y, self.predict(x), self.num_classes)


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((np.asarray(x, dtype=np.float32) - mean) / std).astype(np.float32))


def _score(metric: ProbeMetric, y: np.ndarray, yhat: np.ndarray, num_classes: int) -> float:
    if metric == "f1":
        return macro_f1(y, yhat, num_classes)
    if metric == "acc":
        return accuracy(y, yhat)
    raise ValueError(f"unknown probe metric {metric!r} (f1 or acc)")


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Temporarily use ``n`` torch intra-op threads (no change when None)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, num_classes: int,
                hidden: int = 256, lr: float = 1e-3, max_epochs: int = 200, patience: int = 10, seed: int = 0,
                batch_size: int = 256, metric: ProbeMetric = "f1", weight_decay: float = 0.0,
                num_threads: int | None = None, stop_on: Literal["score", "logloss"] = "score") -> Probe:
    """Train a probe ``Linear(D, hidden) -> ReLU -> Linear(hidden, num_classes)`` with Adam on cross-entropy.

    Features are standardised with the training split's mean and standard deviation. After every epoch the
    validation ``metric`` (``"f1"``: macro-F1 over ``num_classes``; ``"acc"``: accuracy) is computed; the
    weights of the best epoch are kept, and training stops after ``patience`` epochs without improvement.
    ``stop_on="logloss"`` picks the epoch by the validation cross-entropy instead (steadier on few rows);
    ``history`` and ``best_val`` then hold minus the cross-entropy.
    Deterministic for a ``seed`` (and a thread count); the global RNGs are left untouched.
    """
    x_train, x_val = np.asarray(x_train, dtype=np.float32), np.asarray(x_val, dtype=np.float32)
    y_train, y_val = np.asarray(y_train, dtype=np.int64), np.asarray(y_val, dtype=np.int64)
    if x_train.ndim != 2 or x_val.ndim != 2 or x_train.shape[1] != x_val.shape[1]:
        raise ValueError(f"expected [N, D] embeddings with one D, got {x_train.shape} and {x_val.shape}")
    if len(x_train) != len(y_train) or len(x_val) != len(y_val) or len(x_train) == 0 or len(x_val) == 0:
        raise ValueError("train and validation need as many labels as embeddings, and at least one clip each")
    if y_train.min() < 0 or y_train.max() >= num_classes:
        raise ValueError(f"training labels must lie in 0..{num_classes - 1}")
    _score(metric, y_val[:1], y_val[:1], num_classes)  # validates ``metric`` before any work

    mean = x_train.mean(0)
    std = x_train.std(0)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # constant (e.g. dead ReLU) dimensions stay 0
    xt, xv = _standardise(x_train, mean, std), _standardise(x_val, mean, std)  # [N, D], [M, D]
    yt = torch.from_numpy(y_train)  # [N]

    with _threads(num_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(xt.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        order = np.random.default_rng(seed)
        best_val, best_epoch, best_state = -np.inf, -1, copy.deepcopy(net.state_dict())
        history: list[float] = []
        for epoch in range(max_epochs):
            net.train()
            perm = torch.from_numpy(order.permutation(len(xt)))
            for i in range(0, len(xt), batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(net(xt[idx]), yt[idx])  # [B, K] logits vs [B] labels
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                logits = net(xv)  # [M, K]
                if stop_on == "logloss":
                    val = -float(F.cross_entropy(logits, torch.from_numpy(y_val)))
                else:
                    val = _score(metric, y_val, logits.argmax(1).numpy(), num_classes)
            history.append(val)
            if val > best_val:
                best_val, best_epoch, best_state = val, epoch, copy.deepcopy(net.state_dict())
            elif epoch - best_epoch >= patience:
                break
        net.load_state_dict(best_state)
    return Probe(mean=mean, std=std, net=net.eval(), num_classes=num_classes, metric=metric, best_epoch=best_epoch,
                 best_val=float(best_val), history=history)
