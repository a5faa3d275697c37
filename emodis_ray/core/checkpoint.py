"""Checkpoints and trained models, free of Ray: training state on disk, the exported model, and the
model's keyword arguments from a config.

A *checkpoint* (``checkpoint.pt``) holds everything a run needs to go on: plain (unwrapped) state dicts of
the model, both optimisers and schedulers, the epoch, every rank's RNG state and ``extra`` values. An
*exported model* (``model.pt``) holds the weights and what it takes to rebuild the model
(``model_kwargs`` for :func:`~emodis_ray.core.model.build_model`), the config, the epoch and its metrics.
Both load with ``torch.load(weights_only=True)``.

Nothing silently wrong: a file that cannot be read, lacks an entry or holds a NaN or infinite weight raises
:class:`BadCheckpoint`, one line naming the file (and the first bad tensor); no model is exported from such
weights.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emodis_ray.config import Config
from emodis_ray.core.errors import BadCheckpoint
from emodis_ray.core.methods import Optimizers, Schedulers
from emodis_ray.core.model import MultitaskModel, build_model, unwrap

CHECKPOINT_FILE = "checkpoint.pt"  # the file inside each Ray Train checkpoint folder
MODEL_FILE = "model.pt"  # the exported model in a run folder
CHECKPOINT_KEYS = ("model", "optimizers", "schedulers", "epoch", "extra", "rng")
MODEL_KEYS = ("model", "model_kwargs", "epoch")


def first_nonfinite(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first floating-point tensor with a NaN or infinite value (``name (k of n values)``),
    or None when every one is finite."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and (torch.is_floating_point(t) or torch.is_complex(t)):
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                return f"{name} ({int((~finite).sum())} of {t.numel()} values)"
    return None


def _one_line(e: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, cut to ``limit`` characters (torch's can run to pages)."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_state(path: str | Path, keys: tuple[str, ...] = CHECKPOINT_KEYS, what: str = "checkpoint") -> dict[str, Any]:
    """``torch.load`` a checkpoint (or, with ``MODEL_KEYS``, a model file) onto the CPU and check it: readable,
    every entry of ``keys`` present, every weight finite. Raises :class:`BadCheckpoint` naming the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BadCheckpoint(f"{what} {path} does not exist") from None
    except Exception as e:  # zip / pickle / EOF / unsupported-global errors of a truncated or foreign file
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
        kind = "truncated or corrupt" if zipped else "not a torch file"
        raise BadCheckpoint(f"{what} {path} is unreadable ({kind}): {type(e).__name__}: {_one_line(e)}") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise BadCheckpoint(f"{what} {path} is not an emodis {what}: it lacks {', '.join(missing)}")
    if not isinstance(state["model"], Mapping):
        raise BadCheckpoint(f"{what} {path}: its 'model' entry is not a state dict")
    bad = first_nonfinite(state["model"])
    if bad is None and "optimizers" in keys:  # NaN moments would turn the weights NaN at the first step
        bad = first_nonfinite(dict(_flat(state["optimizers"], "optimizers")))
    if bad is not None:
        raise BadCheckpoint(f"{what} {path} holds non-finite weights: the first is {bad}")
    return state


def _flat(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """The tensors of nested dicts and lists (an optimiser's state dict), with dotted names."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _flat(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flat(v, f"{prefix}.{i}")
    elif isinstance(obj, torch.Tensor):
        yield prefix, obj


def model_kwargs_of(cfg: Config, num_speakers: int) -> dict[str, Any]:
    """The keyword arguments of ``build_model`` for this config and speaker count."""
    return {"num_speakers": int(num_speakers), **asdict(cfg.model), "in_channels": 1 if cfg.features.grey else 3}


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
    schedulers given; returns ``{"epoch": ..., "extra": ...}``. The file is checked first (:func:`read_state`):
    an unreadable one, or one with non-finite weights, raises :class:`BadCheckpoint` and changes nothing."""
    state = read_state(path)
    unwrap(model).load_state_dict(state["model"])
    if optimizers is not None:
        optimizers.load_state_dict(state["optimizers"])
    if schedulers is not None and state["schedulers"] is not None:
        schedulers.load_state_dict(state["schedulers"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {"epoch": state["epoch"], "extra": state["extra"]}


def export_model(checkpoint: Path, path: Path) -> int:
    """The model part of a training checkpoint: plain weights, ``model_kwargs`` (for ``build_model``),
    ``num_speakers``, the config, the epoch and its metrics. Loads with ``torch.load(weights_only=True)``.
    Returns the epoch. A checkpoint that is unreadable, incomplete or holds a non-finite weight raises
    :class:`BadCheckpoint` (naming it and the first bad tensor), and nothing is written."""
    state = read_state(checkpoint)
    extra = state["extra"]
    missing = [k for k in ("model_kwargs", "num_speakers", "config")
               if not isinstance(extra, Mapping) or k not in extra]
    if missing:
        raise BadCheckpoint(f"checkpoint {checkpoint} cannot be exported: its extra values lack "
                            f"{', '.join(missing)}")
    model = {"model": state["model"], "model_kwargs": extra["model_kwargs"], "num_speakers": extra["num_speakers"],
             "config": extra["config"], "epoch": state["epoch"], "metrics": extra.get("metrics", {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model, tmp)
    os.replace(tmp, path)
    return int(state["epoch"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MultitaskModel, dict[str, Any]]:
    """Rebuild a trained model from ``model.pt`` (no Ray needed); returns it in eval mode and the file's
    other entries (config, epoch, metrics, ...). A file that is unreadable (truncated, not a torch file),
    not an emodis model, or whose weights are non-finite or do not fit its own ``model_kwargs`` raises
    :class:`BadCheckpoint`, one line naming the file."""
    state = read_state(path, MODEL_KEYS, what="model file")
    try:
        model = build_model(**state["model_kwargs"])
        model.load_state_dict(state.pop("model"))
    except (TypeError, ValueError, RuntimeError) as e:
        raise BadCheckpoint(f"model file {path}: its weights do not fit its model_kwargs: {_one_line(e)}") from None
    return model.to(device).eval(), state
