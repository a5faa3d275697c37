"""Evaluation records built from synthetic predictions, for the evaluation tests."""

from __future__ import annotations

import numpy as np

from emodis_ray.evaluation.records import Evaluation, build_evaluation


def noisy(y: np.ndarray, k: int, p_keep: float, seed: int) -> np.ndarray:
    """Predictions equal to ``y`` with probability ``p_keep``, else a random class."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(y.shape) < p_keep, y, rng.integers(0, k, y.shape))


def make_evaluation(method: str = "mtl", spk_dim: int = 64, seed: int = 0, n: int = 300) -> Evaluation:
    rng = np.random.default_rng(seed)
    emo, spk = rng.choice(5, n, p=[0.4, 0.2, 0.2, 0.1, 0.1]), rng.integers(0, 8, n)
    return build_evaluation(
        run=f"{method}-{spk_dim}", method=method, spk_dim=spk_dim, emotion=emo, speaker=spk,
        emo_pred=None if method == "stl-speaker" else noisy(emo, 5, 0.6, seed + 1),
        spk_pred=None if method == "stl-emotion" else noisy(spk, 8, 0.8, seed + 2),
        probe_emo_from_spk_pred=noisy(emo, 5, 0.3, seed + 3), probe_spk_from_emo_pred=noisy(spk, 8, 0.2, seed + 4),
        aux_emo_pred=noisy(emo, 5, 0.2, seed + 5), aux_spk_pred=noisy(spk, 8, 0.1, seed + 6), n_boot=200,
        seed=seed, extra={"config": {"model.spk_dim": spk_dim}})
