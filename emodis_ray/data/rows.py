"""Clip rows: the one format that both the streaming decoder and the feature cache produce.

A row holds one whole clip, serialised to bytes (variable length, so clips of any duration fit one Arrow
schema):

- ``mel``: the clip's log-mel once, float16 ``[n_mels, F]``, covering every segment (segments overlap, so
  storing them one by one would store most frames twice). Segments are cut from it at collate time.
- ``faces``: one image per segment, concatenated; ``face_sizes`` gives each one's byte length. The codec
  is ``raw`` (uint8 ``[C, D, D]``) or ``jpeg``. Streaming produces raw faces; the feature cache encodes
  them as ``features.face_codec`` says.
- labels (``clip_id``, ``split``, ``emotion``, ``speaker``): the feature cache does not store them (a clip's
  features depend only on the clip and the feature config); they are joined from the manifest at read time.

The training worker turns a batch of rows into model tensors with :func:`collate`, which also does the
crop (random in training, seeded by (seed, epoch, clip id), so runs are reproducible whichever Ray worker
decoded a clip) and decodes only the faces the crop keeps. Streaming and cache build the very same rows,
so cached tensors equal streamed tensors (raw faces), or agree within the JPEG error.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from emodis_ray.config import FeatureConfig
from emodis_ray.data.features import ClipSegments, crop_start, feature_shapes, frames_per_segment, num_segments

#: What the feature cache stores per clip: no labels, no split.
FEATURE_SCHEMA = pa.schema([
    ("clip_key", pa.string()), ("n_segments", pa.int32()), ("duration_s", pa.float32()),
    ("mel_frames", pa.int32()), ("mel", pa.large_binary()),
    ("face_codec", pa.string()), ("faces", pa.large_binary()), ("face_sizes", pa.binary()),
    ("frame_index", pa.binary()),
])
LABEL_FIELDS = [("clip_id", pa.string()), ("split", pa.string()), ("emotion", pa.int32()), ("speaker", pa.int32())]
#: What the trainer reads: the features and the labels joined from the manifest.
ROW_SCHEMA = pa.schema([*LABEL_FIELDS, *FEATURE_SCHEMA])
CODECS = ("raw", "jpeg")


def hop_frames(cfg: FeatureConfig) -> int:
    """Mel frames between the starts of two segments."""
    return round(cfg.hop_s * cfg.sample_rate / cfg.hop_length)


def whole_mel(segs: ClipSegments, cfg: FeatureConfig) -> np.ndarray:
    """[S, 1, M, T] segments -> the [M, F] log-mel they were cut from (F = (S-1) * hop + T frames)."""
    s, t, h = len(segs.frame_index), frames_per_segment(cfg), hop_frames(cfg)
    mel = np.zeros((cfg.n_mels, (s - 1) * h + t), np.float32)  # [M, F]
    for i in range(s - 1, -1, -1):  # the earlier segment wins where a zero-padded tail overlaps
        mel[:, i * h:i * h + t] = segs.audio[i, 0]
    return mel


def cut_segments(mel: np.ndarray, first: int, count: int, cfg: FeatureConfig) -> np.ndarray:
    """Segments ``first .. first+count-1`` of a whole-clip [M, F] log-mel -> [count, 1, M, T] float32."""
    t, h = frames_per_segment(cfg), hop_frames(cfg)
    out = np.zeros((count, 1, mel.shape[0], t), np.float32)  # [count, 1, M, T]
    for j in range(count):
        patch = mel[:, (first + j) * h:(first + j) * h + t]
        out[j, 0, :, :patch.shape[1]] = patch
    return out


def encode_faces(faces: np.ndarray, codec: str, quality: int = 90) -> tuple[bytes, np.ndarray]:
    """[S, C, D, D] uint8 -> (the images concatenated, [S] int32 byte length of each)."""
    if codec == "raw":
        f = np.ascontiguousarray(faces, np.uint8)
        return f.tobytes(), np.full(len(f), f[0].nbytes if len(f) else 0, np.int32)
    if codec != "jpeg":
        raise ValueError(f"features.face_codec: unknown codec {codec!r} (known: {', '.join(CODECS)})")
    import torch
    from torchvision.io import encode_jpeg

    encoded = encode_jpeg([torch.from_numpy(np.ascontiguousarray(f)) for f in faces], quality=quality)
    return b"".join(e.numpy().tobytes() for e in encoded), np.array([e.numel() for e in encoded], np.int32)


class FaceDecoder:
    """Decodes the JPEG faces of a batch where the training worker runs: on a CUDA ``device``, all in one batched
    ``torchvision.io.decode_jpeg`` call on the card (nvJPEG); on the CPU, in ``threads`` chunks on a small thread
    pool (the decoder releases the GIL: two threads decode a batch ~1.5-1.8x faster than one on two cores).
    ``threads`` 0: as many as torch's intra-op threads (what Ray gives the worker). Raw faces need neither."""

    def __init__(self, threads: int = 0, device: Any = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.threads = max(1, threads or torch.get_num_threads())
        self._pool: Any = None

    def __call__(self, jpegs: list[Any], gray: bool) -> list[Any]:
        """[n] encoded uint8 tensors -> [n] uint8 tensors [C, D, D], on :attr:`device`."""
        from torchvision.io import ImageReadMode, decode_jpeg

        mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB
        if self.device.type == "cuda":
            return list(decode_jpeg(jpegs, mode=mode, device=self.device))
        n = min(self.threads, len(jpegs) // 8)  # chunks of >= 8 faces: below that a thread costs more than it saves
        if n < 2:
            return list(decode_jpeg(jpegs, mode=mode))
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode_jpeg")
        step = -(-len(jpegs) // n)
        chunks = self._pool.map(lambda c: decode_jpeg(c, mode=mode),
                                [jpegs[i:i + step] for i in range(0, len(jpegs), step)])
        return [img for chunk in chunks for img in chunk]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def decode_faces(blobs: Sequence[tuple[bytes, np.ndarray, str]], picks: Sequence[tuple[int, int]],
                 shape: tuple[int, int, int], decoder: FaceDecoder | None = None) -> Any:
    """For each clip (faces bytes, face sizes, codec) the faces ``first .. first+count-1``, into one uint8 tensor
    [B, N, C, D, D] (N: the largest count; slots past a clip's count stay zero) on the ``decoder``'s device
    (default: one CPU thread). Every JPEG of the batch goes to the decoder in one call."""
    import torch

    decoder = decoder or FaceDecoder(threads=1)
    n = max((c for _, c in picks), default=0)
    out = torch.zeros((len(blobs), n, *shape), dtype=torch.uint8)  # [B, N, C, D, D]
    jpegs: list[Any] = []
    where: list[tuple[int, int]] = []  # (clip, slot) of each JPEG
    for ci, ((data, sizes, codec), (first, count)) in enumerate(zip(blobs, picks, strict=True)):
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        if codec == "raw":
            a, b = offsets[first], offsets[first + count]
            out[ci, :count].numpy()[...] = np.frombuffer(data, np.uint8, count=b - a, offset=a).reshape(count, *shape)
            continue
        for j in range(count):
            a, b = offsets[first + j], offsets[first + j + 1]
            jpegs.append(torch.frombuffer(bytearray(data[a:b]), dtype=torch.uint8))
            where.append((ci, j))
    if decoder.device.type != "cpu":
        out = out.to(decoder.device, non_blocking=True)
    if jpegs:
        for (ci, j), img in zip(where, decoder(jpegs, gray=shape[0] == 1), strict=True):
            out[ci, j] = img
    return out


def to_features(segs: ClipSegments, cfg: FeatureConfig, codec: str = "raw", clip_key: str = "") -> dict[str, Any]:
    """A decoded clip -> the feature fields of a row (:data:`FEATURE_SCHEMA`)."""
    mel = whole_mel(segs, cfg)
    faces, sizes = encode_faces(segs.faces, codec, cfg.face_quality)
    return {
        "clip_key": clip_key, "n_segments": len(segs.frame_index), "duration_s": float(segs.duration_s),
        "mel_frames": mel.shape[1], "mel": mel.astype(np.float16).tobytes(),
        "face_codec": codec, "faces": faces, "face_sizes": sizes.tobytes(),
        "frame_index": segs.frame_index.astype(np.int64).tobytes(),
    }


def to_row(clip_id: str, split: str, emotion: int, speaker: int, segs: ClipSegments, cfg: FeatureConfig,
           codec: str = "raw", clip_key: str = "") -> dict[str, Any]:
    """A decoded clip and its labels -> one row (:data:`ROW_SCHEMA`)."""
    return {"clip_id": clip_id, "split": split, "emotion": int(emotion), "speaker": int(speaker),
            **to_features(segs, cfg, codec, clip_key)}


def _mel_of(row: dict[str, Any], cfg: FeatureConfig) -> np.ndarray:
    return np.frombuffer(row["mel"], np.float16).reshape(cfg.n_mels, int(row["mel_frames"]))  # [M, F]


def _face_shape(cfg: FeatureConfig) -> tuple[int, int, int]:
    c, d = feature_shapes(cfg)["faces"][1:3]
    return int(c), int(d), int(d)


def from_row(row: dict[str, Any], cfg: FeatureConfig) -> ClipSegments:
    """A row -> every segment of its clip (faces decoded)."""
    s = int(row["n_segments"])
    audio = cut_segments(_mel_of(row, cfg), 0, s, cfg)  # [S, 1, M, T]
    sizes = np.frombuffer(row["face_sizes"], np.int32)
    faces = decode_faces([(row["faces"], sizes, str(row["face_codec"]))], [(0, s)], _face_shape(cfg))[0].numpy()
    frame_index = np.frombuffer(row["frame_index"], np.int64)  # [S]
    return ClipSegments(audio, faces, frame_index, float(row["duration_s"]))


def crop_seed(seed: int, epoch: int, clip_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(clip_id.encode())])


def collate(rows: dict[str, Any], cfg: FeatureConfig, train: bool, seed: int = 0,
            epoch: int = 0, decoder: FaceDecoder | None = None) -> dict[str, Any]:
    """A batch of rows (columnar: each key maps to a sequence) -> torch tensors.

    Each clip is cropped to the model's N segments (:func:`~emodis_ray.data.features.crop_start`: a run
    seeded by (seed, epoch, clip id) in training, the centre run in evaluation; short clips padded and
    masked); only the kept segments are cut from the log-mel and only their faces decoded.
    Faces stay uint8 here: :func:`~emodis_ray.core.loop.to_device` scales them to [-1, 1] after the copy to
    the device, which moves 4x fewer bytes and runs the conversion on the accelerator. JPEG faces are decoded
    by ``decoder`` (:class:`FaceDecoder`: a thread pool on the CPU; on a CUDA decoder they are decoded on the
    card and ``faces`` is returned there); default one CPU thread.
    """
    import torch

    shapes, n = feature_shapes(cfg), num_segments(cfg)
    ids = [str(c) for c in rows["clip_id"]]
    b = len(ids)
    audio = np.zeros((b, *shapes["audio"]), np.float32)  # [B, N, 1, M, T]
    mask = np.zeros((b, n), bool)  # [B, N]
    picks, blobs = [], []
    for i, clip_id in enumerate(ids):
        s = int(rows["n_segments"][i])
        k = crop_start(s, n, train, crop_seed(seed, epoch, clip_id) if train else None)
        m = min(n, s)
        picks.append((k, m))
        blobs.append((rows["faces"][i], np.frombuffer(rows["face_sizes"][i], np.int32), str(rows["face_codec"][i])))
        mel = np.frombuffer(rows["mel"][i], np.float16).reshape(cfg.n_mels, int(rows["mel_frames"][i]))
        audio[i, :m] = cut_segments(mel, k, m, cfg)
        mask[i, :m] = True
    got = decode_faces(blobs, picks, _face_shape(cfg), decoder)  # [B, <=N, C, D, D]
    faces = torch.zeros((b, *shapes["faces"]), dtype=torch.uint8, device=got.device)  # [B, N, C, D, D]
    faces[:, :got.shape[1]] = got
    return {
        "clip_id": ids,
        "audio": torch.from_numpy(audio),
        "faces": faces,
        "mask": torch.from_numpy(mask),
        "emotion": torch.as_tensor(np.asarray(rows["emotion"], np.int64)),  # [B]
        "speaker": torch.as_tensor(np.asarray(rows["speaker"], np.int64)),  # [B]
    }
