"""Distributed training with Ray Train: a per-worker loop and the driver that launches it.

The worker loop (:func:`train_loop_per_worker`) reads top to bottom; the numbered comments mark every
place it touches Ray. Everything else (one epoch, evaluation, checkpoint files) is plain PyTorch in
``engine.py``, ``methods.py`` and ``model.py``. This is the only module that imports ``ray.train``.

A run folder ``OUT`` holds::

    config.yaml          the resolved config of the latest call
    run.json             the manifest it trained on (path and hash), for `emodis evaluate`
    reports.jsonl        every ``ray.train.report`` as it happened (appended, one JSON line each)
    metrics.csv / .json  one row per epoch (deduplicated by epoch, the last report wins)
    tensorboard/         TensorBoard events of the same metrics
    bad_clips.csv        clips that could not be decoded (from the stream or the feature cache)
    curves.png           losses, validation emotion F1, identity accuracy and aux-head leakage per epoch
    model.pt             the final weights with what it takes to rebuild the model without Ray
    checkpoints/OUT/     Ray Train storage: the last two checkpoints (``epoch_NNNN/checkpoint.pt``);
                         ``--storage`` puts it on a shared filesystem or an object-store URI instead

Calling :func:`fit` again on the same ``OUT`` resumes: Ray Train V2 finds its checkpoint snapshot under
the same ``storage_path``/``name`` and ``ray.train.get_checkpoint()`` returns the latest checkpoint.

Sharding: train rows are cut by ``streaming_split(equal=True)`` (DDP needs the same number of steps on
every worker; up to ``workers - 1`` rows of an epoch are left out to make the shards equal), validation
rows by ``streaming_split(equal=False)`` (every row exactly once; predictions are gathered to all ranks).

Determinism: with ``preserve_order`` on, the splitter hands the (ordered) blocks to the workers
deterministically; the local shuffle is seeded by (seed, epoch), the crop by (seed, epoch, clip id), and
each rank's RNG state is saved with the checkpoint. So a run, a rerun, a run restarted after a worker
failure and a stopped-then-resumed run give bit-identical numbers on CPU (tests/test_train.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data import ExecutionOptions

from emodis_ray.config import Config, replace
from emodis_ray.core.loop import (
    autocast_context,
    load_checkpoint,
    metrics,
    predict,
    recompute_bn_stats,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    train_epoch,
)
from emodis_ray.core.methods import build_method, build_schedulers
from emodis_ray.core.model import MultitaskModel, build_model, unwrap
from emodis_ray.data.rows import collate
from emodis_ray.runtime.telemetry import record_epoch, record_step

CHECKPOINT_FILE = "checkpoint.pt"
T = TypeVar("T")
SHUFFLE_ROWS = 256  # local shuffle buffer per worker, in clips (~4 MB each at the paper's 12 s / 224 px)


# --- the per-worker loop -------------------------------------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. ``config``: ``cfg`` (a ``Config.to_dict()``), ``num_speakers``,
    ``steps_per_epoch``, ``fault_marker`` (a path); optional ``resume`` (default True) and ``tag`` (a prefix
    of the checkpoint folder names, for several runs of this loop inside one Ray Train run)."""
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
    start = 0
    checkpoint = ray.train.get_checkpoint() if config.get("resume", True) else None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(Path(d) / CHECKPOINT_FILE, model, optimizers, schedulers, restore_rng=False)
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

    for epoch in range(start, cfg.train.epochs):
        maybe_fail(cfg.train.fail_at_epoch, epoch, rank, world, config.get("fault_marker"))
        # batches: audio [B, N, 1, 40, T], faces [B, N, C, D, D], mask [B, N], emotion [B], speaker [B]
        train_batches = (collate(b, cfg.features, train=True, seed=seed, epoch=epoch)
                         for b in train_shard.iter_batches(batch_size=bs, batch_format="numpy",
                                                           local_shuffle_buffer_size=SHUFFLE_ROWS,
                                                           local_shuffle_seed=seed + epoch))
        last = deque(maxlen=cfg.train.precise_bn_batches)  # the epoch's last batches, for precise BatchNorm
        logs = train_epoch(model, keep_last(train_batches, last), method, optimizers, epoch, cfg.train.epochs,
                           device, autocast, log_every=0, steps_per_epoch=config.get("steps_per_epoch"),
                           on_step=lambda step_s, wait_s: record_step(step_s, wait_s, run=config.get("run")))
        lrs = {"lr": optimizers.main.param_groups[0]["lr"], "aux_lr": optimizers.aux.param_groups[0]["lr"]}
        schedulers.step()
        # BatchNorm statistics of the final weights (the running averages lag them), averaged over workers.
        recompute_bn_stats(unwrap(model), last, device, autocast)

        # Validation on this worker's rows with the plain model (no DDP collectives per batch),
        # then every worker's predictions gathered, so the metrics cover the whole validation set.
        val_batches = (collate(b, cfg.features, train=False)
                       for b in val_shard.iter_batches(batch_size=bs, batch_format="numpy"))
        t0 = time.perf_counter()
        pred = predict(unwrap(model), val_batches, device, autocast)
        val_s = time.perf_counter() - t0
        preds = [p for p in all_gather(pred, world) if p]
        val = metrics({k: np.concatenate([p[k] for p in preds]) for k in preds[0]},
                      cfg.model.num_emotions) if preds else {}
        train = reduce_train_logs(all_gather(logs, world))
        row = {"epoch": epoch, "method": cfg.method.name, **{f"train_{k}": v for k, v in train.items()},
               **{f"val_{k}": v for k, v in val.items()}, **lrs, "val_time_s": val_s, "workers": world}

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
            ray.train.report(row, checkpoint=ckpt, checkpoint_dir_name=f"{config.get('tag', '')}epoch_{epoch:04d}")


def keep_last(batches: Iterable[T], last: deque[T]) -> Iterator[T]:
    """Yield ``batches`` unchanged, keeping the most recent ones in ``last`` (a bounded deque)."""
    for b in batches:
        if last.maxlen:
            last.append(b)
        yield b


def _quiet_report_log() -> None:
    """Ray 2.60 logs every report at INFO (the whole metrics dict) under a logger named after its source
    file, outside ``ray.train``, so ``LoggingConfig`` cannot quiet it; the driver prints one line instead."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def model_kwargs_of(cfg: Config, num_speakers: int) -> dict[str, Any]:
    """The keyword arguments of ``build_model`` for this config and speaker count."""
    return {"num_speakers": int(num_speakers), **asdict(cfg.model), "in_channels": 1 if cfg.features.grey else 3}


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


# --- the driver ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    out: Path
    metrics: list[dict[str, Any]]  # one row per epoch, every epoch of the run folder
    epochs_run: list[int]  # the epochs this call trained (empty when the run was already finished)
    model_path: Path
    source: str  # "cache <folder>" or "streaming decode"
    elapsed_s: float
    first_report_s: float  # from the call to the first report (start-up + one epoch); nan if none

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}


class _ReportLog(ray.train.UserCallback):
    """Runs on the Train controller (on the driver's node): appends every report to ``reports.jsonl``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        row = {**metrics[0], "wall_time": time.time()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class _Sharding(ray.train.DataConfig):
    """``train``: equal shards; ``val``: every row exactly once. Order preserved (deterministic shards)."""

    def __init__(self) -> None:
        super().__init__(execution_options=ExecutionOptions(preserve_order=True), enable_shard_locality=False)

    def configure(self, datasets: dict[str, Any], world_size: int, worker_handles: Any, worker_node_ids: Any,
                  **kwargs: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            ds.context.execution_options = ExecutionOptions(preserve_order=True)
            ds.context.enable_progress_bars = False  # the driver prints one line per epoch instead
            ds.context.print_on_execution_start = False
            for i, split in enumerate(ds.streaming_split(world_size, equal=(name == "train"))):
                out[i][name] = split
        return out


def worker_resources(cfg: Config, cluster_cpus: float) -> dict[str, float]:
    """One GPU and one CPU per worker on GPUs; on CPUs, at most one CPU per worker and never the last
    one: Ray Data's read and decode tasks need a whole CPU, and without one the job hangs silently."""
    if cfg.train.use_gpu:
        return {"CPU": 1.0, "GPU": 1.0}
    return {"CPU": max(0.0, min(1.0, (cluster_cpus - 1.0) / cfg.train.workers))}


def _read_reports(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dedupe_epochs(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch, the last report of each epoch wins, sorted by epoch."""
    by_epoch = {int(r["epoch"]): r for r in reports}
    return [by_epoch[e] for e in sorted(by_epoch)]


def format_row(row: dict[str, Any], epochs: int) -> str:
    m = lambda k: row.get(k, float("nan"))  # noqa: E731
    return (f"epoch {int(row['epoch']) + 1}/{epochs}  loss {m('train_loss'):.4f}  l_prim {m('train_l_prim'):.4f}"
            f"  | val emo_f1 {m('val_emo_f1'):.3f}  spk_acc {m('val_spk_acc'):.3f}"
            f"  | leak aux_emo_f1 {m('val_aux_emo_f1'):.3f}  aux_spk_acc {m('val_aux_spk_acc'):.3f}"
            f"  | {m('train_epoch_time_s'):.1f} s, {m('train_clips_per_s'):.1f} clips/s")


class _Follow(threading.Thread):
    """Follows ``reports.jsonl`` while ``fit`` blocks: prints a line per epoch, writes TensorBoard events."""

    def __init__(self, path: Path, tb_dir: Path, epochs: int, printer: Callable[[str], None] | None) -> None:
        super().__init__(daemon=True)
        self.path, self.epochs, self.printer = path, epochs, printer
        self.offset = path.stat().st_size if path.exists() else 0
        done = dedupe_epochs(_read_reports(path))
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events of epochs that are trained again (none, unless a report got lost)
        self.writer = SummaryWriter(str(tb_dir), purge_step=int(done[-1]["epoch"]) + 1 if done else None)
        self.rows: list[dict[str, Any]] = []
        self._done = threading.Event()

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for line in iter(f.readline, b""):
                if not line.endswith(b"\n"):  # half-written: read it next time
                    break
                self.offset += len(line)
                row = json.loads(line)
                self.rows.append(row)
                if self.printer:
                    self.printer(format_row(row, self.epochs))
                for k, v in row.items():
                    if k not in ("epoch", "wall_time") and isinstance(v, (int, float)):
                        self.writer.add_scalar(k.replace("_", "/", 1), v, int(row["epoch"]), row["wall_time"])
                self.writer.flush()

    def run(self) -> None:
        while not self._done.wait(0.5):
            self.poll()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.poll()
        self.writer.close()


def fit(manifest: Path, out: Path, cfg: Config, *, progress: bool = True, max_decoders: int | None = None,
        train_loop: Callable[[dict[str, Any]], None] = train_loop_per_worker,
        callbacks: Sequence[ray.train.UserCallback] = (), storage: str | None = None) -> TrainResult:
    """Train ``cfg.method`` on the manifest's train split with ``cfg.train.workers`` Ray Train workers,
    validating on its val split each epoch; write everything into ``out`` (see the module docstring).

    Uses the running Ray (the caller's ``ray_session``) or starts a local one. ``data.cache_dir`` set:
    read the feature cache (it must match); empty: decode on the fly. ``train_loop`` is for tests and
    experiments: a function with the contract of :func:`train_loop_per_worker`. ``callbacks``: more Ray Train
    callbacks for the trainer's run config (e.g. Tune's ``TuneReportCallback`` when a Tune trial drives this run).
    ``storage``: where Ray Train keeps checkpoints (a path every node reaches, or an object-store URI);
    default ``out/checkpoints``.
    """
    from emodis_ray.runtime.session import ray_session

    with ray_session():
        return _fit(Path(manifest), Path(out), cfg, progress, max_decoders, train_loop, callbacks, storage)


def _fit(manifest: Path, out: Path, cfg: Config, progress: bool, max_decoders: int | None,
         train_loop: Callable[[dict[str, Any]], None],
         callbacks: Sequence[ray.train.UserCallback] = (), storage: str | None = None) -> TrainResult:
    from ray.train.torch import TorchTrainer

    from emodis_ray.data.ingest import BadClipLog, bad_fraction_of, check_bad_fraction, split_rows, write_bad_clips
    from emodis_ray.data.manifest import manifest_hash, read_manifest
    from emodis_ray.data.rows import find_cache

    t_start, wall_start = time.perf_counter(), time.time()
    out = Path(os.path.abspath(out))
    out.mkdir(parents=True, exist_ok=True)
    reports = out / "reports.jsonl"
    done = dedupe_epochs(_read_reports(reports))
    if done and int(done[-1]["epoch"]) >= cfg.train.epochs - 1 and (out / "model.pt").exists():
        if progress:
            print(f"{out}: already trained to epoch {int(done[-1]['epoch']) + 1}; nothing to do")
        return TrainResult(out=out, metrics=done, epochs_run=[], model_path=out / "model.pt", source="",
                           elapsed_s=time.perf_counter() - t_start, first_report_s=float("nan"))
    cfg.save(out / "config.yaml")
    df = read_manifest(manifest)
    (out / "run.json").write_text(json.dumps({  # what `emodis evaluate` needs to find the data again
        "manifest": os.path.abspath(manifest), "manifest_hash": manifest_hash(df), "config_hash": cfg.hash()}))
    num_speakers = int(df["speaker_idx"].max()) + 1
    n_train = int((df["split"] == "train").sum())
    info = find_cache(cfg.data.cache_dir, manifest_hash(df), cfg.features) if cfg.data.cache_dir else None
    if info is not None:
        n_train = info.splits.get("train", n_train)

    # 1. Datasets of segment rows (Ray Data), from the feature cache or decoded on the fly.
    log = BadClipLog.remote() if info is None else None
    data_ctx = ray.data.DataContext.get_current()
    bars, data_ctx.enable_progress_bars = data_ctx.enable_progress_bars, False  # one line per epoch instead
    try:
        train_ds, source = split_rows(manifest, "train", cfg, log, max_decoders)
        val_ds, _ = split_rows(manifest, "val", cfg, log, max_decoders)
    finally:
        data_ctx.enable_progress_bars = bars

    # 2. The trainer: N workers, storage under a fixed name (in the run folder, or a shared filesystem /
    #    object-store URI for multi-node runs), retries, two checkpoints kept.
    name = out.name
    if storage:
        storage_path = storage if "://" in storage else os.path.abspath(storage)
    else:
        storage_path = str(out / "checkpoints")
    world = cfg.train.workers
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.to_dict(), "num_speakers": num_speakers,
            "steps_per_epoch": max(1, math.ceil(n_train // world / cfg.data.batch_size)),
            "fault_marker": str(out / "fault_injected"), "run": name,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=world, use_gpu=cfg.train.use_gpu,
            resources_per_worker=worker_resources(cfg, float(ray.cluster_resources().get("CPU", 1)))),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[_ReportLog(str(reports)), *callbacks],
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=_Sharding(),
    )

    # 3. Run it; a thread follows the reports (progress lines, TensorBoard).
    follow = _Follow(reports, out / "tensorboard", cfg.train.epochs, print if progress else None)
    follow.start()
    try:
        result = trainer.fit()
    finally:
        follow.stop()
    elapsed = time.perf_counter() - t_start

    # 4. The run folder: metrics, bad clips, curves, the final model.
    rows = dedupe_epochs(_read_reports(reports))
    write_metrics(out, rows)
    plot_curves(rows, out / "curves.png")
    if info is not None:
        shutil.copyfile(info.root / "bad_clips.csv", out / "bad_clips.csv")
    else:
        bad, _ = bad_fraction_of(log)
        bad = list({b["clip_id"]: b for b in bad}.values())  # every epoch decodes (and reports) again
        write_bad_clips(out / "bad_clips.csv", bad)
        ray.kill(log)
        n = int(df["split"].isin(["train", "val"]).sum())
        check_bad_fraction(len(bad), n, cfg.data.max_bad_fraction, out / "bad_clips.csv")
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            export_model(Path(d) / CHECKPOINT_FILE, out / "model.pt")
    first = follow.rows[0]["wall_time"] - wall_start if follow.rows else float("nan")
    return TrainResult(out=out, metrics=rows, epochs_run=[int(r["epoch"]) for r in follow.rows],
                       model_path=out / "model.pt", source=source, elapsed_s=elapsed, first_report_s=first)


def write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    (out / "metrics.json").write_text(json.dumps(rows, indent=1))
    pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False)


def export_model(checkpoint: Path, path: Path) -> None:
    """The model part of a training checkpoint: plain weights, ``model_kwargs`` (for ``build_model``),
    ``num_speakers``, the config, the epoch and its metrics. Loads with ``torch.load(weights_only=True)``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    extra = state["extra"]
    model = {"model": state["model"], "model_kwargs": extra["model_kwargs"], "num_speakers": extra["num_speakers"],
             "config": extra["config"], "epoch": state["epoch"], "metrics": extra.get("metrics", {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model, tmp)
    os.replace(tmp, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MultitaskModel, dict[str, Any]]:
    """Rebuild a trained model from ``model.pt`` (no Ray needed); returns it in eval mode and the file's
    other entries (config, epoch, metrics, ...)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(**state["model_kwargs"])
    model.load_state_dict(state.pop("model"))
    return model.to(device).eval(), state


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training curves per epoch: losses; validation emotion F1 and identity accuracy; aux-head leakage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    ep = [int(r["epoch"]) for r in rows]
    col = lambda k: [r.get(k, float("nan")) for r in rows]  # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for k in ("train_loss", "train_l_prim", "train_l_aux", "val_loss_emo", "val_loss_spk"):
        if k in rows[-1]:
            axes[0].plot(ep, col(k), marker=".", label=k)
    axes[0].set_title("losses")
    for k, label in (("val_emo_f1", "emotion macro-F1"), ("val_spk_acc", "identity accuracy")):
        axes[1].plot(ep, col(k), marker=".", label=label)
    axes[1].set_title("validation")
    axes[1].set_ylim(0, 1)
    for k, label in (("val_aux_emo_f1", "emotion F1 from speaker emb."),
                     ("val_aux_spk_acc", "identity acc. from emotion emb.")):
        axes[2].plot(ep, col(k), marker=".", label=label)
    axes[2].set_title("aux heads (online leakage)")
    axes[2].set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
