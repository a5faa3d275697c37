import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.model import make_batch, tiny_model

from emodis_ray.core.methods import (
    METHODS,
    build_method,
    build_schedulers,
    confusion_loss,
    grad_reverse,
    grl_lambda_at,
)

torch.set_num_threads(1)


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def changed(before, params) -> bool:
    return any(not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True))


def parts(model) -> dict[str, list[torch.nn.Parameter]]:
    return {"encoder": list(model.encoder_parameters()), "emo_head": list(model.emo_head.parameters()),
            "spk_head": list(model.spk_head.parameters()), "aux": list(model.aux_head_parameters())}


def run(method, model, batch, fn: str = "step"):
    """Apply one (sub-)step and report which parts of the model moved."""
    opt = method.optimizers(model, lr=1e-2, aux_lr=1e-2, weight_decay=0.0)
    before = {k: snapshot(v) for k, v in parts(model).items()}
    if fn == "step":
        logs = method.step(model, batch, opt, 0.5, torch.autocast("cpu", enabled=False))
    else:
        logs = getattr(method, fn)(model, batch, opt, torch.autocast("cpu", enabled=False))
    return {k: changed(before[k], v) for k, v in parts(model).items()}, logs, opt


def test_grad_reverse_multiplies_gradient_by_minus_lambda():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 4, dtype=torch.float64)
    y = grad_reverse(x, 0.37)
    assert torch.equal(y, x)
    y.backward(g)
    assert torch.equal(x.grad, -0.37 * g)
    # through a layer: the reversed gradient is exactly -lambda times the plain one
    lin = torch.nn.Linear(4, 2).double()
    xp = x.detach().clone().requires_grad_()
    lin(xp).square().sum().backward()
    xr = x.detach().clone().requires_grad_()
    lin(grad_reverse(xr, 2.5)).square().sum().backward()
    torch.testing.assert_close(xr.grad, -2.5 * xp.grad, rtol=0, atol=1e-12)


def test_grl_lambda_schedule():
    assert grl_lambda_at(0.3, 0.8, "constant") == 0.8
    assert grl_lambda_at(0.0, 0.8, "ramp") == 0.0
    assert grl_lambda_at(0.5, 1.0, "ramp") == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert grl_lambda_at(1.0, 2.0, "ramp") == pytest.approx(2.0 * (2 / (1 + math.exp(-10)) - 1))
    assert grl_lambda_at(3.0, 1.0, "ramp") == grl_lambda_at(1.0, 1.0, "ramp")
    with pytest.raises(ValueError):
        grl_lambda_at(0.5, 1.0, "cosine")


def test_gr_step_reverses_the_encoder_gradient_of_the_aux_term():
    model, batch = tiny_model().eval(), make_batch()
    x = lambda fn: model(batch["audio"], batch["faces"], batch["mask"], spk_emb_fn=fn).aux_emo_logits
    torch.nn.functional.cross_entropy(x(lambda e: e), batch["emotion"]).backward()
    plain = model.spk_embed[0].weight.grad.clone()
    model.zero_grad()
    torch.nn.functional.cross_entropy(x(lambda e: grad_reverse(e, 0.5)), batch["emotion"]).backward()
    torch.testing.assert_close(model.spk_embed[0].weight.grad, -0.5 * plain)


def test_confusion_loss_is_log_k_at_uniform_and_pushes_towards_uniform():
    k = 7
    assert confusion_loss(torch.zeros(4, k)).item() == pytest.approx(math.log(k))
    assert confusion_loss(torch.randn(4, k) * 3).item() > math.log(k)
    logits = torch.nn.Parameter(torch.randn(8, k) * 3)
    kl = lambda: (confusion_loss(logits) - math.log(k)).item()  # KL(u || softmax(logits))
    before = kl()
    opt = torch.optim.SGD([logits], lr=0.5)
    confusion_loss(logits).backward()
    opt.step()
    assert kl() < before


@pytest.mark.parametrize("name", ["alt", "conf"])
@pytest.mark.parametrize("direction", ["spk2emo", "emo2spk", "both"])
def test_two_step_methods_move_the_right_parts(name, direction):
    method = build_method(name, direction=direction)
    model, batch = tiny_model(), make_batch()
    moved, logs, opt = run(method, model, batch, "aux_step")
    assert moved == {"encoder": False, "emo_head": False, "spk_head": False, "aux": True}
    aux_before = snapshot(parts(model)["aux"])
    moved, logs, _ = run(method, model, batch, "primary_step")
    assert moved == {"encoder": True, "emo_head": True, "spk_head": True, "aux": False}
    assert not changed(aux_before, parts(model)["aux"])
    assert math.isfinite(logs["loss"]) and "l_adv" in logs


@pytest.mark.parametrize("name,trained,idle", [("stl-emotion", "emo_head", "spk_head"),
                                               ("stl-speaker", "spk_head", "emo_head")])
def test_stl_trains_only_its_head(name, trained, idle):
    model, batch = tiny_model(), make_batch()
    method = build_method(name)
    moved, logs, opt = run(method, model, batch)
    assert moved["encoder"] and moved[trained] and not moved[idle]
    assert moved["aux"]  # the leakage monitors train on detached embeddings
    assert all(p.grad is not None for p in model.parameters())  # every parameter took part (DDP)
    main_ids = {id(p) for g in opt.main.param_groups for p in g["params"]}
    assert not main_ids & {id(p) for p in getattr(model, idle).parameters()}


def test_mtl_aux_loss_does_not_reach_the_encoder():
    model, batch = tiny_model(), make_batch()
    method = build_method("mtl", w_em_prim=0.0, w_spk_prim=0.0)
    moved, logs, _ = run(method, model, batch)
    assert moved == {"encoder": False, "emo_head": False, "spk_head": False, "aux": True}
    moved, _, _ = run(build_method("mtl"), model, batch)
    assert all(moved.values())


def test_gr_moves_everything_and_logs_lambda():
    model, batch = tiny_model(), make_batch()
    method = build_method("gr", grl_lambda=0.5, grl_schedule="ramp")
    moved, logs, _ = run(method, model, batch)
    assert all(moved.values())
    assert logs["lam"] == pytest.approx(grl_lambda_at(0.5, 0.5, "ramp"))


@pytest.mark.parametrize("name", METHODS)
def test_every_method_runs_a_step(name):
    model, batch = tiny_model("attention"), make_batch()
    method = build_method(name, direction="both")
    opt = method.optimizers(model, lr=1e-3, aux_lr=1e-3, weight_decay=1e-4)
    sched = build_schedulers(opt, lr_decay=0.9)
    logs = method.step(model, batch, opt, 0.1, torch.autocast("cpu", enabled=False))
    sched.step()
    assert opt.main.param_groups[0]["lr"] == pytest.approx(0.9e-3)
    assert {"loss", "l_prim", "l_aux", "ce_emo", "ce_spk", "ce_aux_emo", "ce_aux_spk", "lam"} <= set(logs)
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())


def test_bad_names_are_rejected():
    with pytest.raises(ValueError):
        build_method("dann")
    with pytest.raises(ValueError):
        build_method("gr", direction="sideways")


# --- DDP with two workers (gloo, CPU) ----------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {}
        for name in METHODS:
            method = build_method(name)
            model = tiny_model("attention")
            ddp = torch.nn.parallel.DistributedDataParallel(
                model, find_unused_parameters=method.find_unused_parameters)
            opt = method.optimizers(ddp, lr=1e-2, aux_lr=1e-2)
            for i in range(3):
                method.step(ddp, make_batch(b=4, n=3, seed=10 * rank + i), opt, i / 3,
                            torch.autocast("cpu", enabled=False))
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            gathered = [torch.zeros_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            out[name] = torch.equal(gathered[0], gathered[1])
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_every_method_trains_under_ddp_with_two_workers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, results), nprocs=2, join=True)
    assert results[0] == {name: True for name in METHODS}  # replicas stay identical


@pytest.mark.parametrize("name", ["gr", "conf"])
def test_step_under_bf16_autocast(name):
    model, batch = tiny_model("attention"), make_batch()
    method = build_method(name, direction="both")
    opt = method.optimizers(model, lr=1e-3, aux_lr=1e-3)
    logs = method.step(model, batch, opt, 0.5, torch.autocast("cpu", dtype=torch.bfloat16))
    assert all(math.isfinite(v) for v in logs.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())
