"""Emotion classes and the EmoVox label rules (docs/design.md §3.3), as pure functions on numpy arrays."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

#: The teacher's (FER+) 8 classes, in the column order of ``wavLogits``.
FERPLUS_CLASSES: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)
#: The paper's 5 classes: disgust, fear, contempt and surprise merge into ``other``.
EMOTIONS: tuple[str, ...] = ("neutral", "happiness", "sadness", "anger", "other")
EMOTION_INDEX: dict[str, int] = {e: i for i, e in enumerate(EMOTIONS)}
MERGE_8_TO_5: dict[str, str] = {
    "neutral": "neutral", "happiness": "happiness", "sadness": "sadness", "anger": "anger",
    "surprise": "other", "disgust": "other", "fear": "other", "contempt": "other",
}
SPLITS: tuple[str, ...] = ("train", "val", "test")

Rule = Literal["mean_softmax", "max_logit"]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def check_logits(frame_logits: np.ndarray) -> np.ndarray:
    """``frame_logits`` as float64 [F, 8], F >= 1, every value finite; else ValueError saying what is wrong.

    A NaN row would otherwise vanish in the argmax (all-NaN logits came out as ``neutral``)."""
    logits = np.asarray(frame_logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != len(FERPLUS_CLASSES) or logits.shape[0] == 0:
        raise ValueError(f"expected [frames, 8] logits with at least one frame, got shape {logits.shape}")
    bad = ~np.isfinite(logits)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"{int(bad.sum())} of {logits.size} logits are not finite (NaN or inf), in frame"
                         f"{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows[:5]))}"
                         f"{f' and {len(rows) - 5} more' if len(rows) > 5 else ''}")
    return logits


def clip_probs(frame_logits: np.ndarray) -> np.ndarray:
    """[F, 8] per-frame logits -> [8] mean of per-frame softmax."""
    return softmax(check_logits(frame_logits), axis=1).mean(axis=0)


def dominant_emotion8(frame_logits: np.ndarray, rule: Rule = "mean_softmax") -> str:
    """The clip's dominant FER+ class.

    ``mean_softmax``: softmax each frame, average over frames, argmax (the default).
    ``max_logit``: max over time of each class's raw logit, argmax (the authors' alternative).
    """
    logits = check_logits(frame_logits)
    if rule == "mean_softmax":
        return FERPLUS_CLASSES[int(np.argmax(clip_probs(logits)))]
    if rule == "max_logit":
        return FERPLUS_CLASSES[int(np.argmax(logits.max(axis=0)))]
    raise ValueError(f"unknown label rule {rule!r} (mean_softmax or max_logit)")


def merge_to_5(emotion8: str) -> str:
    try:
        return MERGE_8_TO_5[emotion8]
    except KeyError:
        raise ValueError(f"unknown FER+ class {emotion8!r} (known: {', '.join(FERPLUS_CLASSES)})") from None


def percentile_keep(counts: Mapping[str, int], percentile: float) -> set[str]:
    """Speakers to keep: drop those whose clip count is below the ``percentile``-th percentile.

    With ``percentile <= 0`` every speaker is kept.
    """
    if percentile <= 0 or not counts:
        return set(counts)
    cut = float(np.percentile(np.fromiter(counts.values(), dtype=np.float64), percentile))
    return {s for s, n in counts.items() if n >= cut}


def split_heard_by_video(
    video_ids: Sequence[str], speakers: Sequence[str], val_fraction: float, seed: int
) -> dict[str, str]:
    """Assign each heard-set video to ``val`` or ``test`` (never both), per speaker.

    Each speaker's heard videos are shuffled with ``seed`` and the first ``round(val_fraction * n)``
    go to validation (at least one each way when the speaker has two or more videos), so both
    splits see as many speakers as possible and no video straddles them.
    """
    by_speaker: dict[str, list[str]] = {}
    for v, s in zip(video_ids, speakers, strict=True):
        vids = by_speaker.setdefault(s, [])
        if v not in vids:
            vids.append(v)
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for s in sorted(by_speaker):
        vids = sorted(by_speaker[s])
        rng.shuffle(vids)
        n = len(vids)
        n_val = int(round(val_fraction * n))
        if n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        for i, v in enumerate(vids):
            out[v] = "val" if i < n_val else "test"
    return out


def majority_chance_f1(labels: Iterable[int], num_classes: int = len(EMOTIONS)) -> float:
    """Macro-F1 of always predicting the majority class of ``labels``.

    The majority class gets F1 = 2p/(1+p) with p its share; every other class gets 0.
    """
    arr = np.asarray(list(labels), dtype=np.int64)
    if arr.size == 0:
        return 0.0
    p = np.bincount(arr, minlength=num_classes).max() / arr.size
    return float(2 * p / (1 + p) / num_classes)


def mutual_information(a: Sequence[object], b: Sequence[object]) -> float:
    """Empirical mutual information (nats) between two discrete label sequences."""
    from sklearn.metrics import mutual_info_score

    return float(mutual_info_score(list(map(str, a)), list(map(str, b))))
