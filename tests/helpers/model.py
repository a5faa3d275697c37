"""Small model inputs for the core tests: a batch of the loop's contract and a tiny model."""

from __future__ import annotations

import torch

from emodis_ray.core.model import build_model


def make_batch(b: int = 4, n: int = 3, d: int = 32, c: int = 3, t: int = 101, speakers: int = 6,
               seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.arange(b) % n + 1  # 1..n real segments per clip
    return {
        "audio": torch.randn(b, n, 1, 40, t, generator=g),
        "faces": torch.rand(b, n, c, d, d, generator=g) * 2 - 1,
        "mask": torch.arange(n)[None, :] < lengths[:, None],
        "emotion": torch.randint(0, 5, (b,), generator=g),
        "speaker": torch.randint(0, speakers, (b,), generator=g),
    }


def tiny_model(pooling: str = "mean", speakers: int = 6, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(num_speakers=speakers, width=0.125, emo_dim=16, spk_dim=8, pooling=pooling)
    return build_model(**{**args, **kw})
