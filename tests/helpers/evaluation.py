"""Evaluation records built from synthetic predictions and embeddings, for the evaluation tests."""

from __future__ import annotations

import numpy as np

from emodis_ray.evaluation.leakage import measure_leakage
from emodis_ray.evaluation.records import Evaluation, build_evaluation


def noisy(y: np.ndarray, k: int, p_keep: float, seed: int) -> np.ndarray:
    """Predictions equal to ``y`` with probability ``p_keep``, else a random class."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(y.shape) < p_keep, y, rng.integers(0, k, y.shape))


def embeddings(emo: np.ndarray, spk: np.ndarray, carry: float, seed: int) -> dict[str, np.ndarray]:
    """Speaker embeddings (the speaker's code, plus ``carry`` times the clip's emotion code) and emotion
    embeddings (the emotion's code, a little of the speaker's), with noise."""
    rng = np.random.default_rng(seed)
    s_code, e_code = np.random.default_rng(11).normal(size=(8, 8)), np.random.default_rng(12).normal(size=(5, 8))
    spk_emb = s_code[spk] + carry * e_code[emo] + 0.5 * rng.normal(size=(len(emo), 8))
    emo_emb = e_code[emo] + 0.3 * s_code[spk] + 0.5 * rng.normal(size=(len(emo), 8))
    return {"spk_emb": spk_emb.astype(np.float32), "emo_emb": emo_emb.astype(np.float32), "emotion": emo,
            "speaker": spk}


def labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Emotions with per-speaker skewed priors (shared by every split), 8 speakers."""
    rng = np.random.default_rng(seed)
    spk = rng.integers(0, 8, n)
    priors = np.random.default_rng(13).dirichlet(np.full(5, 0.5), size=8)
    return np.asarray([rng.choice(5, p=priors[s]) for s in spk]), spk


def make_evaluation(method: str = "mtl", spk_dim: int = 64, seed: int = 0, n: int = 300) -> Evaluation:
    emo, spk = labels(n, seed)
    tr_emo, tr_spk = labels(2 * n, seed + 100)
    carry = 0.2 if method in ("gr", "alt", "conf") else 1.0
    emb = {"train": embeddings(tr_emo, tr_spk, carry, seed + 7), "test": embeddings(emo, spk, carry, seed + 8)}
    leak = measure_leakage(emb, scored="test", seeds=(seed,), n_boot=200, max_epochs=15)
    return build_evaluation(
        run=f"{method}-{spk_dim}", method=method, spk_dim=spk_dim, emotion=emo, speaker=spk,
        emo_pred=None if method == "stl-speaker" else noisy(emo, 5, 0.6, seed + 1),
        spk_pred=None if method == "stl-emotion" else noisy(spk, 8, 0.8, seed + 2), leak=leak.to_dict(),
        aux_emo_pred=noisy(emo, 5, 0.2, seed + 5), aux_spk_pred=noisy(spk, 8, 0.1, seed + 6), n_boot=200,
        seed=seed, extra={"config": {"model.spk_dim": spk_dim}})
