"""`emodis bench train`: what Ray Train costs over the plain loop, measured side by side in one run.

On the same feature cache and config:
  (a) the pure loop: ``core.loop.run_epoch`` + a checkpoint per epoch, in this process, no Ray;
  (a') the same with the convolution weights in the plain NCHW layout instead of NHWC (``build_model``);
  (b) the same loop under ``TorchTrainer`` with one worker (``train.fit``);
  (c) the same with two workers.
Per epoch: training seconds (inside ``train_epoch``) and whole-epoch seconds (training, validation,
checkpoint, report; for Ray the time between two reports). Epoch 0 is warm-up and left out of the
medians. Start-up = time to the first report minus one steady epoch. The overhead target is
(b)/(a) - 1 <= 10 % per epoch after start-up. ``speedup_nhwc_train`` / ``_val``: (a')/(a) for the training pass
and the validation pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emodis_ray.config import Config, replace

if TYPE_CHECKING:
    from emodis_ray.data.cache import CacheView


@dataclass
class TrainBench:
    clips_train: int
    clips_val: int
    epochs: int
    cpus: int
    config: str  # what differs from the defaults, in words
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # "pure", "ray1", "ray2"
    ratios: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"train benchmark: {self.clips_train} train / {self.clips_val} val clips, {self.epochs} epochs, "
                 f"{self.cpus} CPUs ({self.config})", "",
                 f"{'loop':<30}{'train s/ep':>11}{'epoch s':>9}{'clips/s':>9}{'start-up s':>12}"]
        names = {"pure": "(a) pure loop, no Ray", "pure_nchw": "(a') pure loop, NCHW weights",
                 "ray1": "(b) TorchTrainer, 1 worker",
                 "ray2": "(c) TorchTrainer, 2 workers"}
        for k, name in names.items():
            if k in self.runs:
                r = self.runs[k]
                start = f"{r['startup_s']:>12.1f}" if "startup_s" in r else f"{'-':>12}"
                lines.append(f"{name:<30}{r['train_s']:>11.2f}{r['epoch_s']:>9.2f}{r['clips_per_s']:>9.1f}{start}")
        lines += ["", "ratios (target): " + ", ".join(
            f"{k} = {v:+.1%}" if k.startswith("overhead") else f"{k} = {v:.2f}" for k, v in self.ratios.items())
            + "  (overhead_epoch <= +10%)"]
        return "\n".join(lines)


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def pure_loop(view: CacheView, cfg: Config, num_speakers: int, workdir: Path,
              progress: bool = True, channels_last: bool = True) -> dict[str, Any]:
    """The per-worker loop without Ray: same rows, batch size, collate, method, validation, checkpoint.
    ``channels_last=False``: the convolution weights in the plain NCHW layout (see ``build_model``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from emodis_ray.core.checkpoint import model_kwargs_of, save_checkpoint
    from emodis_ray.core.loop import run_epoch, seed_everything
    from emodis_ray.core.methods import build_method, build_schedulers
    from emodis_ray.core.model import build_model
    from emodis_ray.data.rows import collate

    table = pa.concat_tables([pq.read_table(p) for p in view.parts()])
    feats = dict(zip(table["clip_key"].to_pylist(), range(table.num_rows), strict=True))
    labels = view.labels[view.labels["clip_key"].isin(set(feats))]
    table = table.take(pa.array([feats[k] for k in labels["clip_key"]], pa.int64()))  # one row per manifest row
    cols = {**table.to_pydict(), **{c: labels[c].tolist() for c in ("clip_id", "split", "emotion", "speaker")}}
    split = np.asarray(cols["split"])
    idx = {s: np.flatnonzero(split == s) for s in ("train", "val")}
    seed, bs = cfg.train.seed, cfg.data.batch_size

    def batches(name: str, train: bool, epoch: int) -> Any:
        order = np.random.default_rng([seed, epoch]).permutation(idx[name]) if train else idx[name]
        for k in range(0, len(order), bs):
            sel = order[k:k + bs]
            yield collate({c: [cols[c][i] for i in sel] for c in cols}, cfg.features, train, seed, epoch)

    seed_everything(seed)
    model = build_model(**model_kwargs_of(cfg, num_speakers), channels_last=channels_last)
    method = build_method(**asdict(cfg.method))
    opt = method.optimizers(model, cfg.optim.lr, cfg.optim.aux_lr, cfg.optim.weight_decay)
    sched = build_schedulers(opt, cfg.optim.lr_decay)
    train_s, epoch_s, val_s, clips = [], [], [], 0.0
    for epoch in range(cfg.train.epochs):
        t0 = time.perf_counter()
        ep = run_epoch(model, batches("train", True, epoch), batches("val", False, epoch), method, opt, sched,
                       epoch, cfg.train.epochs, "cpu", contextlib.nullcontext(), cfg.train.precise_bn_batches)
        logs = ep.logs
        save_checkpoint(workdir / "pure.pt", model, opt, sched, epoch)
        train_s.append(logs["epoch_time_s"])
        val_s.append(ep.val_s)
        epoch_s.append(time.perf_counter() - t0)
        clips = logs["clips"]
        if progress:
            print(f"  pure epoch {epoch + 1}/{cfg.train.epochs}: train {train_s[-1]:.2f} s, epoch {epoch_s[-1]:.2f} s, "
                  f"loss {logs['loss']:.4f}")
    return {"train_s": _median(train_s[1:]), "epoch_s": _median(epoch_s[1:]), "val_s": _median(val_s[1:]),
            "clips_per_s": clips / _median(train_s[1:]), "train_s_all": train_s, "epoch_s_all": epoch_s}


def ray_loop(manifest: Path, out: Path, cfg: Config, progress: bool = True) -> dict[str, Any]:
    from emodis_ray.train.fit import fit

    res = fit(manifest, out, cfg, progress=progress)
    rows = res.metrics
    train_s = [r["train_epoch_time_s"] for r in rows]
    walls = [r["wall_time"] for r in rows]
    epoch_s = [b - a for a, b in zip(walls[:-1], walls[1:], strict=True)]  # between reports: epoch 1 onwards
    steady = _median(epoch_s)
    return {"train_s": _median(train_s[1:]), "epoch_s": steady,
            "clips_per_s": _median([r["train_clips_per_s"] for r in rows[1:]]),
            "startup_s": res.first_report_s - steady, "fit_s": res.elapsed_s,
            "train_s_all": train_s, "epoch_s_all": epoch_s}


def bench_train(epochs: int = 4, cfg: Config | None = None, manifest: Path | None = None,
                workdir: Path | None = None, progress: bool = True) -> TrainBench:
    """Run (a), (b), (c) on one feature cache. Without ``manifest``, writes the config's synthetic set
    (the tiny preset: 12 people x 24 clips) into ``workdir`` (a temporary folder by default) first."""
    import torch

    from emodis_ray.config import load_config
    from emodis_ray.data.ingest import preprocess
    from emodis_ray.data.manifest import read_manifest
    from emodis_ray.runtime.session import ray_session

    say = print if progress else (lambda *a, **k: None)
    cfg = cfg or load_config("tiny")
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    work = Path(tmp.name if tmp else workdir)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    try:
        with ray_session(num_cpus=cpus, dashboard=False, log_to_driver=False):  # a local cluster unless one runs
            if manifest is None:
                manifest = synthetic_manifest(work, cfg, say, progress)
            cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else work / "cache"
            say("feature cache ...")
            info = preprocess(manifest, cache_dir, cfg, progress=progress)
            cfg = replace(cfg, data={"cache_dir": str(cache_dir)}, train={"epochs": epochs, "fail_at_epoch": -1})
            num_speakers = int(read_manifest(manifest)["speaker_idx"].max()) + 1
            what = (f"{cfg.method.name}, width {cfg.model.width}, {cfg.features.face_size} px faces, "
                    f"{cfg.features.clip_s:g} s clips, batch {cfg.data.batch_size}")
            res = TrainBench(clips_train=info.splits.get("train", 0), clips_val=info.splits.get("val", 0),
                             epochs=epochs, cpus=cpus, config=what)

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:  # (a) with the NHWC weights the model is built with, and again with plain NCHW ones
                say("(a) pure loop, one thread (as a one-CPU Ray worker) ...")
                res.runs["pure"] = pure_loop(info, cfg, num_speakers, work, progress)
                say("(a') the same with NCHW convolution weights (build_model(channels_last=False)) ...")
                res.runs["pure_nchw"] = pure_loop(info, cfg, num_speakers, work, progress, channels_last=False)
            finally:
                torch.set_num_threads(threads)
            for workers in (1, 2):
                say(f"({'bc'[workers - 1]}) TorchTrainer, {workers} worker{'s' if workers > 1 else ''} ...")
                run_cfg = replace(cfg, train={"workers": workers})
                res.runs[f"ray{workers}"] = ray_loop(manifest, work / f"ray{workers}", run_cfg, progress)
    finally:
        if tmp is not None:
            tmp.cleanup()
    pure, nchw, r1, r2 = res.runs["pure"], res.runs["pure_nchw"], res.runs["ray1"], res.runs["ray2"]
    res.ratios = {"overhead_epoch": r1["epoch_s"] / pure["epoch_s"] - 1,
                  "overhead_train": r1["train_s"] / pure["train_s"] - 1,
                  "speedup_2_workers": r1["epoch_s"] / r2["epoch_s"],
                  "speedup_nhwc_train": nchw["train_s"] / pure["train_s"],
                  "speedup_nhwc_val": nchw["val_s"] / pure["val_s"]}
    return res


def write_json(res: TrainBench, path: Path) -> None:
    Path(path).write_text(json.dumps(asdict(res), indent=1))


def synthetic_manifest(work: Path, cfg: Config, say: Callable[..., object], progress: bool) -> Path:
    """A synthetic set under ``work/data`` (kept when already there) and its manifest."""
    from emodis_ray.data.manifest import write_manifest
    from emodis_ray.data.sources import emovox_manifest
    from emodis_ray.synth.generate import generate

    data = work / "data"
    if not (data / "senet50-ferplus-logits.mat").exists():
        say(f"writing a synthetic set of {cfg.synth.people} x {cfg.synth.clips_per_person} clips ...")
        generate(data, cfg.synth, progress=progress)
    df, _ = emovox_manifest(data / "senet50-ferplus-logits.mat", data / "vox1_meta.csv", data / "videos", cfg.labels)
    write_manifest(df, work / "manifest.parquet")
    return work / "manifest.parquet"
