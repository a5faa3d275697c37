"""Segment rows: the one format that both the streaming decoder and the feature cache produce.

A row holds every segment of a whole clip, serialised to bytes (variable length, so clips of any
duration fit one Arrow schema): log-mel as float16, faces as uint8. The training worker turns a
batch of rows into model tensors with :func:`collate`, which also does the crop (random in training,
seeded by (seed, epoch, clip id), so runs are reproducible whichever Ray worker decoded a clip).
Because streaming and cache build the very same rows, cached tensors equal streamed tensors.

The feature cache on disk (:mod:`emodis_ray.data.cache`) stores these rows.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pyarrow as pa

from emodis_ray.config import FeatureConfig
from emodis_ray.data.features import ClipSegments, crop, feature_shapes, num_segments

ROW_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("split", pa.string()), ("emotion", pa.int32()), ("speaker", pa.int32()),
    ("n_segments", pa.int32()), ("duration_s", pa.float32()),
    ("audio", pa.binary()), ("faces", pa.binary()), ("frame_index", pa.binary()),
])


def to_row(clip_id: str, split: str, emotion: int, speaker: int, segs: ClipSegments) -> dict[str, Any]:
    return {
        "clip_id": clip_id, "split": split, "emotion": int(emotion), "speaker": int(speaker),
        "n_segments": len(segs.frame_index), "duration_s": float(segs.duration_s),
        "audio": segs.audio.astype(np.float16).tobytes(),
        "faces": np.ascontiguousarray(segs.faces, np.uint8).tobytes(),
        "frame_index": segs.frame_index.astype(np.int64).tobytes(),
    }


def from_row(row: dict[str, Any], cfg: FeatureConfig) -> ClipSegments:
    shapes = feature_shapes(cfg)
    s = int(row["n_segments"])
    audio = np.frombuffer(row["audio"], np.float16).reshape(s, *shapes["audio"][1:])  # [S, 1, M, T]
    faces = np.frombuffer(row["faces"], np.uint8).reshape(s, *shapes["faces"][1:])  # [S, C, D, D]
    frame_index = np.frombuffer(row["frame_index"], np.int64)  # [S]
    return ClipSegments(audio, faces, frame_index, float(row["duration_s"]))


def crop_seed(seed: int, epoch: int, clip_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(clip_id.encode())])


def collate(rows: dict[str, Any], cfg: FeatureConfig, train: bool, seed: int = 0,
            epoch: int = 0) -> dict[str, Any]:
    """A batch of segment rows (columnar: each key maps to a sequence) -> torch tensors.

    Each clip is cropped to the model's N segments by :func:`~emodis_ray.data.features.crop` (a run seeded
    by (seed, epoch, clip id) in training, the centre run in evaluation; short clips padded and masked).
    Faces stay uint8 here: :func:`~emodis_ray.core.loop.to_device` scales them to [-1, 1] after the copy to
    the device, which moves 4x fewer bytes and runs the conversion on the accelerator.
    """
    import torch

    shapes, n = feature_shapes(cfg), num_segments(cfg)
    ids = [str(c) for c in rows["clip_id"]]
    b = len(ids)
    audio = np.zeros((b, *shapes["audio"]), np.float32)  # [B, N, 1, M, T]
    faces = np.zeros((b, *shapes["faces"]), np.uint8)  # [B, N, C, D, D]
    mask = np.zeros((b, n), bool)  # [B, N]
    for i, clip_id in enumerate(ids):
        row = {k: rows[k][i] for k in ("n_segments", "duration_s", "audio", "faces", "frame_index")}
        clip = crop(from_row(row, cfg), cfg, train, crop_seed(seed, epoch, clip_id) if train else None)
        audio[i], faces[i], mask[i] = clip.audio, clip.faces, clip.mask
    return {
        "clip_id": ids,
        "audio": torch.from_numpy(audio),
        "faces": torch.from_numpy(faces),
        "mask": torch.from_numpy(mask),
        "emotion": torch.as_tensor(np.asarray(rows["emotion"], np.int64)),  # [B]
        "speaker": torch.as_tensor(np.asarray(rows["speaker"], np.int64)),  # [B]
    }
