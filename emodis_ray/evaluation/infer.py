"""Batch inference with Ray Data: a trained model in an actor pool turns segment rows into predictions
and embeddings. Used by ``emodis evaluate`` (embeddings of train/val/test for the probes) and
``emodis predict`` (new clips).

Each actor loads ``model.pt`` once (no Ray Train involved) and serves batches; on GPU nodes give
each actor a GPU (``num_gpus=1``), on CPU one CPU and one torch thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray

from emodis_ray.config import FeatureConfig
from emodis_ray.data.labels import EMOTIONS

EMBED_COLUMNS = ("clip_id", "split", "emotion", "speaker", "emo_pred", "spk_pred", "aux_emo_pred",
                 "aux_spk_pred", "emo_prob", "emo_emb", "spk_emb")


class EmbedClips:
    """Ray Data UDF: segment rows -> predictions of every head, emotion probabilities, both embeddings."""

    def __init__(self, model_path: str, features: dict[str, Any], use_gpu: bool = False, trunk: bool = False) -> None:
        import torch

        from emodis_ray.core.checkpoint import load_model

        torch.set_num_threads(1)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model, _ = load_model(model_path, self.device)
        self.features = FeatureConfig(**features)
        self.trunk = trunk  # also return the pooled trunk features (the frozen-trunk screen's input)
        from emodis_ray.data.rows import FaceDecoder

        self.decoder = FaceDecoder(threads=1, device=self.device)  # JPEG faces decoded on the card when on a GPU

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from emodis_ray.core.loop import to_device
        from emodis_ray.data.rows import collate

        batch = to_device(collate(rows, self.features, train=False, decoder=self.decoder), self.device)
        with torch.no_grad():
            h = self.model.trunk_features(batch["audio"], batch["faces"], batch["mask"])  # [B, F]
            out = self.model.from_features(h)
        cpu = lambda t: t.float().cpu().numpy()  # noqa: E731
        return ({"trunk": cpu(h)} if self.trunk else {}) | {
            "clip_id": np.asarray(batch["clip_id"], dtype=object),
            "split": np.asarray(rows["split"], dtype=object),
            "emotion": np.asarray(rows["emotion"], np.int64),
            "speaker": np.asarray(rows["speaker"], np.int64),
            "emo_pred": cpu(out.emo_logits.argmax(-1)).astype(np.int64),  # [B]
            "spk_pred": cpu(out.spk_logits.argmax(-1)).astype(np.int64),
            "aux_emo_pred": cpu(out.aux_emo_logits.argmax(-1)).astype(np.int64),
            "aux_spk_pred": cpu(out.aux_spk_logits.argmax(-1)).astype(np.int64),
            "emo_prob": cpu(out.emo_logits.softmax(-1)),  # [B, 5]
            "emo_emb": cpu(out.emo_emb),  # [B, E]
            "spk_emb": cpu(out.spk_emb),  # [B, S]
        }


def embed_rows(rows: ray.data.Dataset, model_path: Path, features: FeatureConfig, batch_size: int = 32,
               actors: int = 1, use_gpu: bool = False, trunk: bool = False) -> dict[str, np.ndarray]:
    """Run :class:`EmbedClips` over a dataset of segment rows; columns gathered on the driver, sorted by clip id.
    ``trunk``: also the pooled trunk features (column ``trunk``)."""
    from dataclasses import asdict

    out = rows.map_batches(
        EmbedClips, batch_format="numpy", batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=max(1, actors)),
        num_cpus=0 if use_gpu else 1, num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs={"model_path": str(model_path), "features": asdict(features), "use_gpu": use_gpu,
                               "trunk": trunk},
    )
    parts = list(out.iter_batches(batch_size=None, batch_format="numpy"))
    names = (*EMBED_COLUMNS, "trunk") if trunk else EMBED_COLUMNS
    if not parts:
        return {k: np.empty(0) for k in names}
    cols = {k: np.concatenate([p[k] for p in parts]) for k in names}
    order = np.argsort(cols["clip_id"].astype(str), kind="stable")
    return {k: v[order] for k, v in cols.items()}


def predictions_frame(cols: dict[str, np.ndarray],
                      embeddings: bool = True) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Columns of :func:`embed_rows` as a table: emotion names, one probability column per class, and
    the embeddings as list columns; and the clips left out because their probabilities (or, with
    ``embeddings``, their embeddings) are not finite, as bad-clip records with reason ``non_finite``
    (a NaN row's argmax would otherwise be reported as ``neutral``)."""
    ids = cols["clip_id"].astype(str)
    n = len(ids)
    checked = {"emotion probabilities": cols["emo_prob"]}
    if embeddings:
        checked |= {"emotion embedding": cols["emo_emb"], "speaker embedding": cols["spk_emb"]}
    finite = {k: np.isfinite(np.asarray(v, np.float64).reshape(n, -1)).all(axis=1) if n else np.ones(0, bool)
              for k, v in checked.items()}
    keep = np.logical_and.reduce(list(finite.values())) if n else np.ones(0, bool)
    bad = [{"clip_id": ids[i], "reason": "non_finite",
            "detail": f"{ids[i]}: the model's {' and '.join(k for k, ok in finite.items() if not ok[i])} "
                      f"for this clip contain NaN or infinite values"} for i in np.flatnonzero(~keep)]
    prob = np.asarray(cols["emo_prob"], np.float32).reshape(n, len(EMOTIONS))[keep]
    df = pd.DataFrame({"clip_id": ids[keep],
                       "emotion_pred": [EMOTIONS[i] for i in np.asarray(cols["emo_pred"])[keep]]})
    for j, name in enumerate(EMOTIONS):
        df[f"p_{name}"] = prob[:, j]
    if embeddings:
        df["emo_emb"] = [np.asarray(e, np.float32) for e in np.asarray(cols["emo_emb"])[keep]]
        df["spk_emb"] = [np.asarray(e, np.float32) for e in np.asarray(cols["spk_emb"])[keep]]
    return df, bad
