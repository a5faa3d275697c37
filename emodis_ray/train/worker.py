"""The per-worker training loop that Ray Train runs on every worker (docs/architecture.md).

It reads top to bottom; the numbered comments mark every place it touches Ray. One epoch is
:func:`~emodis_ray.core.loop.run_epoch` (plain PyTorch, shared with the no-Ray benchmark); the checkpoint
files are :mod:`emodis_ray.core.checkpoint`'s.

Determinism: with ``preserve_order`` on, the splitter hands the (ordered) blocks to the workers
deterministically; the local shuffle is seeded by (seed, epoch), the crop by (seed, epoch, clip id), and
each rank's RNG state is saved with the checkpoint. So a run, a rerun, a run restarted after a worker
failure and a stopped-then-resumed run give bit-identical numbers on CPU (tests/train/test_fit.py).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from emodis_ray.config import Config, replace
from emodis_ray.core.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    model_kwargs_of,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from emodis_ray.core.errors import BadCheckpoint
from emodis_ray.core.loop import autocast_context, metrics, run_epoch, seed_everything
from emodis_ray.core.methods import Optimizers, Schedulers, build_method, build_schedulers
from emodis_ray.core.model import build_model
from emodis_ray.data.rows import FaceDecoder, collate
from emodis_ray.runtime.telemetry import record_epoch, record_step

# Local shuffle buffer per worker, in clips: ~100 MB at the paper's shape with JPEG faces (0.4 MB a clip). Seeded by
# (seed, epoch), it keeps reruns and resumed runs bit-identical. It reads ~3,800 clips/s into one consumer at that
# shape, 0.64 of no shuffle (a shuffle inside map_batches: 0.86), far above what collate decodes or a GPU trains
# (`emodis bench ingest`, (g)). The cache's parts mix people (clip-key order), so a window of it is a fair sample.
SHUFFLE_ROWS = 256
log = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. ``config``: ``cfg`` (a ``Config.to_dict()``), ``num_speakers``,
    ``steps_per_epoch``, ``fault_marker`` (a path); optional ``resume`` (default True), ``tag`` (a prefix
    of the checkpoint folder names, for several runs of this loop inside one Ray Train run), ``fallback``
    (the checkpoint file to resume from when Ray Train's latest is unreadable or non-finite) and ``attempt``
    (a suffix for the checkpoint folders written after such a fall-back)."""
    cfg = replace(Config(), **config["cfg"])
    _quiet_report_log()
    ctx = ray.train.get_context()  # 1. who am I: rank and world size
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed = cfg.train.seed
    seed_everything(seed + rank)
    device = ray.train.torch.get_device()  # 2. this worker's device (one GPU per worker, or the CPU)
    autocast = autocast_context(device, cfg.train.precision)

    # The model, its method and the optimisers. Builders take plain keyword arguments.
    model_kwargs = model_kwargs_of(cfg, config["num_speakers"])
    model = build_model(**model_kwargs)
    method = build_method(**asdict(cfg.method))
    # 3. DDP (gloo on CPU, NCCL on GPU); ALT/CONF leave the encoder out of their aux step.
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": method.find_unused_parameters})
    optimizers = method.optimizers(model, cfg.optim.lr, cfg.optim.aux_lr, cfg.optim.weight_decay)
    schedulers = build_schedulers(optimizers, cfg.optim.lr_decay)

    # 4. Resume: after a worker failure, or when the driver is run again on the same run folder.
    #    A latest checkpoint that is unreadable or non-finite: the driver's fall-back (the newest intact one).
    start, suffix = 0, ""
    checkpoint = ray.train.get_checkpoint() if config.get("resume", True) else None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state, fell_back = resume_state(Path(d) / CHECKPOINT_FILE, config.get("fallback"), model, optimizers,
                                            schedulers)
        if fell_back:  # Ray Train still lists the bad folder: never write (nor later delete) the same name
            suffix = f"-{config.get('attempt') or 'resumed'}"
        start = state["epoch"] + 1
        rngs = state["extra"].get("rng_ranks", [])
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        else:  # another world size than the checkpoint's: a fresh, still deterministic, stream
            seed_everything(seed + rank + 1000 * start)

    # 5. This worker's shards: train rows are split equally (DDP needs the same number of steps on
    #    every worker), validation rows go to exactly one worker each.
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    bs = cfg.data.batch_size
    # JPEG faces are decoded here, after the object-store hop: on the card (nvJPEG) on a GPU, else on a few threads.
    decoder = FaceDecoder(cfg.data.decode_threads, device if device.type == "cuda" else "cpu")

    for epoch in range(start, cfg.train.epochs):
        maybe_fail(cfg.train.fail_at_epoch, epoch, rank, world, config.get("fault_marker"))
        # batches: audio [B, N, 1, 40, T], faces [B, N, C, D, D], mask [B, N], emotion [B], speaker [B]
        train_batches = (collate(b, cfg.features, train=True, seed=seed, epoch=epoch, decoder=decoder)
                         for b in train_shard.iter_batches(batch_size=bs, batch_format="numpy",
                                                           local_shuffle_buffer_size=SHUFFLE_ROWS,
                                                           local_shuffle_seed=seed + epoch))
        val_batches = (collate(b, cfg.features, train=False, decoder=decoder)
                       for b in val_shard.iter_batches(batch_size=bs, batch_format="numpy"))
        # Train, recompute the BatchNorm statistics (averaged over workers), predict this worker's val rows.
        ep = run_epoch(model, train_batches, val_batches, method, optimizers, schedulers, epoch, cfg.train.epochs,
                       device, autocast, cfg.train.precise_bn_batches, steps_per_epoch=config.get("steps_per_epoch"),
                       on_step=lambda step_s, wait_s: record_step(step_s, wait_s, run=config.get("run")))
        logs, pred = ep.logs, ep.pred

        # Every worker's predictions gathered, so the metrics cover the whole validation set.
        preds = [p for p in all_gather(pred, world) if p]
        val = metrics({k: np.concatenate([p[k] for p in preds]) for k in preds[0]},
                      cfg.model.num_emotions) if preds else {}
        train = reduce_train_logs(all_gather(logs, world))
        row = {"epoch": epoch, "method": cfg.method.name, **{f"train_{k}": v for k, v in train.items()},
               **{f"val_{k}": v for k, v in val.items()}, **reencoding(val, config.get("prior_ce", {})),
               **ep.lrs, "val_time_s": ep.val_s, "workers": world}

        if rank == 0:  # custom metrics for the dashboard / Prometheus (values already cover every worker)
            record_epoch(row, run=config.get("run"))

        # 6. Report the metrics and a checkpoint (written by rank 0 into a temporary folder that Ray
        #    copies to the run's storage). Every rank saves its RNG state through rank 0.
        rngs = all_gather(rng_state(), world)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                extra = {"rng_ranks": rngs, "num_speakers": config["num_speakers"], "model_kwargs": model_kwargs,
                         "config": config["cfg"], "lam": float(logs.get("lam", 0.0)), "metrics": row}
                save_checkpoint(Path(tmp) / CHECKPOINT_FILE, model, optimizers, schedulers, epoch, extra)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(row, checkpoint=ckpt,
                             checkpoint_dir_name=f"{config.get('tag', '')}epoch_{epoch:04d}{suffix}")


def resume_state(latest: Path, fallback: str | None, model: torch.nn.Module, optimizers: Optimizers,
                 schedulers: Schedulers) -> tuple[dict[str, Any], bool]:
    """Load ``latest`` (Ray Train's latest checkpoint) into the model, optimisers and schedulers; when it is
    unreadable or non-finite (:class:`BadCheckpoint`), warn and load ``fallback`` instead. Returns the state
    (``epoch``, ``extra``) and whether it fell back. No fall-back (or the same file): :class:`BadCheckpoint`."""
    try:
        return load_checkpoint(latest, model, optimizers, schedulers, restore_rng=False), False
    except BadCheckpoint as e:
        if not fallback or Path(fallback).resolve() == latest.resolve():
            raise BadCheckpoint(f"{e}; no older intact checkpoint to resume from (delete the run's checkpoints "
                                f"folder to start over)") from None
        log.warning("%s; resuming from %s instead", e, fallback)
        return load_checkpoint(Path(fallback), model, optimizers, schedulers, restore_rng=False), True


def reencoding(val: dict[str, float], prior_ce: dict[str, float]) -> dict[str, float]:
    """Each aux head's validation cross-entropy over that of the identity-only prior (``prior_ce``: the val
    cross-entropy of p(emotion | speaker) and p(speaker | emotion) from train), and a 0/1 flag when it is above
    1: the head does worse than knowing only the other label, i.e. the encoder pushes it away from the label
    rather than removing it (re-encoding; docs/design.md §9)."""
    out: dict[str, float] = {}
    for head in ("aux_emo", "aux_spk"):
        prior = prior_ce.get(head)
        if prior is None or f"loss_{head}" not in val or not prior > 0:
            continue
        ratio = val[f"loss_{head}"] / prior
        out |= {f"val_prior_ce_{head}": float(prior), f"val_{head}_ce_over_prior": float(ratio),
                f"val_reencoding_{head[4:]}": float(ratio > 1.0)}
    return out


def _quiet_report_log() -> None:
    """Ray 2.60 logs every report at INFO (the whole metrics dict) under a logger named after its source
    file, outside ``ray.train``, so ``LoggingConfig`` cannot quiet it; the driver prints one line instead."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def maybe_fail(fail_at_epoch: int, epoch: int, rank: int, world: int, marker: str | None) -> None:
    """Fault injection: at the start of ``fail_at_epoch`` one worker (rank 1, or rank 0 when alone)
    dies hard, once per run folder (the marker file remembers it)."""
    if fail_at_epoch != epoch or rank != min(1, world - 1) or not marker or Path(marker).exists():
        return
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    Path(marker).write_text(f"worker {rank} killed at the start of epoch {epoch}\n")
    os._exit(1)


def all_gather(obj: Any, world: int) -> list[Any]:
    """Every worker's ``obj``, in rank order (a plain list with one worker)."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def reduce_train_logs(logs: list[dict[str, float]]) -> dict[str, float]:
    """Per-worker epoch logs -> one: means of the loss terms (every worker ran the same number of steps),
    sums of clips and throughput, the slowest worker's time."""
    out = {k: float(np.mean([x[k] for x in logs])) for k in logs[0]}
    for k in ("clips", "clips_per_s", "steps"):
        out[k] = float(sum(x[k] for x in logs))
    out["epoch_time_s"] = float(max(x["epoch_time_s"] for x in logs))
    return out
