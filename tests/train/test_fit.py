"""Ray Train on a real local cluster: DDP with every method, determinism, fault tolerance, resume.

One two-CPU cluster and one tiny synthetic set (with its feature cache) per module. Every fit pays
about 20 s of Ray Train start-up, so the tests share runs through module-scoped fixtures.

Tolerance: none. Everything is seeded (model init per rank, the local shuffle per epoch, the crop per
clip and epoch), shards are cut deterministically (``preserve_order``), each rank's RNG state travels in
the checkpoint, and CPU kernels with one thread per worker are deterministic, so a rerun, a run whose
worker was killed, and a stopped-then-resumed run all give bit-identical metrics.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from emodis_ray.config import Config, SynthConfig, load_config, replace
from emodis_ray.core.checkpoint import load_model
from emodis_ray.core.methods import METHODS
from emodis_ray.core.model import build_model
from emodis_ray.data.ingest import preprocess
from emodis_ray.data.manifest import write_manifest
from emodis_ray.data.sources import emovox_manifest
from emodis_ray.synth.generate import generate
from emodis_ray.train.fit import TrainResult, fit
from emodis_ray.train.worker import train_loop_per_worker

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

EPOCHS = 3
SYNTH = SynthConfig(people=6, clips_per_person=8, videos_per_person=4, size=64, clip_s_min=1.5, clip_s_max=2.5,
                    short_clip_fraction=0.0, heard_fraction=0.5, unheard_people=0, workers=1, seed=1)


@pytest.fixture(scope="module")
def data(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A tiny synthetic EmoVox, its manifest and its feature cache; the config that reads them."""
    root = tmp_path_factory.mktemp("train_data")
    generate(root / "data", SYNTH, progress=False)
    cfg = replace(load_config("tiny"), labels={"drop_percentile": 0.0},
                  features={"clip_s": 2.0, "face_size": 16},
                  model={"width": 0.125, "emo_dim": 32, "spk_dim": 16},
                  data={"batch_size": 8, "rows_per_shard": 64, "cache_dir": str(root / "cache")},
                  optim={"lr": 3e-3, "aux_lr": 3e-3},
                  train={"workers": 2, "epochs": EPOCHS, "seed": 7})
    df, _ = emovox_manifest(root / "data" / "senet50-ferplus-logits.mat", root / "data" / "vox1_meta.csv",
                            root / "data" / "videos", cfg.labels)
    write_manifest(df, root / "manifest.parquet")
    preprocess(root / "manifest.parquet", root / "cache", cfg, progress=False, max_decoders=2)
    return root / "manifest.parquet", cfg


def _reports(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "reports.jsonl").read_text().splitlines()]


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal in every loss term and validation metric (timings and throughput aside)."""
    keys = [k for k in a if (k.startswith("val_") or k.startswith("train_")) and "time" not in k
            and not k.endswith("per_s") and "wait" not in k]
    assert keys and {k: a[k] for k in keys} == {k: b[k] for k in keys}


@pytest.fixture(scope="module")
def baseline(data: tuple[Path, Config], tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    manifest, cfg = data
    return fit(manifest, tmp_path_factory.mktemp("runs") / "baseline", cfg, progress=False)


@pytest.fixture(scope="module")
def stopped(data: tuple[Path, Config], tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The baseline's config, stopped after two of its three epochs."""
    manifest, cfg = data
    return fit(manifest, tmp_path_factory.mktemp("runs") / "stopped", replace(cfg, train={"epochs": 2}),
               progress=False)


def test_every_method_trains_under_two_worker_ddp(data: tuple[Path, Config], tmp_path: Path) -> None:
    """One Ray Train run (one start-up) trains each method in turn with the real per-worker loop."""
    manifest, cfg = data

    def each_method(config: dict[str, Any]) -> None:
        for name in METHODS:
            c = copy.deepcopy(config)
            c["cfg"]["method"]["name"] = name
            c["resume"] = False  # each method starts from scratch, not from the previous one's checkpoint
            c["tag"] = f"{name}-"  # and has checkpoint folders of its own
            train_loop_per_worker(c)

    fit(manifest, tmp_path / "methods", replace(cfg, method={"grl_schedule": "ramp"}), progress=False,
        train_loop=each_method)
    reports = _reports(tmp_path / "methods")
    assert [r["method"] for r in reports] == [m for m in METHODS for _ in range(EPOCHS)]
    for name in METHODS:
        rows = [r for r in reports if r["method"] == name]
        assert [r["epoch"] for r in rows] == list(range(EPOCHS))
        assert all(r["workers"] == 2 for r in rows)
        first, last = rows[0]["train_l_prim"], rows[-1]["train_l_prim"]
        assert last < first, (name, [r["train_l_prim"] for r in rows])
    gr = [r["train_lam"] for r in reports if r["method"] == "gr"]
    assert 0.0 < gr[0] < gr[1] < gr[2] <= 1.0  # the ramp, reported per epoch


def test_a_run_writes_its_folder(baseline: TrainResult, data: tuple[Path, Config]) -> None:
    out = baseline.out
    assert baseline.epochs_run == list(range(EPOCHS)) and len(baseline.metrics) == EPOCHS
    for name in ("config.yaml", "metrics.csv", "metrics.json", "bad_clips.csv", "curves.png", "model.pt"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # Ray Train keeps the best two by val F1, and the latest always (resuming needs it): three when the latest is
    # not above the second best
    kept = sorted(int(p.parent.name[6:]) for p in (out / "checkpoints" / out.name).glob("epoch_*/checkpoint.pt"))
    f1 = [r["val_emo_f1"] for r in baseline.metrics]
    assert EPOCHS - 1 in kept and int(max(baseline.metrics, key=lambda r: r["val_emo_f1"])["epoch"]) in kept
    assert len(kept) == 2 or (len(kept) == 3 and f1[-1] <= sorted(f1)[-2])
    final = baseline.final
    assert final["val_n"] > 0 and 0.0 <= final["val_emo_f1"] <= 1.0 and 0.0 <= final["val_spk_acc"] <= 1.0
    # model.pt rebuilds the model without Ray and gives the reported validation numbers' inputs
    model, info = load_model(out / "model.pt")
    state = torch.load(out / "model.pt", weights_only=True)
    best = max(baseline.metrics, key=lambda r: r["val_emo_f1"])["epoch"]  # model.pt: the best epoch by val F1
    assert info["epoch"] == best and info["metrics"]["epoch"] == best
    assert json.loads((out / "run.json").read_text())["model"] == {
        "epoch": best + 1, "selected_by": "val_emo_f1", "mode": "max",  # run.json counts epochs from 1
        "value": info["metrics"]["val_emo_f1"]}
    assert isinstance(build_model(**state["model_kwargs"]), type(model))
    assert load_config(out / "config.yaml") == data[1]


def test_no_train_or_data_actor_outlives_its_run(baseline: TrainResult, stopped: TrainResult) -> None:
    """After ``fit`` returns, Ray Train's controller and the data split coordinators it owns are gone (Ray Train's
    Ctrl-C handler held the controller's handle: a study or a benchmark that runs many fits kept the last one,
    and its blocks, alive)."""
    import time

    from ray._private.state import actors

    def alive() -> list[str]:
        return [a["ActorClassName"] for a in actors().values() if a["State"] == "ALIVE"
                and any(k in a["ActorClassName"] for k in ("TrainController", "SplitCoordinator"))]

    deadline = time.monotonic() + 30  # an actor whose last handle went away is stopped asynchronously
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive() == []


def test_the_same_seed_gives_the_same_metrics(baseline: TrainResult, stopped: TrainResult) -> None:
    assert stopped.epochs_run == [0, 1]
    for a, b in zip(stopped.metrics, baseline.metrics[:2], strict=True):
        _same(a, b)


def test_a_stopped_run_resumes_at_the_next_epoch(data: tuple[Path, Config], baseline: TrainResult,
                                                 stopped: TrainResult) -> None:
    manifest, cfg = data
    resumed = fit(manifest, stopped.out, cfg, progress=False)  # the baseline's config: 3 epochs
    assert resumed.epochs_run == [2]
    assert [r["epoch"] for r in _reports(stopped.out)] == [0, 1, 2]
    assert [r["epoch"] for r in resumed.metrics] == [0, 1, 2]
    _same(resumed.final, baseline.final)


def test_a_killed_worker_is_replaced_and_the_run_ends_as_if_nothing_happened(
        data: tuple[Path, Config], baseline: TrainResult, tmp_path: Path) -> None:
    manifest, cfg = data
    out = tmp_path / "killed"
    res = fit(manifest, out, replace(cfg, train={"fail_at_epoch": 1, "max_failures": 1}), progress=False)
    assert (out / "fault_injected").exists()  # the worker did die
    assert [r["epoch"] for r in _reports(out)] == [0, 1, 2]  # every epoch reported exactly once
    assert [r["epoch"] for r in res.metrics] == [0, 1, 2]
    for a, b in zip(res.metrics, baseline.metrics, strict=True):
        _same(a, b)


SCRIPTED_F1 = (0.2, 0.6, 0.4)  # the best validation epoch is the middle one, not the last


def test_model_pt_is_the_best_validation_epoch_not_the_last(data: tuple[Path, Config], tmp_path: Path) -> None:
    manifest, cfg = data

    def scripted_loop(config: dict[str, Any]) -> None:
        """The real model and checkpoint files under Ray Train, with validation F1 scripted per epoch, so the
        best epoch is known: what ``fit`` exports must be that epoch's weights."""
        import tempfile

        import ray.train

        from emodis_ray.core.checkpoint import model_kwargs_of, save_checkpoint
        from emodis_ray.core.methods import build_method, build_schedulers

        cfg = replace(Config(), **config["cfg"])
        kwargs = model_kwargs_of(cfg, config["num_speakers"])
        model = build_model(**kwargs)
        opt = build_method("mtl").optimizers(model, 1e-3, 1e-3)
        for epoch, f1 in enumerate(SCRIPTED_F1):
            with torch.no_grad():
                model.emo_head.bias.fill_(float(epoch))  # marks the weights with their epoch
            row = {"epoch": epoch, "method": "mtl", "val_emo_f1": f1}
            with tempfile.TemporaryDirectory() as tmp:
                extra = {"model_kwargs": kwargs, "num_speakers": config["num_speakers"], "config": config["cfg"],
                         "metrics": row}
                save_checkpoint(Path(tmp) / "checkpoint.pt", model, opt, build_schedulers(opt, 0.9), epoch, extra)
                ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"epoch_{epoch:04d}")

    res = fit(manifest, tmp_path / "scripted", replace(cfg, train={"workers": 1, "epochs": len(SCRIPTED_F1)}),
              progress=False, train_loop=scripted_loop)
    model, info = load_model(res.model_path)
    assert info["epoch"] == 1 and info["metrics"]["val_emo_f1"] == 0.6
    assert torch.all(model.emo_head.bias == 1.0)  # the weights are epoch 1's
    assert json.loads((res.out / "run.json").read_text())["model"]["epoch"] == 2  # users count epochs from 1
    kept = sorted(p.parent.name for p in (res.out / "checkpoints" / "scripted").glob("epoch_*/checkpoint.pt"))
    assert kept == ["epoch_0001", "epoch_0002"]  # the best, and the latest for resuming

