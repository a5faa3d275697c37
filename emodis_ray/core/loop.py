"""Training and evaluation loop pieces, free of Ray: one epoch, evaluation, seeding, precision, checkpoints.

A batch is a dict of tensors: ``audio`` [B, N, 1, 40, T], ``faces`` [B, N, C, D, D] (float in [-1, 1], or
uint8 that :func:`to_device` scales), ``mask`` [B, N] bool,
``emotion`` [B] int64, ``speaker`` [B] int64. Extra keys (e.g. clip ids) are carried along untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import Tensor, nn

from emodis_ray.core.methods import Method, Optimizers, Schedulers
from emodis_ray.core.model import unwrap

log = logging.getLogger(__name__)

TENSOR_KEYS = ("audio", "faces", "mask", "emotion", "speaker")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Call it in the worker, never at import."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(device: torch.device | str, precision: str) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA when ``precision == "bf16"``, else a no-op. Both may be entered many times."""
    if torch.device(device).type == "cuda" and precision == "bf16":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Tensors (and NumPy arrays) of the batch contract onto ``device``; other values unchanged."""
    out = dict(batch)
    for k in TENSOR_KEYS:
        if k in out:
            out[k] = torch.as_tensor(out[k]).to(device, non_blocking=True)
    out["mask"] = out["mask"].bool()
    if out["faces"].dtype == torch.uint8:  # collated faces travel as uint8: scale on the device
        out["faces"] = out["faces"].float().div_(127.5).sub_(1.0)  # [B, N, C, D, D] in [-1, 1]
    return out


def train_epoch(model: nn.Module, loader: Iterable[Mapping[str, Any]], method: Method, optimizers: Optimizers,
                epoch: int, epochs: int, device: torch.device | str, autocast: AbstractContextManager[Any],
                log_every: int = 50, steps_per_epoch: int | None = None,
                on_step: Callable[[float, float], None] | None = None) -> dict[str, float]:
    """One pass over ``loader``. Returns the mean of every logged term, ``clips_per_s``, ``data_wait_frac``
    (time spent waiting for the next batch / epoch time), ``steps`` and ``clips``.

    Training progress p (GR's lambda ramp) is (epoch + i / steps_per_epoch) / epochs; without
    ``steps_per_epoch`` (and without ``len(loader)``) it advances once per epoch. ``on_step(step_s, wait_s)``
    is called after every step (e.g. to export metrics).
    """
    model.train()
    if steps_per_epoch is None and hasattr(loader, "__len__"):
        steps_per_epoch = len(loader)  # type: ignore[arg-type]
    sums: dict[str, float] = defaultdict(float)
    steps = clips = 0
    wait = 0.0
    t_start = t_log = time.perf_counter()
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        waited = time.perf_counter() - t0
        wait += waited
        batch = to_device(batch, device)
        frac = steps / steps_per_epoch if steps_per_epoch else 0.0
        progress = (epoch + min(frac, 1.0)) / max(epochs, 1)
        logs = method.step(model, batch, optimizers, progress, autocast)  # floats: one host sync per step
        for k, v in logs.items():
            sums[k] += v
        steps += 1
        clips += batch["emotion"].shape[0]
        if on_step is not None:
            on_step(time.perf_counter() - t0, waited)
        if log_every and steps % log_every == 0:
            now = time.perf_counter()
            log.info("epoch %d step %d: loss %.4f l_prim %.4f, %.1f clips/s", epoch, steps, logs["loss"],
                     logs["l_prim"], log_every * batch["emotion"].shape[0] / max(now - t_log, 1e-9))
            t_log = now
    elapsed = time.perf_counter() - t_start
    out = {k: v / max(steps, 1) for k, v in sums.items()}
    out.update(steps=float(steps), clips=float(clips), clips_per_s=clips / max(elapsed, 1e-9),
               data_wait_frac=wait / max(elapsed, 1e-9), epoch_time_s=elapsed)
    return out


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[Mapping[str, Any]], device: torch.device | str,
                       autocast: AbstractContextManager[Any] | None = None) -> int:
    """Precise BatchNorm: replace every BatchNorm's running mean and variance by their plain average over
    ``batches`` under the current weights (the running averages lag weights that move fast, and eval-mode
    predictions then swing from epoch to epoch). Only BatchNorm layers run in train mode; dropout stays off
    and no RNG is drawn, so the result is deterministic. Under ``torch.distributed`` the statistics are then
    averaged over the workers, so every rank evaluates and saves the same model. No batches: the statistics
    stay as they are. Returns the batches used."""
    batches = list(batches)
    bns = [m for m in unwrap(model).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    if not bns or not batches:
        return 0
    was_training, momenta = model.training, [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: an equal-weight mean over the batches
        bn.train()
    autocast = autocast or contextlib.nullcontext()
    n = 0
    for raw in batches:
        b = to_device(raw, device)
        with autocast:
            model(b["audio"], b["faces"], b["mask"])
        n += 1
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        for bn in bns:
            for buf in (bn.running_mean, bn.running_var):
                torch.distributed.all_reduce(buf)
                buf.div_(world)
    model.train(was_training)
    return n


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[Mapping[str, Any]], device: torch.device | str,
            autocast: AbstractContextManager[Any] | None = None,
            embeddings: bool = False) -> dict[str, np.ndarray]:
    """Labels, argmax predictions of all four heads and per-clip cross-entropies (and the embeddings when
    asked), concatenated over ``loader``. Under DDP, gather these across workers, then call ``metrics``."""
    model.eval()
    autocast = autocast or contextlib.nullcontext()
    parts: dict[str, list[Tensor]] = defaultdict(list)
    for raw in loader:
        b = to_device(raw, device)
        with autocast:
            out = model(b["audio"], b["faces"], b["mask"])
        e, s = b["emotion"], b["speaker"]
        heads = {"emo": (out.emo_logits, e), "spk": (out.spk_logits, s),
                 "aux_emo": (out.aux_emo_logits, e), "aux_spk": (out.aux_spk_logits, s)}
        for name, (logits, y) in heads.items():
            parts[f"{name}_pred"].append(logits.argmax(-1))  # [B]
            parts[f"loss_{name}"].append(F.cross_entropy(logits.float(), y, reduction="none"))  # [B]
        parts["emotion"].append(e)
        parts["speaker"].append(s)
        if embeddings:
            parts["emo_emb"].append(out.emo_emb.float())  # [B, emo_dim]
            parts["spk_emb"].append(out.spk_emb.float())  # [B, spk_dim]
    return {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}


def metrics(pred: Mapping[str, np.ndarray], num_emotions: int = 5) -> dict[str, float]:
    """Emotion macro-F1 over all ``num_emotions`` classes, identity top-1 accuracy, the same for the aux
    heads (``aux_emo_f1``: emotion from the speaker embedding, an online leakage estimate;
    ``aux_spk_acc``: identity from the emotion embedding) and the mean cross-entropies."""
    labels = list(range(num_emotions))
    e, s = pred["emotion"], pred["speaker"]
    out = {
        "emo_f1": f1_score(e, pred["emo_pred"], average="macro", labels=labels, zero_division=0),
        "emo_acc": float(np.mean(pred["emo_pred"] == e)),
        "spk_acc": float(np.mean(pred["spk_pred"] == s)),
        "aux_emo_f1": f1_score(e, pred["aux_emo_pred"], average="macro", labels=labels, zero_division=0),
        "aux_spk_acc": float(np.mean(pred["aux_spk_pred"] == s)),
        "n": float(len(e)),
    }
    out.update({k: float(np.mean(pred[k])) for k in ("loss_emo", "loss_spk", "loss_aux_emo", "loss_aux_spk")})
    return {k: float(v) for k, v in out.items()}


def evaluate(model: nn.Module, loader: Iterable[Mapping[str, Any]], device: torch.device | str,
             autocast: AbstractContextManager[Any] | None = None) -> dict[str, float]:
    """``metrics(predict(...))`` on one worker's share of the data."""
    pred = predict(model, loader, device, autocast)
    return metrics(pred, num_emotions=unwrap(model).emo_head.out_features)


# --- checkpoints ------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), NumPy and Python RNG states as tensors and plain lists (weights_only-safe)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def save_checkpoint(path: str | Path, model: nn.Module, optimizers: Optimizers, schedulers: Schedulers | None,
                    epoch: int, extra: Mapping[str, Any] | None = None) -> None:
    """Plain (unwrapped) state dicts, optimiser and scheduler states, the epoch, ``extra`` (plain Python
    values and tensors only) and this process's RNG states; written atomically, loadable with
    ``torch.load(weights_only=True)``."""
    state = {
        "model": unwrap(model).state_dict(),
        "optimizers": optimizers.state_dict(),
        "schedulers": schedulers.state_dict() if schedulers is not None else None,
        "epoch": int(epoch),
        "extra": dict(extra or {}),
        "rng": rng_state(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, model: nn.Module, optimizers: Optimizers | None = None,
                    schedulers: Schedulers | None = None, restore_rng: bool = True) -> dict[str, Any]:
    """Load what ``save_checkpoint`` wrote into (possibly wrapped) ``model`` and the optimisers and
    schedulers given; returns ``{"epoch": ..., "extra": ...}``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(state["model"])
    if optimizers is not None:
        optimizers.load_state_dict(state["optimizers"])
    if schedulers is not None and state["schedulers"] is not None:
        schedulers.load_state_dict(state["schedulers"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {"epoch": state["epoch"], "extra": state["extra"]}
