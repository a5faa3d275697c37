"""Non-finite guards, without Ray: a NaN loss stops the epoch with one line naming epoch, step and term; a
checkpoint or model file that is unreadable or non-finite is refused with one line naming the file (and the
first bad tensor); no model is exported from non-finite weights. Real tiny models, real files on disk."""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import pytest
import torch
from helpers.model import make_batch, tiny_model

from emodis_ray.core.checkpoint import (
    export_model,
    load_checkpoint,
    load_model,
    read_state,
    save_checkpoint,
)
from emodis_ray.core.errors import BadCheckpoint, NonFiniteLoss
from emodis_ray.core.loop import EpochResult, run_epoch, to_device
from emodis_ray.core.methods import build_method, build_schedulers

torch.set_num_threads(1)
CPU = torch.device("cpu")
SPEAKERS = 4
KWARGS = dict(num_speakers=SPEAKERS, width=0.125, emo_dim=16, spk_dim=8, pooling="mean")


def batches(n: int = 4, nan_at: int | None = None, nan_row: int = 1) -> list[dict]:
    """``n`` batches of 4 clips with clip ids; batch ``nan_at`` (0-based) has NaN audio in clip ``nan_row``."""
    out = []
    for i in range(n):
        b = make_batch(b=4, n=2, d=16, t=24, speakers=SPEAKERS, seed=i)
        b["clip_id"] = [f"id1000{j}/vid-{i}/0000{j}" for j in range(4)]
        if i == nan_at:
            b["audio"][nan_row, 0, 0, 3, 5] = float("nan")  # one value of one clip is enough
        out.append(b)
    return out


def epoch(model: torch.nn.Module, data: list[dict], method: str = "mtl", epoch: int = 0,
          precise_bn: int = 2) -> EpochResult:
    m = build_method(method)
    opt = m.optimizers(model, 1e-3, 1e-3)
    return run_epoch(model, data, data[:1], m, opt, build_schedulers(opt, 0.9), epoch, 3, CPU,
                     contextlib.nullcontext(), precise_bn)


@pytest.mark.parametrize("method", ["mtl", "gr", "conf"])
def test_a_nan_clip_stops_the_epoch_naming_epoch_step_term_and_clip(method: str) -> None:
    model = tiny_model(speakers=SPEAKERS)
    with pytest.raises(NonFiniteLoss) as e:
        epoch(model, batches(nan_at=2), method, epoch=1)  # the loop's epoch 1 is the console's epoch 2
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("non-finite loss: epoch 2, step 3: loss term ce_emo is nan"), msg
    assert "id10001/vid-2/00001" in msg and "id10000/vid-2" not in msg  # the clip, and only it
    assert (e.value.epoch, e.value.step, e.value.term) == (2, 3, "ce_emo")
    assert isinstance(e.value, ValueError)  # the command line prints it as one line, exit 2


def test_finite_batches_train_and_non_finite_loss_survives_pickling() -> None:
    res = epoch(tiny_model(speakers=SPEAKERS), batches())  # the guard does not trip on good data
    assert res.logs["steps"] == 4 and torch.isfinite(torch.tensor(res.logs["loss"]))
    err = NonFiniteLoss("non-finite loss: epoch 1, step 3: loss term ce_spk is inf; x", 1, 3, "ce_spk")
    back = pickle.loads(pickle.dumps(err))  # how it travels from a Ray worker to the driver
    assert type(back) is NonFiniteLoss and str(back) == str(err)
    assert (back.epoch, back.step, back.term) == (1, 3, "ce_spk")


def _checkpoint(path: Path, model: torch.nn.Module | None = None, epoch: int = 0) -> torch.nn.Module:
    """A real training checkpoint of a tiny model, with what ``export_model`` needs."""
    model = model or tiny_model(speakers=SPEAKERS)
    method = build_method("mtl")
    opt = method.optimizers(model, 1e-3, 1e-3)
    extra = {"model_kwargs": KWARGS, "num_speakers": SPEAKERS, "config": {}, "metrics": {"epoch": epoch}}
    save_checkpoint(path, model, opt, build_schedulers(opt, 0.9), epoch, extra)
    return model


def _poison(path: Path, key: str, value: float, count: int | None = None, where: str = "model") -> None:
    state = torch.load(path, weights_only=True)
    flat = state[where][key].view(-1) if where == "model" else state[where]["main"]["state"][0][key].view(-1)
    flat[:count] = value
    torch.save(state, path)


def test_weights_that_overflow_load_but_the_first_step_raises(tmp_path: Path) -> None:
    """3.4e38 is finite, so the checkpoint loads; the first forward overflows: an error, never a NaN model."""
    path = tmp_path / "checkpoint.pt"
    _checkpoint(path)
    _poison(path, "audio_trunk.net.0.0.weight", 3.4e38, count=50)
    model = tiny_model(speakers=SPEAKERS)
    load_checkpoint(path, model)
    with pytest.raises(NonFiniteLoss, match=r"^non-finite loss: epoch 1, step 1: loss term \w+ is (nan|inf).*"
                                            r"every input feature of the batch is finite"):
        epoch(model, batches())


def test_export_refuses_a_nan_tensor_and_names_it(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "epoch_0003" / "checkpoint.pt", tmp_path / "model.pt"
    _checkpoint(ckpt, epoch=3)
    assert export_model(ckpt, out) == 3  # intact: exported
    out.unlink()
    _poison(ckpt, "spk_head.weight", float("nan"), count=3)
    with pytest.raises(BadCheckpoint) as e:
        export_model(ckpt, out)
    assert str(e.value) == (f"checkpoint {ckpt} holds non-finite weights: the first is spk_head.weight "
                            f"(3 of {8 * SPEAKERS} values)")
    assert not out.exists() and not list(tmp_path.glob("model.pt*"))  # nothing written, no temp file


def test_nan_optimiser_moments_make_a_checkpoint_bad(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    model = tiny_model(speakers=SPEAKERS)
    method = build_method("mtl")
    opt = method.optimizers(model, 1e-3, 1e-3)
    method.step(model, to_device(batches(n=1)[0], CPU), opt, 0.0, contextlib.nullcontext())  # Adam moments
    save_checkpoint(path, model, opt, build_schedulers(opt, 0.9), 0, {})
    read_state(path)  # intact
    _poison(path, "exp_avg_sq", float("inf"), where="optimizers")
    with pytest.raises(BadCheckpoint, match=r"non-finite weights: the first is optimizers\.main\.state\.0\.exp_avg_sq"):
        read_state(path)


def test_a_truncated_checkpoint_is_refused_and_the_model_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    _checkpoint(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    model = tiny_model(speakers=SPEAKERS)
    with torch.no_grad():
        model.emo_head.bias.fill_(7.0)
    with pytest.raises(BadCheckpoint, match=rf"^checkpoint {path} is unreadable \(truncated or corrupt\)"):
        load_checkpoint(path, model)
    assert torch.all(model.emo_head.bias == 7.0)


@pytest.mark.parametrize("kind", ["truncated", "text", "checkpoint-not-model", "nan", "missing"])
def test_load_model_refuses_a_bad_file_in_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    ckpt, path = tmp_path / "checkpoint.pt", tmp_path / "model.pt"
    _checkpoint(ckpt)
    export_model(ckpt, path)
    load_model(path)  # the intact file loads
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:-4096])
    elif kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "checkpoint-not-model":
        state = torch.load(ckpt, weights_only=True)
        torch.save({"model": state["model"]}, path)  # no model_kwargs: not an exported model
    elif kind == "nan":
        state = torch.load(path, weights_only=True)
        state["model"]["emo_embed.0.weight"].view(-1)[0] = float("nan")
        torch.save(state, path)
    else:
        path.unlink()
    with pytest.raises(BadCheckpoint) as e:
        load_model(path)
    msg = str(e.value)
    assert msg.startswith(f"model file {path} ") and "\n" not in msg and len(msg) < 400, msg
    assert isinstance(e.value, ValueError)
    expected = {"truncated": "is unreadable (truncated or corrupt): RuntimeError",
                "text": "is unreadable (not a torch file)", "checkpoint-not-model": "lacks model_kwargs, epoch",
                "nan": "non-finite weights: the first is emo_embed.0.weight (1 of", "missing": "does not exist"}[kind]
    assert expected in msg, msg
