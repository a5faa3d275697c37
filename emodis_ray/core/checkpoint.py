"""Checkpoints and trained models, free of Ray: training state on disk, the exported model, and the
model's keyword arguments from a config.

A *checkpoint* (``checkpoint.pt``) holds everything a run needs to go on: plain (unwrapped) state dicts of
the model, both optimisers and schedulers, the epoch, every rank's RNG state and ``extra`` values. An
*exported model* (``model.pt``) holds the weights and what it takes to rebuild the model
(``model_kwargs`` for :func:`~emodis_ray.core.model.build_model`), the config, the epoch and its metrics.
Both load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emodis_ray.config import Config
from emodis_ray.core.methods import Optimizers, Schedulers
from emodis_ray.core.model import MultitaskModel, build_model, unwrap

CHECKPOINT_FILE = "checkpoint.pt"  # the file inside each Ray Train checkpoint folder
MODEL_FILE = "model.pt"  # the exported model in a run folder


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


def export_model(checkpoint: Path, path: Path) -> int:
    """The model part of a training checkpoint: plain weights, ``model_kwargs`` (for ``build_model``),
    ``num_speakers``, the config, the epoch and its metrics. Loads with ``torch.load(weights_only=True)``.
    Returns the epoch."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    extra = state["extra"]
    model = {"model": state["model"], "model_kwargs": extra["model_kwargs"], "num_speakers": extra["num_speakers"],
             "config": extra["config"], "epoch": state["epoch"], "metrics": extra.get("metrics", {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model, tmp)
    os.replace(tmp, path)
    return int(state["epoch"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MultitaskModel, dict[str, Any]]:
    """Rebuild a trained model from ``model.pt`` (no Ray needed); returns it in eval mode and the file's
    other entries (config, epoch, metrics, ...)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(**state["model_kwargs"])
    model.load_state_dict(state.pop("model"))
    return model.to(device).eval(), state
