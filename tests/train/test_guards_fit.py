"""Non-finite guards of the Ray Train driver and worker: resuming falls back past a truncated or non-finite
latest checkpoint to the newest intact one (checked at the level of the functions that pick and load it), the
export skips a bad best checkpoint, a worker's NaN loss reaches the driver as the same one-line error without
Ray Train's retries (one real two-worker run on one clip of NaN features), and too many bad clips is one line
naming ``bad_clips.csv``. Real checkpoints on disk, a real Ray cluster for the one run."""

from __future__ import annotations

import csv
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.model import tiny_model

from emodis_ray.config import Config, load_config, replace
from emodis_ray.core.checkpoint import CHECKPOINT_FILE, save_checkpoint
from emodis_ray.core.errors import BadCheckpoint, NonFiniteLoss
from emodis_ray.core.methods import build_method, build_schedulers
from emodis_ray.data.ingest import TooManyBadClips, check_bad_fraction, write_bad_clips
from emodis_ray.train.controller import fatal_cause
from emodis_ray.train.fit import export_best, resume_fallback
from emodis_ray.train.worker import resume_state

torch.set_num_threads(1)
SPEAKERS = 4
KWARGS = dict(num_speakers=SPEAKERS, width=0.125, emo_dim=16, spk_dim=8, pooling="mean")


def _save(run: Path, name: str, epoch: int, mark: float, f1: float = 0.5) -> Path:
    """A real checkpoint folder ``run/name`` whose emo_head bias is ``mark`` (to tell which one loaded)."""
    model = tiny_model(speakers=SPEAKERS)
    with torch.no_grad():
        model.emo_head.bias.fill_(mark)
    opt = build_method("mtl").optimizers(model, 1e-3, 1e-3)
    extra = {"model_kwargs": KWARGS, "num_speakers": SPEAKERS, "config": {},
             "metrics": {"epoch": epoch, "val_emo_f1": f1}}
    path = run / name / CHECKPOINT_FILE
    save_checkpoint(path, model, opt, build_schedulers(opt, 0.9), epoch, extra)
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _nan(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["model"]["spk_embed.0.weight"][0, 0] = float("nan")
    torch.save(state, path)


@pytest.mark.parametrize("damage", [_truncate, _nan], ids=["truncated", "nan"])
def test_resume_falls_back_past_a_bad_latest_checkpoint_to_the_newest_intact_one(
        tmp_path: Path, damage: Callable[[Path], None]) -> None:
    run = tmp_path / "run"
    _save(run, "epoch_0000", 0, 0.0)
    _save(run, "epoch_0001", 1, 1.0)
    latest = _save(run, "epoch_0002", 2, 2.0)
    _save(run, "mtl-epoch_0009", 9, 9.0)  # another loop's tagged folder: never a candidate
    assert resume_fallback(run) == (latest, [])  # all intact: the newest
    damage(latest)
    fallback, warnings = resume_fallback(run)
    assert fallback == run / "epoch_0001" / CHECKPOINT_FILE
    assert len(warnings) == 1 and warnings[0].startswith(f"checkpoint {latest} ")
    assert warnings[0].endswith(f"; resuming from {fallback} instead") and "\n" not in warnings[0]

    # The worker: Ray Train's latest is the bad one; it loads the fall-back and says so.
    model = tiny_model(speakers=SPEAKERS)
    opt = build_method("mtl").optimizers(model, 1e-3, 1e-3)
    state, fell_back = resume_state(latest, str(fallback), model, opt, build_schedulers(opt, 0.9))
    assert fell_back and state["epoch"] == 1 and torch.all(model.emo_head.bias == 1.0)
    with pytest.raises(BadCheckpoint, match=rf"^checkpoint {latest} .*no older intact checkpoint to resume from"):
        resume_state(latest, None, model, opt, build_schedulers(opt, 0.9))
    state, fell_back = resume_state(fallback, str(fallback), model, opt, build_schedulers(opt, 0.9))
    assert not fell_back and state["epoch"] == 1  # an intact latest: loaded as it is


def test_a_rerun_of_a_fallen_back_epoch_is_newer_than_the_bad_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save(run, "epoch_0000", 0, 0.0)
    _truncate(_save(run, "epoch_0001", 1, 1.0))
    rerun = _save(run, "epoch_0001-r20261202-120000", 1, 11.0)  # written after falling back to epoch 0
    os.utime(rerun, (rerun.stat().st_atime, (run / "epoch_0001" / CHECKPOINT_FILE).stat().st_mtime + 5))
    assert resume_fallback(run) == (rerun, [])


def test_only_bad_checkpoints_is_a_clear_error_and_none_is_a_fresh_start(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert resume_fallback(run) == (None, [])  # a new run
    _truncate(_save(run, "epoch_0000", 0, 0.0))
    (run / "epoch_0001").mkdir()  # a folder whose file never arrived
    with pytest.raises(BadCheckpoint) as e:
        resume_fallback(run)
    msg = str(e.value)
    assert msg.startswith(f"no intact checkpoint to resume from in {run}: checkpoint {run / 'epoch_0001'}")
    assert f"checkpoint {run / 'epoch_0000' / CHECKPOINT_FILE} is unreadable" in msg
    assert msg.endswith(f"delete {run} to start the run over") and "\n" not in msg


def test_export_skips_a_bad_best_checkpoint_for_the_next_best(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import ray.train

    run = tmp_path / "run"
    paths = [_save(run, f"epoch_{i:04d}", i, float(i), f1) for i, f1 in enumerate((0.2, 0.6, 0.4))]
    kept = [(ray.train.Checkpoint.from_directory(str(p.parent)), {"val_emo_f1": f1})
            for p, f1 in zip(paths, (0.2, 0.6, 0.4), strict=True)]
    out = tmp_path / "model.pt"
    assert export_best(kept, "val_emo_f1", "max", out) == 1
    _nan(paths[1])
    assert export_best(kept, "val_emo_f1", "max", out) == 2  # the next best by F1, not the latest
    assert f"warning: checkpoint {paths[1]} holds non-finite weights" in capsys.readouterr().err
    for p in paths:
        _nan(p)
    with pytest.raises(BadCheckpoint, match=r"^no intact checkpoint to export model.pt from: checkpoint "):
        export_best(kept, "val_emo_f1", "max", out)
    assert export_best([], "val_emo_f1", "max", out) is None


def test_fatal_errors_are_found_inside_ray_train_failures() -> None:
    import ray.train

    err = NonFiniteLoss("non-finite loss: epoch 1, step 3: loss term ce_emo is nan; x", 1, 3, "ce_emo")
    for wrapped in (ray.train.ControllerError(err), ray.train.WorkerGroupError("w", {0: RuntimeError("x"), 1: err}),
                    pickle.loads(pickle.dumps(ray.train.ControllerError(err)))):
        found = fatal_cause(wrapped)
        assert isinstance(found, NonFiniteLoss) and str(found) == str(err)
    assert fatal_cause(ray.train.WorkerGroupError("w", {0: RuntimeError("worker died")})) is None


def test_too_many_bad_clips_is_one_value_error_line_naming_the_csv(tmp_path: Path) -> None:
    where = tmp_path / "run" / "bad_clips.csv"
    where.parent.mkdir()
    write_bad_clips(where, [{"clip_id": "id1/v/00001", "reason": "too_short", "detail": "0.4 s"}])
    check_bad_fraction(1, 20, 0.05, where)  # 5 %: allowed
    with pytest.raises(TooManyBadClips) as e:
        check_bad_fraction(2, 20, 0.05, where)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    assert str(e.value).startswith("2 of 20 clips (10.0%) could not be decoded") and str(where) in str(e.value)


# --- one real Ray Train run ------------------------------------------------------------------------------

CLIPS = [(f"id1000{s}/vid{s}{v}/0000{i}", f"spk{s}", emo, split)
         for s in range(SPEAKERS) for v, split in ((0, "train"), (1, "val"))
         for i, emo in enumerate(("neutral", "happiness", "sadness", "anger")[: 4 if split == "train" else 2])]
NAN_CLIP = "id10002/vid20/00001"


def _dataset(root: Path, nan_clip: str | None = NAN_CLIP) -> tuple[Path, Config]:
    """A manifest and a feature cache made of generated features (no video decoded): 16 train clips, 8 val
    clips; the train clip ``nan_clip`` has NaN log-mel features, as a clip with an overflowing track would."""
    from emodis_ray.data.cache import cache_root, manifest_keys, write_part
    from emodis_ray.data.features import ClipSegments, feature_shapes
    from emodis_ray.data.manifest import read_manifest, write_manifest
    from emodis_ray.data.rows import to_features
    from emodis_ray.data.sources import table_manifest

    root.mkdir(parents=True, exist_ok=True)
    with open(root / "clips.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "video_path", "speaker", "emotion", "split"])
        w.writerows([c, f"{c}.mp4", s, e, split] for c, s, e, split in CLIPS)
    df, _ = table_manifest(root / "clips.csv")
    write_manifest(df, root / "manifest.parquet")
    cfg = replace(load_config("tiny"), features={"clip_s": 2.0, "face_size": 16},
                  model={"width": 0.125, "emo_dim": 16, "spk_dim": 8},
                  data={"batch_size": 4, "cache_dir": str(root / "cache")},
                  train={"workers": 2, "epochs": 2, "max_failures": 2, "seed": 3})
    shapes, rng = feature_shapes(cfg.features), np.random.default_rng(0)
    s = 3  # segments of a 2 s clip (1 s segments, 0.5 s hop)
    df = read_manifest(root / "manifest.parquet")  # the paths as training resolves them: they key the clips
    rows, keys = [], manifest_keys(df)
    for r, key in zip(df.itertuples(), keys, strict=True):
        audio = rng.standard_normal((s, *shapes["audio"][1:])).astype(np.float32)  # [S, 1, M, T]
        if r.clip_id == nan_clip:
            audio[:] = np.nan
        faces = rng.integers(0, 256, (s, *shapes["faces"][1:]), dtype=np.uint8)  # [S, C, D, D]
        segs = ClipSegments(audio, faces, np.arange(s, dtype=np.int64) * 12 + 12, 2.0)
        rows.append(to_features(segs, cfg.features, "raw", key))
    cache = cache_root(cfg.data.cache_dir, cfg.features)
    cache.mkdir(parents=True)
    write_part(cache, rows, [], list(keys))
    return root / "manifest.parquet", cfg


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_nan_clip_stops_a_ray_train_run_with_one_line_and_no_retry(cluster: None, tmp_path: Path) -> None:
    from emodis_ray.train.fit import fit
    from emodis_ray.train.worker import train_loop_per_worker

    manifest, cfg = _dataset(tmp_path / "data")
    attempts = tmp_path / "attempts.txt"

    def counted(config: dict[str, Any]) -> None:
        """The real per-worker loop, counting its starts (a retry would start it again)."""
        with open(attempts, "a") as f:
            f.write("start\n")
        train_loop_per_worker(config)

    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as e:
        fit(manifest, out, cfg, progress=False, train_loop=counted)
    msg = str(e.value)
    assert msg.startswith("non-finite loss: epoch 1, step ") and "loss term ce_" in msg, msg
    assert f"non-finite input features in clip(s) {NAN_CLIP}" in msg and "\n" not in msg
    assert e.value.epoch == 1 and e.value.term.startswith("ce_")
    assert attempts.read_text().count("start") == 2  # one start per worker: max_failures=2 did not retry it
    assert not (out / "model.pt").exists()
    assert not list(out.glob("checkpoints/*/epoch_*"))  # and no checkpoint of NaN weights
