import contextlib
import random

import numpy as np
import pytest
import torch
from helpers.model import make_batch, tiny_model

from emodis_ray.core.checkpoint import load_checkpoint, save_checkpoint
from emodis_ray.core.loop import (
    autocast_context,
    evaluate,
    predict,
    recompute_bn_stats,
    seed_everything,
    train_epoch,
)
from emodis_ray.core.methods import build_method, build_schedulers

torch.set_num_threads(1)
CPU = torch.device("cpu")


def learnable_batches(n_batches: int = 6, b: int = 8, speakers: int = 4, seed: int = 0) -> list[dict]:
    """Class-dependent means: emotion shifts some mel bins, identity shifts the face."""
    g = torch.Generator().manual_seed(seed)
    emo_pattern = torch.randn(5, 40, 1, generator=g) * 1.5  # [5, mel, 1]
    spk_pattern = torch.randn(speakers, 3, 1, 1, generator=g)  # [P, C, 1, 1]
    out = []
    for _ in range(n_batches):
        batch_seed = int(torch.randint(1 << 30, (1,), generator=g))
        batch = make_batch(b=b, n=2, d=16, t=24, speakers=speakers, seed=batch_seed)
        batch["audio"] += emo_pattern[batch["emotion"]][:, None, None]  # [B, 1, 1, 40, 1] broadcast
        batch["faces"] = (0.3 * batch["faces"] + 0.5 * spk_pattern[batch["speaker"]][:, None]).clamp(-1, 1)
        out.append(batch)
    return out


def test_mtl_loss_goes_down_and_evaluate_has_metrics():
    seed_everything(0)
    data = learnable_batches()
    model = tiny_model(speakers=4)
    method = build_method("mtl")
    opt = method.optimizers(model, lr=3e-3, aux_lr=3e-3)
    sched = build_schedulers(opt, lr_decay=0.9)
    history = []
    for epoch in range(4):
        history.append(train_epoch(model, data, method, opt, epoch, 4, CPU, contextlib.nullcontext(),
                                   log_every=2))
        sched.step()
    first, last = history[0], history[-1]
    assert last["loss"] < first["loss"] * 0.8, [h["loss"] for h in history]
    assert first["steps"] == 6 and first["clips"] == 48
    assert first["clips_per_s"] > 0 and 0.0 <= first["data_wait_frac"] < 1.0
    recompute_bn_stats(model, data, CPU)  # as the trainer does after every epoch (precise BatchNorm)
    m = evaluate(model, data, CPU)
    assert {"emo_f1", "emo_acc", "spk_acc", "aux_emo_f1", "aux_spk_acc", "loss_emo", "loss_spk",
            "loss_aux_emo", "loss_aux_spk", "n"} <= set(m)
    assert 0.0 <= m["emo_f1"] <= 1.0 and m["n"] == 48
    assert m["spk_acc"] > 0.5  # identity is easy here
    assert not model.training


def test_train_epoch_reports_gr_lambda_ramp():
    data = learnable_batches(n_batches=2, b=4)
    model = tiny_model(speakers=4)
    method = build_method("gr", grl_lambda=1.0, grl_schedule="ramp")
    opt = method.optimizers(model, lr=1e-3, aux_lr=1e-3)
    logs = train_epoch(model, data, method, opt, 0, 2, CPU, contextlib.nullcontext(), log_every=0)
    # progress 0 and 0.25 within epoch 0 of 2
    assert logs["lam"] == pytest.approx((0.0 + (2 / (1 + np.exp(-2.5)) - 1)) / 2)


def test_predict_returns_embeddings():
    model = tiny_model(speakers=4)
    pred = predict(model, learnable_batches(n_batches=2, b=4), CPU, embeddings=True)
    assert pred["emo_emb"].shape == (8, 16) and pred["spk_emb"].shape == (8, 8)
    assert pred["emo_pred"].shape == (8,)


def test_checkpoint_round_trip(tmp_path):
    batch = make_batch()
    model = tiny_model("attention")
    method = build_method("alt")
    opt = method.optimizers(model, lr=1e-3, aux_lr=1e-3)
    sched = build_schedulers(opt, 0.9)
    method.step(model, batch, opt, 0.0, contextlib.nullcontext())
    sched.step()
    path = tmp_path / "ckpt" / "state.pt"
    seed_everything(123)
    save_checkpoint(path, torch.compile(model), opt, sched, epoch=3, extra={"best_f1": 0.5, "run": "a"})
    expected_rng = (torch.rand(3), np.random.rand(3), random.random())

    raw = torch.load(path, weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in raw["model"])

    fresh = tiny_model("attention")
    torch.manual_seed(999)
    fresh_opt = method.optimizers(fresh, lr=5e-2, aux_lr=5e-2)
    fresh_sched = build_schedulers(fresh_opt, 0.5)
    info = load_checkpoint(path, fresh, fresh_opt, fresh_sched)
    assert info == {"epoch": 3, "extra": {"best_f1": 0.5, "run": "a"}}
    assert torch.equal(torch.rand(3), expected_rng[0])
    assert np.array_equal(np.random.rand(3), expected_rng[1]) and random.random() == expected_rng[2]

    model.eval(), fresh.eval()
    with torch.no_grad():
        a = model(batch["audio"], batch["faces"], batch["mask"])
        b = fresh(batch["audio"], batch["faces"], batch["mask"])
    assert torch.equal(a.emo_logits, b.emo_logits) and torch.equal(a.aux_spk_logits, b.aux_spk_logits)
    for name in ("main", "aux"):
        sa, sb = getattr(opt, name).state_dict(), getattr(fresh_opt, name).state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        for i, st in sa["state"].items():
            for k, v in st.items():
                assert torch.equal(v, sb["state"][i][k])
    assert fresh_sched.main.get_last_lr() == sched.main.get_last_lr()


def test_autocast_context_and_seeding():
    assert isinstance(autocast_context("cpu", "bf16"), contextlib.nullcontext)
    assert isinstance(autocast_context("cpu", "fp32"), contextlib.nullcontext)
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        ctx = autocast_context("cuda", "bf16")
    assert isinstance(ctx, torch.autocast)
    seed_everything(7)
    a = (torch.rand(2), np.random.rand(2), random.random())
    seed_everything(7)
    assert torch.equal(a[0], torch.rand(2)) and np.array_equal(a[1], np.random.rand(2))
    assert a[2] == random.random()


def test_precise_bn_sets_the_statistics_of_the_current_weights():
    """After recompute_bn_stats a BatchNorm's running mean is the mean of its inputs over the batches under
    the current weights (not the lagging average of training), its momentum is back, nothing else moved."""
    seed_everything(0)
    data = learnable_batches(n_batches=3, b=8)
    model = tiny_model(speakers=4, dropout=0.5)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():  # stale statistics, as after fast-moving weights
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
    seen: list[torch.Tensor] = []
    hook = bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    params = {k: v.clone() for k, v in model.named_parameters()}
    model.train()
    rng = torch.get_rng_state()
    assert recompute_bn_stats(model, data, CPU) == 3
    hook.remove()
    # each batch's per-channel mean over (N, H, W), averaged with equal weights over the batches
    want = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0)
    torch.testing.assert_close(bn.running_mean, want, rtol=1e-5, atol=1e-6)
    want_var = torch.stack([x.transpose(0, 1).flatten(1).var(1, unbiased=True) for x in seen]).mean(0)
    torch.testing.assert_close(bn.running_var, want_var, rtol=1e-4, atol=1e-6)
    assert bn.momentum == 0.1 and model.training  # restored
    assert torch.equal(torch.get_rng_state(), rng)  # dropout stayed off: no random numbers drawn
    assert all(torch.equal(v, params[k]) for k, v in model.named_parameters())
    # deterministic: the same batches give the same statistics
    first = bn.running_mean.clone()
    recompute_bn_stats(model, data, CPU)
    assert torch.equal(bn.running_mean, first)
    # no batches (train.precise_bn_batches=0): the statistics stay as they are
    var = bn.running_var.clone()
    assert recompute_bn_stats(model, [], CPU) == 0
    assert torch.equal(bn.running_mean, first) and torch.equal(bn.running_var, var)
