"""Evaluation never trains a probe on embeddings that are not finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emodis_ray.evaluation.evaluate import check_finite


def _split(n: int, nan_at: int | None = None) -> dict[str, np.ndarray]:
    emo = np.zeros((n, 8), np.float32)
    if nan_at is not None:
        emo[nan_at, 3] = np.inf
    return {"clip_id": np.array([f"c{i}" for i in range(n)]), "emo_emb": emo, "spk_emb": np.zeros((n, 4), np.float32)}


def test_finite_embeddings_pass_and_a_non_finite_one_is_named() -> None:
    check_finite({"train": _split(5), "val": _split(3), "test": _split(4)}, Path("runs/a"))
    with pytest.raises(ValueError, match=r"^runs/a: the model's embeddings are not finite for 1 test clip\(s\) "
                                         r"\(e\.g\. c2\)"):
        check_finite({"train": _split(5), "val": _split(3), "test": _split(4, nan_at=2)}, Path("runs/a"))
