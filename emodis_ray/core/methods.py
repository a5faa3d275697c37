"""Training objectives and disentanglement methods (docs/design.md §6): STL, MTL, GR, ALT, CONF behind one interface.

Terms (e, s the emotion and speaker labels):
    L_prim = w_em_prim * CE(emo_logits, e) + w_spk_prim * CE(spk_logits, s)
    L_aux  = w_spk_aux * CE(aux_emo_logits, e) + w_em_aux * CE(aux_spk_logits, s)
``aux_emo_logits`` is emotion predicted from the speaker embedding ("spk2emo" leakage), ``aux_spk_logits``
identity predicted from the emotion embedding ("emo2spk"). ``direction`` picks which aux terms are
adversarial; the aux head of the other direction still trains, on detached embeddings, to watch leakage.

Optimisers: ``main`` (Adam, lr) over the encoder and the primary heads the method trains, ``aux``
(Adam, aux_lr) over the two aux heads. Single-step methods (STL, MTL, GR) step both after one backward;
ALT and CONF run ``adv_steps`` aux steps (``aux`` only) and then a primary step (``main`` only) on every batch.

One scale: the adversarial term of every method is weighted by the aux weights (``w_spk_aux``, ``w_em_aux``):
GR reverses ``lambda`` times their gradient, ALT maximises ``w * CE`` (or, with ``alt_objective="entropy"``, the
label-free ``w * H(softmax(aux))``), CONF minimises ``w * H(u, softmax(aux))``.

DDP. Every step calls the model once per sub-step through ``model(...)``, so a DDP wrapper sees it.
- STL, MTL, GR: every output that requires grad enters the loss (unused ones with weight 0), so every
  parameter gets a gradient each step: ``find_unused_parameters=False`` works. (STL's idle primary head
  gets zero gradients and is not in ``main``, so it never changes.)
- ALT, CONF: the aux step runs the encoder without autograd (``encoder_grad=False``): only the aux heads
  get gradients, so DDP needs ``find_unused_parameters=True`` (``Method.find_unused_parameters``).
  ``ModelOutput`` is a registered pytree node, so DDP's unused-parameter bookkeeping sees every field.
  The alternative, two DDP wrappers (encoder + primary heads, aux heads), would need the model split in two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emodis_ray.config import DIRECTIONS, DISENTANGLING, METHODS, MethodConfig
from emodis_ray.core.model import ModelOutput, unwrap

_DEFAULTS = MethodConfig()  # the defaults live with the config, once


class GradReverse(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by -lambda (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lam * grad, None


def grad_reverse(x: Tensor, lam: float) -> Tensor:
    return GradReverse.apply(x, lam)


def grl_lambda_at(progress: float, lam_max: float, schedule: str) -> float:
    """lambda at training progress p in [0, 1]: constant, or ramped lam_max * (2 / (1 + exp(-10 p)) - 1)."""
    if schedule == "constant":
        return lam_max
    if schedule == "ramp":
        p = min(max(progress, 0.0), 1.0)
        return lam_max * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)
    raise ValueError(f"grl_schedule must be 'constant' or 'ramp', got {schedule!r}")


def confusion_loss(logits: Tensor) -> Tensor:
    """H(u, softmax(logits)): cross-entropy from the uniform distribution, mean over the batch.

    Equals mean over classes of -log softmax; its minimum, log K, is reached at a uniform prediction.
    """
    return -F.log_softmax(logits.float(), dim=-1).mean(dim=-1).mean()


def entropy(logits: Tensor) -> Tensor:
    """H(softmax(logits)), mean over the batch: maximal (log K) for a uniform prediction. Label-free."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


def _detach(x: Tensor) -> Tensor:
    return x.detach()


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass
class Optimizers:
    main: torch.optim.Optimizer  # encoder + primary heads, Adam at lr
    aux: torch.optim.Optimizer  # aux heads, Adam at aux_lr

    def state_dict(self) -> dict[str, Any]:
        return {"main": self.main.state_dict(), "aux": self.aux.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.main.load_state_dict(state["main"])
        self.aux.load_state_dict(state["aux"])


@dataclass
class Schedulers:
    main: torch.optim.lr_scheduler.LRScheduler
    aux: torch.optim.lr_scheduler.LRScheduler

    def step(self) -> None:
        """Once per epoch."""
        self.main.step()
        self.aux.step()

    def state_dict(self) -> dict[str, Any]:
        return {"main": self.main.state_dict(), "aux": self.aux.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.main.load_state_dict(state["main"])
        self.aux.load_state_dict(state["aux"])


def build_schedulers(optimizers: Optimizers, lr_decay: float) -> Schedulers:
    """Both learning rates decay by ``lr_decay`` per epoch (paper: x0.9)."""
    exp = torch.optim.lr_scheduler.ExponentialLR
    return Schedulers(exp(optimizers.main, gamma=lr_decay), exp(optimizers.aux, gamma=lr_decay))


@dataclass(frozen=True)
class Method:
    """One training objective. ``step`` does the forward/backward/optimiser steps of one batch."""

    name: str
    direction: str = _DEFAULTS.direction
    w_em_prim: float = _DEFAULTS.w_em_prim
    w_spk_prim: float = _DEFAULTS.w_spk_prim
    w_spk_aux: float = _DEFAULTS.w_spk_aux  # CE(aux_emo_logits, e): emotion from the speaker embedding
    w_em_aux: float = _DEFAULTS.w_em_aux  # CE(aux_spk_logits, s): identity from the emotion embedding
    grl_lambda: float = _DEFAULTS.grl_lambda
    grl_schedule: str = _DEFAULTS.grl_schedule
    adv_steps: int = _DEFAULTS.adv_steps  # ALT/CONF: aux steps per batch
    alt_objective: str = _DEFAULTS.alt_objective  # ALT: "ce" (the paper's -L_aux) or "entropy" (label-free)

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.name!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        grl_lambda_at(0.0, self.grl_lambda, self.grl_schedule)  # validates the schedule
        if self.adv_steps < 1:
            raise ValueError(f"adv_steps must be >= 1, got {self.adv_steps}")
        if self.alt_objective not in ("ce", "entropy"):
            raise ValueError(f"alt_objective must be 'ce' or 'entropy', got {self.alt_objective!r}")

    # --- which parts move -------------------------------------------------------------------------
    @property
    def adv_spk2emo(self) -> bool:
        """Is the emotion-from-speaker aux term adversarial?"""
        return self.name in DISENTANGLING and self.direction in ("spk2emo", "both")

    @property
    def adv_emo2spk(self) -> bool:
        """Is the identity-from-emotion aux term adversarial?"""
        return self.name in DISENTANGLING and self.direction in ("emo2spk", "both")

    @property
    def two_step(self) -> bool:
        return self.name in ("alt", "conf")

    @property
    def find_unused_parameters(self) -> bool:
        """What a DDP wrapper of the model needs for this method (see the module docstring)."""
        return self.two_step

    def optimizers(self, model: nn.Module, lr: float, aux_lr: float, weight_decay: float = 0.0) -> Optimizers:
        m = unwrap(model)
        main = list(m.encoder_parameters())
        if self.name != "stl-speaker":
            main += list(m.emo_head.parameters())
        if self.name != "stl-emotion":
            main += list(m.spk_head.parameters())
        aux = list(m.aux_head_parameters())
        return Optimizers(torch.optim.Adam(main, lr=lr, weight_decay=weight_decay),
                          torch.optim.Adam(aux, lr=aux_lr, weight_decay=weight_decay))

    # --- losses -----------------------------------------------------------------------------------
    def terms(self, out: ModelOutput, emotion: Tensor, speaker: Tensor) -> dict[str, Tensor]:
        """Every unweighted term of one forward pass (fp32 scalars)."""
        return {
            "ce_emo": F.cross_entropy(out.emo_logits.float(), emotion),
            "ce_spk": F.cross_entropy(out.spk_logits.float(), speaker),
            "ce_aux_emo": F.cross_entropy(out.aux_emo_logits.float(), emotion),
            "ce_aux_spk": F.cross_entropy(out.aux_spk_logits.float(), speaker),
            "conf_aux_emo": confusion_loss(out.aux_emo_logits),
            "conf_aux_spk": confusion_loss(out.aux_spk_logits),
            "ent_aux_emo": entropy(out.aux_emo_logits),
            "ent_aux_spk": entropy(out.aux_spk_logits),
        }

    def primary_loss(self, t: dict[str, Tensor]) -> Tensor:
        if self.name == "stl-emotion":
            return t["ce_emo"]
        if self.name == "stl-speaker":
            return t["ce_spk"]
        return self.w_em_prim * t["ce_emo"] + self.w_spk_prim * t["ce_spk"]

    def aux_loss(self, t: dict[str, Tensor]) -> Tensor:
        return self.w_spk_aux * t["ce_aux_emo"] + self.w_em_aux * t["ce_aux_spk"]

    def adversarial(self, t: dict[str, Tensor], kind: str) -> Tensor:
        """The adversarial term of the primary step, with the aux weights of :meth:`aux_loss`:
        ``"confusion"``: w * H(u, softmax(aux)) (CONF); ``"entropy"``: -w * H(softmax(aux)) (label-free ALT);
        ``"ce"``: -w * CE(aux, label) (the paper's ALT)."""
        terms = {"confusion": ("conf_aux_emo", "conf_aux_spk", 1.0), "entropy": ("ent_aux_emo", "ent_aux_spk", -1.0),
                 "ce": ("ce_aux_emo", "ce_aux_spk", -1.0)}
        emo, spk, sign = terms[kind]
        loss = t[emo].new_zeros(())
        if self.adv_spk2emo:
            loss = loss + self.w_spk_aux * t[emo]
        if self.adv_emo2spk:
            loss = loss + self.w_em_aux * t[spk]
        return sign * loss

    # --- one batch --------------------------------------------------------------------------------
    def step(self, model: nn.Module, batch: dict[str, Tensor], optimizers: Optimizers, progress: float,
             autocast: AbstractContextManager[Any]) -> dict[str, float]:
        """Train on one batch (already on the device). ``autocast`` must be re-enterable (torch.autocast
        or nullcontext). Returns every term, the objectives and lambda, as floats."""
        if self.two_step:
            for _ in range(self.adv_steps):
                logs = self.aux_step(model, batch, optimizers, autocast)
            logs.update(self.primary_step(model, batch, optimizers, autocast))
        else:
            logs = self.joint_step(model, batch, optimizers, progress, autocast)
        return logs

    def joint_step(self, model: nn.Module, batch: dict[str, Tensor], optimizers: Optimizers,
                   progress: float, autocast: AbstractContextManager[Any]) -> dict[str, float]:
        """STL / MTL / GR: one forward, one backward, both optimisers step."""
        lam = grl_lambda_at(progress, self.grl_lambda, self.grl_schedule) if self.name == "gr" else 0.0
        grl: Callable[[Tensor], Tensor] = lambda x: grad_reverse(x, lam)
        model.zero_grad(set_to_none=True)
        with autocast:
            out = model(batch["audio"], batch["faces"], batch["mask"],
                        spk_emb_fn=grl if self.adv_spk2emo else _detach,
                        emo_emb_fn=grl if self.adv_emo2spk else _detach)
        t = self.terms(out, batch["emotion"], batch["speaker"])
        l_prim, l_aux = self.primary_loss(t), self.aux_loss(t)
        # The zero-weight term gives STL's idle primary head (and a zero-weighted aux head) a gradient,
        # so that every parameter takes part in every step (DDP without find_unused_parameters).
        loss = l_prim + l_aux + 0.0 * (out.emo_logits.sum() + out.spk_logits.sum())
        loss.backward()
        optimizers.main.step()
        optimizers.aux.step()
        return _floats(t, loss=l_prim + (l_aux if self.name == "gr" else 0.0), l_prim=l_prim,
                       l_aux=l_aux, lam=lam)

    def aux_step(self, model: nn.Module, batch: dict[str, Tensor], optimizers: Optimizers,
                 autocast: AbstractContextManager[Any]) -> dict[str, float]:
        """ALT/CONF (1): the aux heads minimise L_aux on detached embeddings; no other parameter moves.

        The encoder runs without autograd (forward only); in train mode its BatchNorm running statistics
        see the batch twice per step (here and in the primary step), which only speeds up their average."""
        model.zero_grad(set_to_none=True)
        with autocast:
            out = model(batch["audio"], batch["faces"], batch["mask"], spk_emb_fn=_detach,
                        emo_emb_fn=_detach, encoder_grad=False)
        t = self.terms(out, batch["emotion"], batch["speaker"])
        l_aux = self.aux_loss(t)
        l_aux.backward()
        optimizers.aux.step()
        return {"l_aux": l_aux.item()}

    def primary_step(self, model: nn.Module, batch: dict[str, Tensor], optimizers: Optimizers,
                     autocast: AbstractContextManager[Any]) -> dict[str, float]:
        """ALT/CONF (2): the encoder and primary heads minimise L_prim - L_aux_adv (ALT; or L_prim - w * H(aux)
        with the entropy objective) or L_prim + w * H(u, aux) (CONF) through the (frozen: not stepped) aux heads."""
        model.zero_grad(set_to_none=True)
        with autocast:
            out = model(batch["audio"], batch["faces"], batch["mask"],
                        spk_emb_fn=_identity if self.adv_spk2emo else _detach,
                        emo_emb_fn=_identity if self.adv_emo2spk else _detach)
        t = self.terms(out, batch["emotion"], batch["speaker"])
        l_prim = self.primary_loss(t)
        adv = self.adversarial(t, self.alt_objective if self.name == "alt" else "confusion")
        loss = l_prim + adv
        # Zero-weight terms: the non-adversarial aux head takes part too (it gets a zero gradient).
        (loss + 0.0 * (out.aux_emo_logits.sum() + out.aux_spk_logits.sum())).backward()
        optimizers.main.step()  # the aux heads' gradients are dropped at the next zero_grad
        return _floats(t, loss=loss, l_prim=l_prim, l_adv=adv, lam=0.0)


def _floats(terms: dict[str, Tensor], **more: Tensor | float) -> dict[str, float]:
    """Every logged value as a float; the tensors are copied to the host in one transfer."""
    items = {**terms, **more}
    keys = [k for k, v in items.items() if isinstance(v, Tensor)]
    vals = torch.stack([items[k].detach().float() for k in keys]).tolist()
    return {k: float(v) for k, v in {**items, **dict(zip(keys, vals, strict=True))}.items()}


def build_method(name: str, **options: Any) -> Method:
    """Plain keyword arguments: ``build_method(**asdict(cfg.method))``; options left out take the
    defaults of :class:`~emodis_ray.config.MethodConfig`."""
    return Method(name=name, **options)
