"""The epoch loop, free of Ray: one epoch of training, precise BatchNorm, validation, seeding, precision.

:func:`run_epoch` is the whole per-epoch sequence (train, step the schedulers, recompute the BatchNorm
statistics, predict the validation rows); the Ray Train worker and the no-Ray benchmark both call it.

A batch is a dict of tensors: ``audio`` [B, N, 1, 40, T], ``faces`` [B, N, C, D, D] (float in [-1, 1], or
uint8 that :func:`to_device` scales), ``mask`` [B, N] bool,
``emotion`` [B] int64, ``speaker`` [B] int64. Extra keys (e.g. clip ids) are carried along untouched.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emodis_ray.core.checkpoint import first_nonfinite
from emodis_ray.core.errors import NonFiniteLoss
from emodis_ray.core.methods import Method, Optimizers, Schedulers
from emodis_ray.core.model import unwrap
from emodis_ray.core.scores import accuracy, macro_f1

log = logging.getLogger(__name__)

TENSOR_KEYS = ("audio", "faces", "mask", "emotion", "speaker")
SUMS = ("loss", "l_prim", "l_aux", "l_adv", "lam")  # logged sums of the terms: named only when no term is bad
T = TypeVar("T")


def check_finite_logs(logs: Mapping[str, float], batch: Mapping[str, Any], epoch: int, step: int) -> None:
    """Raise :class:`NonFiniteLoss` when a logged loss term of this step is NaN or infinite: the first bad
    term (the unweighted terms before their sums), and the clips of the batch whose input features are
    non-finite, if any. ``epoch`` is 0-based as in the loop, ``step`` 1-based; the message counts both from 1."""
    bad = [k for k, v in logs.items() if not np.isfinite(v)]
    if not bad:
        return
    term = next((k for k in bad if k not in SUMS), bad[0])
    raise NonFiniteLoss(f"non-finite loss: epoch {epoch + 1}, step {step}: loss term {term} is {logs[term]}; "
                        f"{_nonfinite_inputs(batch)}", epoch + 1, step, term)


def _nonfinite_inputs(batch: Mapping[str, Any]) -> str:
    """Which clips of the batch carry non-finite audio or face features (computed only on error)."""
    ok = torch.ones(len(batch["emotion"]), dtype=torch.bool, device=batch["emotion"].device)
    for k in ("audio", "faces"):
        x = batch[k]
        if torch.is_floating_point(x):
            ok &= torch.isfinite(x).flatten(1).all(dim=1)
    rows = (~ok).nonzero().flatten().tolist()
    if not rows:
        return "every input feature of the batch is finite (the weights overflowed?)"
    ids = batch.get("clip_id")
    names = [str(ids[i]) for i in rows] if ids is not None else [f"row {i}" for i in rows]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"non-finite input features in clip(s) {', '.join(names[:3])}{more}"


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
    (time spent waiting for the next batch / epoch time), ``steps`` and ``clips``. A NaN or infinite loss
    term raises :class:`NonFiniteLoss` at the step where it appears.

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
        check_finite_logs(logs, batch, epoch, steps + 1)  # already on the host: costs nothing
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
    e, s = pred["emotion"], pred["speaker"]
    out = {
        "emo_f1": macro_f1(e, pred["emo_pred"], num_emotions),
        "emo_acc": accuracy(e, pred["emo_pred"]),
        "spk_acc": accuracy(s, pred["spk_pred"]),
        "aux_emo_f1": macro_f1(e, pred["aux_emo_pred"], num_emotions),
        "aux_spk_acc": accuracy(s, pred["aux_spk_pred"]),
        "n": float(len(e)),
    }
    out.update({k: float(np.mean(pred[k])) for k in ("loss_emo", "loss_spk", "loss_aux_emo", "loss_aux_spk")})
    return {k: float(v) for k, v in out.items()}


def evaluate(model: nn.Module, loader: Iterable[Mapping[str, Any]], device: torch.device | str,
             autocast: AbstractContextManager[Any] | None = None) -> dict[str, float]:
    """``metrics(predict(...))`` on one worker's share of the data."""
    pred = predict(model, loader, device, autocast)
    return metrics(pred, num_emotions=unwrap(model).emo_head.out_features)


def keep_last(batches: Iterable[T], last: deque[T]) -> Iterator[T]:
    """Yield ``batches`` unchanged, keeping the most recent ones in ``last`` (a bounded deque)."""
    for b in batches:
        if last.maxlen:
            last.append(b)
        yield b


@dataclass(frozen=True)
class EpochResult:
    logs: dict[str, float]  # train_epoch's means, clips, throughput, epoch_time_s
    lrs: dict[str, float]  # the learning rates this epoch trained with
    pred: dict[str, np.ndarray]  # predict() on the validation batches given
    val_s: float  # seconds spent predicting them


def run_epoch(model: nn.Module, train_batches: Iterable[Mapping[str, Any]],
              val_batches: Iterable[Mapping[str, Any]], method: Method, optimizers: Optimizers,
              schedulers: Schedulers, epoch: int, epochs: int, device: torch.device | str,
              autocast: AbstractContextManager[Any], precise_bn_batches: int, *,
              steps_per_epoch: int | None = None,
              on_step: Callable[[float, float], None] | None = None) -> EpochResult:
    """One whole epoch: train on ``train_batches``, step the schedulers, recompute every BatchNorm's
    statistics over the epoch's last ``precise_bn_batches`` batches (kept as they pass, no extra read),
    then predict ``val_batches`` with the plain (unwrapped) model. Under DDP each rank passes its own shard
    and gathers ``pred`` afterwards. A non-finite loss term, or weights left non-finite by the epoch (never
    saved then), raise :class:`NonFiniteLoss`."""
    last: deque[Mapping[str, Any]] = deque(maxlen=precise_bn_batches)
    logs = train_epoch(model, keep_last(train_batches, last), method, optimizers, epoch, epochs, device, autocast,
                       log_every=0, steps_per_epoch=steps_per_epoch, on_step=on_step)
    lrs = {"lr": optimizers.main.param_groups[0]["lr"], "aux_lr": optimizers.aux.param_groups[0]["lr"]}
    schedulers.step()
    recompute_bn_stats(unwrap(model), last, device, autocast)  # the running averages lag the final weights
    bad = first_nonfinite(unwrap(model).state_dict())  # e.g. an overflow in the last step's update
    if bad is not None:
        steps = int(logs["steps"])
        raise NonFiniteLoss(f"non-finite weights: epoch {epoch + 1}, step {steps}: {bad} is non-finite after "
                            f"the epoch's updates (every loss term was finite)", epoch + 1, steps, bad)
    t0 = time.perf_counter()
    pred = predict(unwrap(model), val_batches, device, autocast)
    return EpochResult(logs=logs, lrs=lrs, pred=pred, val_s=time.perf_counter() - t0)
