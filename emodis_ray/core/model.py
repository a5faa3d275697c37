"""The two-trunk multitask model (docs/design.md §5): architecture only, no losses.

Shapes: B clips, N segments per clip, S = number of real (unpadded) segments in the batch,
T log-mel frames per segment, D face size, C face channels, F = trunk feature size.

Padding: the trunks only ever see the real segments (gathered by the mask), so padded segments
cannot reach BatchNorm statistics, the pooling or anything downstream, in train and eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._pytree import register_dataclass
from torch.utils.flop_counter import FlopCounterMode

EmbeddingFn = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


def _conv(cin: int, cout: int, kernel: int | tuple[int, int], stride: int | tuple[int, int] = 1,
          padding: int | tuple[int, int] = 0) -> nn.Sequential:
    """Conv2d + BatchNorm + ReLU (the conv has no bias: BatchNorm supplies it)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _ch(n: int, width: float) -> int:
    return max(8, int(round(n * width)))


class AudioTrunk(nn.Module):
    """One log-mel patch [S, 1, 40, T] -> one vector [S, F] (after Nagrani et al. 2020).

    With 40 mel bins the frequency axis is 1 after fc6; the remaining time axis is averaged.
    Any T >= 11 works (101 frames for 1 s at a 10 ms hop).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: _ch(n, width)
        self.out_dim = c(512)
        self.net = nn.Sequential(
            _conv(1, c(96), (5, 7), padding=(2, 3)),  # [S, 96, 40, T]
            nn.MaxPool2d((1, 3), stride=(1, 2)),  # [S, 96, 40, (T-3)//2+1]
            _conv(c(96), c(256), 5, stride=(2, 1), padding=2),  # [S, 256, 20, T1]
            nn.MaxPool2d(3, stride=(2, 1)),  # [S, 256, 9, T1-2]
            _conv(c(256), c(384), 3, padding=1),  # [S, 384, 9, T2]
            _conv(c(384), c(256), 3, padding=1),  # [S, 256, 9, T2]
            _conv(c(256), c(256), 3, padding=1),  # [S, 256, 9, T2]
            nn.MaxPool2d(3, stride=2),  # [S, 256, 4, T3]
            _conv(c(256), self.out_dim, (4, 1)),  # [S, 512, 1, T3]  (fc6)
        )

    def forward(self, x: Tensor) -> Tensor:  # x: [S, 1, n_mels, T]
        return self.net(x).mean(dim=(2, 3))  # [S, F]


class VisualTrunk(nn.Module):
    """One face [S, C, D, D] -> one vector [S, F], the same conv family as the audio trunk.

    The max pools are padded so that small faces (e.g. 32 px) never shrink below 1x1, and an adaptive
    average pool brings the last map to the 6x6 that fc6 (a 6x6 conv, as in the paper) turns into one
    vector: 224 px -> 7x7 -> 6x6 -> 1x1; 32 px -> 1x1 -> 6x6 -> 1x1. Any D >= 1 works.
    """

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        c = lambda n: _ch(n, width)
        self.out_dim = c(512)
        self.net = nn.Sequential(
            _conv(in_channels, c(96), 7, stride=2, padding=3),  # [S, 96, D/2, D/2]
            nn.MaxPool2d(3, stride=2, padding=1),  # [S, 96, D/4, D/4]
            _conv(c(96), c(256), 5, stride=2, padding=2),  # [S, 256, D/8, D/8]
            nn.MaxPool2d(3, stride=2, padding=1),  # [S, 256, D/16, D/16]
            _conv(c(256), c(256), 3, padding=1),
            _conv(c(256), c(256), 3, padding=1),
            _conv(c(256), c(256), 3, padding=1),  # [S, 256, D/16, D/16]
            nn.MaxPool2d(3, stride=2, padding=1),  # [S, 256, D/32, D/32]
            nn.AdaptiveAvgPool2d(6),  # [S, 256, 6, 6]
            _conv(c(256), self.out_dim, 6),  # [S, 512, 1, 1]  (fc6)
        )

    def forward(self, x: Tensor) -> Tensor:  # x: [S, C, D, D]
        return self.net(x).flatten(1)  # [S, F]


class TemporalPool(nn.Module):
    """Masked pooling over the N segments of a clip: ``mean`` or ``attention``.

    Padded slots get zero weight; a clip with no real segment pools to zeros (never NaN).
    """

    def __init__(self, dim: int, kind: str = "mean") -> None:
        super().__init__()
        if kind not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got {kind!r}")
        self.kind = kind
        if kind == "attention":
            hidden = max(16, dim // 4)
            self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x: [B, N, F], mask: [B, N] bool
        m = mask.to(x.dtype).unsqueeze(-1)  # [B, N, 1]
        if self.kind == "mean":
            return (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # [B, F]
        s = self.score(x)  # [B, N, 1]
        s = s.masked_fill(~mask.unsqueeze(-1), torch.finfo(s.dtype).min)
        w = torch.softmax(s, dim=1) * m  # [B, N, 1]; zero on padding (and for empty clips)
        return (w * x).sum(1)  # [B, F]


def _per_segment(trunk: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """Run ``trunk`` on the real segments only; padded slots of the result are zeros.

    x: [B, N, ...], mask: [B, N] -> [B, N, F]. The boolean gather costs one host sync per call.
    """
    feats = trunk(x[mask])  # [S, F]
    out = feats.new_zeros(*mask.shape, feats.shape[-1])  # [B, N, F]
    return out.masked_scatter(mask.unsqueeze(-1), feats)  # [B, N, F]


@dataclass(frozen=True)
class ModelOutput:
    """Every embedding and every logit of one forward pass."""

    emo_emb: Tensor  # [B, emo_dim]
    spk_emb: Tensor  # [B, spk_dim]
    emo_logits: Tensor  # [B, num_emotions]   primary: emotion from the emotion embedding
    spk_logits: Tensor  # [B, num_speakers]   primary: identity from the speaker embedding
    aux_emo_logits: Tensor  # [B, num_emotions]   aux: emotion from the speaker embedding
    aux_spk_logits: Tensor  # [B, num_speakers]   aux: identity from the emotion embedding


# A pytree node, so that DDP (find_unused_parameters=True) routes every field through its
# gradient-bookkeeping sink; outputs that a loss leaves unused are then handled by DDP.
register_dataclass(ModelOutput)


class MultitaskModel(nn.Module):
    """Audio + visual trunks -> masked temporal pooling -> concat -> emotion / speaker embeddings -> heads.

    ``spk_emb_fn`` / ``emo_emb_fn`` are applied to the speaker / emotion embedding on its way into the
    auxiliary head that reads it (gradient reversal, detach, or identity): the methods choose per call,
    and everything stays inside one ``forward`` so a DDP wrapper sees it.
    """

    def __init__(self, num_speakers: int, width: float = 1.0, emo_dim: int = 2048, spk_dim: int = 256,
                 pooling: str = "mean", num_emotions: int = 5, dropout: float = 0.0,
                 in_channels: int = 3, aux_hidden: int = 0) -> None:
        super().__init__()
        self.audio_trunk = AudioTrunk(width)
        self.visual_trunk = VisualTrunk(width, in_channels)
        self.audio_pool = TemporalPool(self.audio_trunk.out_dim, pooling)
        self.visual_pool = TemporalPool(self.visual_trunk.out_dim, pooling)
        joint = self.audio_trunk.out_dim + self.visual_trunk.out_dim
        self.dropout = nn.Dropout(dropout)
        self.emo_embed = nn.Sequential(nn.Linear(joint, emo_dim), nn.ReLU())
        self.spk_embed = nn.Sequential(nn.Linear(joint, spk_dim), nn.ReLU())
        self.emo_head = nn.Linear(emo_dim, num_emotions)
        self.spk_head = nn.Linear(spk_dim, num_speakers)
        self.aux_emo_head = _aux_head(spk_dim, num_emotions, aux_hidden)  # emotion from the speaker embedding
        self.aux_spk_head = _aux_head(emo_dim, num_speakers, aux_hidden)  # identity from the emotion embedding

    def encoder_modules(self) -> list[nn.Module]:
        return [self.audio_trunk, self.visual_trunk, self.audio_pool, self.visual_pool,
                self.emo_embed, self.spk_embed]

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        for m in self.encoder_modules():
            yield from m.parameters()

    def primary_head_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.emo_head.parameters()
        yield from self.spk_head.parameters()

    def aux_head_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.aux_emo_head.parameters()
        yield from self.aux_spk_head.parameters()

    def forward(self, audio: Tensor, faces: Tensor, mask: Tensor, spk_emb_fn: EmbeddingFn = _identity,
                emo_emb_fn: EmbeddingFn = _identity, encoder_grad: bool = True) -> ModelOutput:
        """audio: [B, N, 1, 40, T], faces: [B, N, C, D, D], mask: [B, N] bool (True = real segment).

        ``encoder_grad=False`` runs the encoder and the primary heads without autograd, so that only the
        aux heads are in the graph (the aux step of ALT/CONF: cheaper, and DDP sees the rest as unused).
        """
        with contextlib.nullcontext() if encoder_grad else torch.no_grad():
            h = self.trunk_features(audio, faces, mask)  # [B, Fa+Fv]
        return self.from_features(h, spk_emb_fn, emo_emb_fn, encoder_grad)

    def trunk_features(self, audio: Tensor, faces: Tensor, mask: Tensor) -> Tensor:
        """The two trunks, pooled over the segments and concatenated: [B, Fa+Fv]."""
        a = self.audio_pool(_per_segment(self.audio_trunk, audio, mask), mask)  # [B, Fa]
        v = self.visual_pool(_per_segment(self.visual_trunk, faces, mask), mask)  # [B, Fv]
        return torch.cat([a, v], dim=-1)  # [B, Fa+Fv]

    def from_features(self, h: Tensor, spk_emb_fn: EmbeddingFn = _identity, emo_emb_fn: EmbeddingFn = _identity,
                      encoder_grad: bool = True) -> ModelOutput:
        """Everything after the trunks: embeddings and heads, from pooled trunk features ``h`` [B, Fa+Fv]."""
        with contextlib.nullcontext() if encoder_grad else torch.no_grad():
            h = self.dropout(h)  # [B, Fa+Fv]
            emo_emb = self.emo_embed(h)  # [B, emo_dim]
            spk_emb = self.spk_embed(h)  # [B, spk_dim]
            emo_logits = self.emo_head(emo_emb)  # [B, num_emotions]
            spk_logits = self.spk_head(spk_emb)  # [B, num_speakers]
        aux_emo_logits = self.aux_emo_head(spk_emb_fn(spk_emb))  # [B, num_emotions]
        aux_spk_logits = self.aux_spk_head(emo_emb_fn(emo_emb))  # [B, num_speakers]
        return ModelOutput(emo_emb, spk_emb, emo_logits, spk_logits, aux_emo_logits, aux_spk_logits)


class HeadsOnly(nn.Module):
    """The embedding layers and heads of a :class:`MultitaskModel`, trained on fixed pooled trunk features (the
    frozen-trunk screen). It has the model's interface, ``forward(h, faces, mask, ...)`` with the features
    ``h`` [B, Fa+Fv] in the audio slot (``faces`` and ``mask`` are ignored), so every method trains it unchanged;
    its "encoder" is the two embedding layers."""

    def __init__(self, model: MultitaskModel) -> None:
        super().__init__()
        self.model = model
        self.emo_head, self.spk_head = model.emo_head, model.spk_head

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.model.emo_embed.parameters()
        yield from self.model.spk_embed.parameters()

    def aux_head_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.model.aux_head_parameters()

    def forward(self, h: Tensor, faces: Tensor | None = None, mask: Tensor | None = None,
                spk_emb_fn: EmbeddingFn = _identity, emo_emb_fn: EmbeddingFn = _identity,
                encoder_grad: bool = True) -> ModelOutput:
        return self.model.from_features(h, spk_emb_fn, emo_emb_fn, encoder_grad)


def _aux_head(dim: int, classes: int, hidden: int) -> nn.Module:
    """An auxiliary head: linear (``hidden == 0``, the paper's) or an MLP with one hidden layer."""
    if hidden <= 0:
        return nn.Linear(dim, classes)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def build_model(num_speakers: int, width: float, emo_dim: int, spk_dim: int, pooling: str,
                num_emotions: int = 5, dropout: float = 0.0, in_channels: int = 3,
                aux_hidden: int = 0, channels_last: bool = True) -> MultitaskModel:
    """Plain keyword arguments: ``build_model(num_speakers=P, **asdict(cfg.model), in_channels=C)``.

    ``channels_last``: the trunks' convolution weights in the NHWC layout, so every convolution after the first
    runs on NHWC activations. oneDNN (CPU) and cuDNN (GPU) run NHWC convolutions without reordering each call;
    on one CPU thread it made the training pass 1.22x and the validation pass 1.56x faster, with the same numbers
    up to float rounding (`emodis bench train`, docs/design.md §9). The layout is not part of a checkpoint: the
    weights load into either."""
    model = MultitaskModel(num_speakers=num_speakers, width=width, emo_dim=emo_dim, spk_dim=spk_dim,
                           pooling=pooling, num_emotions=num_emotions, dropout=dropout,
                           in_channels=in_channels, aux_hidden=aux_hidden)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def unwrap(model: nn.Module) -> MultitaskModel:
    """The plain model under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model  # type: ignore[return-value]


def flops_per_clip(model: nn.Module, batch: dict[str, Tensor]) -> float:
    """Forward FLOPs per clip, counted on ``batch`` (in eval mode, without autograd).

    Only real segments run through the trunks, so the figure holds at this batch's fill ratio. A training
    step costs about 3x this (forward + backward); ALT/CONF add one more forward for their aux step.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(batch["audio"], batch["faces"], batch["mask"])
    finally:
        model.train(was_training)
    return counter.get_total_flops() / batch["mask"].shape[0]


__all__ = [
    "AudioTrunk", "VisualTrunk", "TemporalPool", "ModelOutput", "MultitaskModel", "HeadsOnly", "build_model",
    "unwrap", "flops_per_clip",
]
