import pytest
import torch
from helpers.model import make_batch, tiny_model

from emodis_ray.core.model import ModelOutput, build_model, flops_per_clip, unwrap

torch.set_num_threads(1)


def forward(model, batch) -> ModelOutput:
    return model(batch["audio"], batch["faces"], batch["mask"])


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_output_shapes_d32(pooling):
    model = tiny_model(pooling, speakers=7)
    out = forward(model, make_batch(b=4, n=3, d=32))
    assert out.emo_emb.shape == (4, 16) and out.spk_emb.shape == (4, 8)
    assert out.emo_logits.shape == (4, 5) and out.aux_emo_logits.shape == (4, 5)
    assert out.spk_logits.shape == (4, 7) and out.aux_spk_logits.shape == (4, 7)


def test_output_shapes_d224_grey_and_short_audio():
    model = build_model(num_speakers=3, width=0.25, emo_dim=8, spk_dim=8, pooling="mean", in_channels=1)
    model.eval()
    with torch.no_grad():
        out = forward(model, make_batch(b=1, n=2, d=224, c=1, t=20, speakers=3))
    assert out.emo_logits.shape == (1, 5) and out.spk_logits.shape == (1, 3)
    assert model.visual_trunk.net[-1][0].kernel_size == (6, 6)  # fc6 is the paper's 6x6 conv


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("train", [True, False])
def test_padded_segments_have_no_influence(pooling, train):
    model = tiny_model(pooling).train(train)
    a = make_batch(b=4, n=3)
    b = {k: v.clone() for k, v in a.items()}
    pad = ~b["mask"]
    assert pad.any()
    b["audio"][pad] = torch.randn_like(b["audio"][pad]) * 100 + 7
    b["faces"][pad] = torch.rand_like(b["faces"][pad])
    with torch.no_grad():
        oa, ob = forward(model, a), forward(model, b)
    for name in ("emo_emb", "spk_emb", "emo_logits", "spk_logits", "aux_emo_logits", "aux_spk_logits"):
        assert torch.equal(getattr(oa, name), getattr(ob, name)), name


def test_clip_without_real_segments_is_finite():
    model = tiny_model("attention").eval()
    batch = make_batch(b=2, n=2)
    batch["mask"][1] = False
    with torch.no_grad():
        out = forward(model, batch)
    assert torch.isfinite(out.emo_logits).all()


def test_parameter_groups_partition_the_model():
    model = tiny_model("attention")
    groups = [list(model.encoder_parameters()), list(model.primary_head_parameters()),
              list(model.aux_head_parameters())]
    ids = [{id(p) for p in g} for g in groups]
    assert sum(len(i) for i in ids) == len(set().union(*ids)) == len(list(model.parameters()))


def test_unwrap_and_flops():
    model = tiny_model()

    class Wrapper(torch.nn.Module):  # stands in for DDP
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap(Wrapper(torch.compile(model))) is model
    full = make_batch(b=2, n=3)
    full["mask"][:] = True
    half = {**full, "mask": full["mask"].clone()}
    half["mask"][:, 1:] = False
    f_full, f_half = flops_per_clip(model, full), flops_per_clip(model, half)
    assert f_full > 0 and 2.5 < f_full / f_half < 3.5  # the trunks dominate and run on real segments only
    assert model.training


def test_nhwc_weights_give_the_nchw_model_s_numbers_and_checkpoints_load_into_either():
    nhwc, nchw = tiny_model(), tiny_model(channels_last=False)
    conv = nhwc.audio_trunk.net[2][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert nchw.audio_trunk.net[2][0].weight.is_contiguous()
    nchw.load_state_dict(nhwc.state_dict())  # a checkpoint does not carry the layout
    batch = make_batch(b=3, n=3)
    for train in (True, False):
        a, b = forward(nhwc.train(train), batch), forward(nchw.train(train), batch)
        for name in ("emo_emb", "spk_emb", "emo_logits", "spk_logits"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-5)
    a.emo_logits.sum().backward()
    b.emo_logits.sum().backward()
    torch.testing.assert_close(nhwc.audio_trunk.net[2][0].weight.grad, nchw.audio_trunk.net[2][0].weight.grad,
                               rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("given", [None, "512"])
def test_the_package_bounds_onednn_kernel_cache_unless_the_user_set_it(given: str | None) -> None:
    """Every process that runs the model imports the package, which caps oneDNN's per-shape kernel cache before
    the first kernel (a worker's memory otherwise grew with the batch shapes it had seen); a user's value wins.
    The check runs a convolution in a fresh interpreter, as a Ray worker would."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if given is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = given
    code = ("import emodis_ray, os, torch; torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3));"
            "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == (given or "64")
