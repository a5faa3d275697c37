"""The training driver: :func:`fit` builds a Ray Train ``TorchTrainer`` that runs
:func:`~emodis_ray.train.worker.train_loop_per_worker` on N workers and writes the run folder
(:mod:`emodis_ray.train.run_dir`).

Calling :func:`fit` again on the same ``OUT`` resumes: Ray Train V2 finds its checkpoint snapshot under
the same ``storage_path``/``name`` and ``ray.train.get_checkpoint()`` returns the latest checkpoint.

Nothing silently wrong: a NaN loss raises :class:`~emodis_ray.core.errors.NonFiniteLoss` in the worker and the
driver re-raises it as is, without Ray Train's retries (a NaN is deterministic); a latest checkpoint that is
unreadable or non-finite is skipped with a warning for the newest intact one (:func:`resume_fallback`); no
``model.pt`` is exported from non-finite weights.

Sharding: train rows are cut by ``streaming_split(equal=True)`` (DDP needs the same number of steps on
every worker; up to ``workers - 1`` rows of an epoch are left out to make the shards equal), validation
rows by ``streaming_split(equal=False)`` (every row exactly once; predictions are gathered to all ranks).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train

from emodis_ray.config import Config
from emodis_ray.core.checkpoint import CHECKPOINT_FILE, MODEL_FILE, export_model, read_state
from emodis_ray.core.errors import BadCheckpoint
from emodis_ray.core.scores import prior_cross_entropy
from emodis_ray.runtime.session import cluster_cpus, ray_session, train_worker_cpus
from emodis_ray.train.controller import ReportLog, Sharding, StopOnFatal, fatal_cause
from emodis_ray.train.run_dir import (
    BAD_CLIPS_FILE,
    CONFIG_FILE,
    REPORTS_FILE,
    dedupe_epochs,
    format_row,
    plot_curves,
    read_reports,
    write_metrics,
    write_run_info,
    write_selection,
)
from emodis_ray.train.worker import train_loop_per_worker


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


CHECKPOINT_DIR = re.compile(r"epoch_(\d+)(-[\w.-]+)?")  # the worker's folder names (untagged runs)


def resume_fallback(run_storage: Path) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint file of a run's Ray Train storage folder (``epoch_NNNN[-suffix]/``, newest
    by epoch, then by time), and one warning per newer checkpoint skipped as unreadable or non-finite. None
    when the folder holds no checkpoint; :class:`BadCheckpoint` when it holds only bad ones."""
    found = []
    for d in run_storage.iterdir() if run_storage.is_dir() else ():
        m = CHECKPOINT_DIR.fullmatch(d.name)
        if m and d.is_dir():
            f = d / CHECKPOINT_FILE
            found.append((int(m.group(1)), f.stat().st_mtime if f.exists() else 0.0, f))
    warnings: list[str] = []
    for _, _, f in sorted(found, reverse=True):
        try:
            read_state(f)
        except BadCheckpoint as e:
            warnings.append(str(e))
            continue
        return f, [f"{w}; resuming from {f} instead" for w in warnings]
    if warnings:
        raise BadCheckpoint(f"no intact checkpoint to resume from in {run_storage}: {'; '.join(warnings)}; "
                            f"delete {run_storage} to start the run over")
    return None, []


def worker_resources(cfg: Config, cpus: float, runs_at_once: int = 1) -> dict[str, float]:
    """One GPU and one CPU per worker on GPUs; on CPUs, at most one CPU per worker and never the last
    one: Ray Data's read and decode tasks need a whole CPU, and without one the job hangs silently.
    ``runs_at_once``: this run shares the cluster with that many runs (their workers split the CPUs)."""
    if cfg.train.use_gpu:
        return {"CPU": 1.0, "GPU": 1.0}
    return {"CPU": train_worker_cpus(cfg.train.workers * max(runs_at_once, 1), cpus)}


class _Follow(threading.Thread):
    """Follows ``reports.jsonl`` while ``fit`` blocks: prints a line per epoch, writes TensorBoard events."""

    def __init__(self, path: Path, tb_dir: Path, epochs: int, printer: Callable[[str], None] | None) -> None:
        super().__init__(daemon=True)
        self.path, self.epochs, self.printer = path, epochs, printer
        self.offset = path.stat().st_size if path.exists() else 0
        done = dedupe_epochs(read_reports(path))
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events of epochs that are trained again (none, unless a report got lost)
        # (steps are epochs counted from 1, as on the console)
        self.writer = SummaryWriter(str(tb_dir), purge_step=int(done[-1]["epoch"]) + 2 if done else None)
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
                        self.writer.add_scalar(k.replace("_", "/", 1), v, int(row["epoch"]) + 1, row["wall_time"])
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
        callbacks: Sequence[ray.train.UserCallback] = (), storage: str | None = None,
        runs_at_once: int = 1) -> TrainResult:
    """Train ``cfg.method`` on the manifest's train split with ``cfg.train.workers`` Ray Train workers,
    validating on its val split each epoch; write everything into ``out`` (see the module docstring).

    Uses the running Ray (the caller's ``ray_session``) or starts a local one. ``data.cache_dir`` set:
    read the feature cache (it must match); empty: decode on the fly. ``train_loop`` is for tests and
    experiments: a function with the contract of :func:`train_loop_per_worker`. ``callbacks``: more Ray Train
    callbacks for the trainer's run config (e.g. Tune's ``TuneReportCallback`` when a Tune trial drives this run).
    ``storage``: where Ray Train keeps checkpoints (a path every node reaches, or an object-store URI);
    default ``out/checkpoints``. ``runs_at_once``: how many runs share the cluster with this one (a study's or a
    search's seeds; see ``cached_runs_at_once``): the CPU workers take that share of the CPUs.
    """
    with ray_session():
        return _fit(Path(manifest), Path(out), cfg, progress, max_decoders, train_loop, callbacks, storage,
                    runs_at_once)


def _fit(manifest: Path, out: Path, cfg: Config, progress: bool, max_decoders: int | None,
         train_loop: Callable[[dict[str, Any]], None],
         callbacks: Sequence[ray.train.UserCallback] = (), storage: str | None = None,
         runs_at_once: int = 1) -> TrainResult:
    from ray.train.torch import TorchTrainer

    from emodis_ray.data.cache import find_cache
    from emodis_ray.data.ingest import BadClipLog, bad_fraction_of, check_bad_fraction, split_rows, write_bad_clips
    from emodis_ray.data.manifest import manifest_hash, read_manifest

    t_start, wall_start = time.perf_counter(), time.time()
    out = Path(os.path.abspath(out))
    out.mkdir(parents=True, exist_ok=True)
    reports = out / REPORTS_FILE
    done = dedupe_epochs(read_reports(reports))
    if done and int(done[-1]["epoch"]) >= cfg.train.epochs - 1 and (out / MODEL_FILE).exists():
        if progress:
            print(f"{out}: already trained to epoch {int(done[-1]['epoch']) + 1}; nothing to do")
        return TrainResult(out=out, metrics=done, epochs_run=[], model_path=out / MODEL_FILE, source="",
                           elapsed_s=time.perf_counter() - t_start, first_report_s=float("nan"))
    cfg.save(out / CONFIG_FILE)
    df = read_manifest(manifest)
    write_run_info(out, manifest, manifest_hash(df), cfg.hash())
    num_speakers = int(df["speaker_idx"].max()) + 1
    prior_ce = identity_only_ce(df, cfg.model.num_emotions, num_speakers)
    n_train = int((df["split"] == "train").sum())
    info = find_cache(cfg.data.cache_dir, df, cfg.features) if cfg.data.cache_dir else None
    if info is not None:  # the cache knows every bad clip already: refuse before any worker starts
        n_train = info.splits.get("train", n_train)
        write_bad_clips(out / BAD_CLIPS_FILE, info.bad)
        check_bad_fraction(len(info.bad), len(df), cfg.data.max_bad_fraction, out / BAD_CLIPS_FILE)

    # 1. Datasets of segment rows (Ray Data), from the feature cache or decoded on the fly.
    log = BadClipLog.remote() if info is None else None
    data_ctx = ray.data.DataContext.get_current()
    bars, data_ctx.enable_progress_bars = data_ctx.enable_progress_bars, False  # one line per epoch instead
    try:
        train_ds, source = split_rows(df, info, "train", cfg, log, max_decoders)
        val_ds, _ = split_rows(df, info, "val", cfg, log, max_decoders)
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
    select = cfg.train.selection(cfg.method.name)
    # Resuming: the checkpoint to fall back to when Ray Train's latest is unreadable or non-finite (a path
    # on this machine: none for object-store storage, where a bad latest checkpoint is an error).
    fallback = None
    if "://" not in storage_path:
        fallback, skipped = resume_fallback(Path(storage_path) / name)
        for w in skipped:
            print(f"warning: {w}", file=sys.stderr, flush=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.to_dict(), "num_speakers": num_speakers,
            "steps_per_epoch": max(1, math.ceil(n_train // world / cfg.data.batch_size)),
            "fault_marker": str(out / "fault_injected"), "run": name, "prior_ce": prior_ce,
            "fallback": str(fallback) if fallback else None, "attempt": time.strftime("r%Y%m%d-%H%M%S"),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=world, use_gpu=cfg.train.use_gpu,
            resources_per_worker=worker_resources(cfg, cluster_cpus(), runs_at_once)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            # the best epoch by the selection metric is kept (and the latest, always: Ray keeps it for resuming)
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=select,
                                                         checkpoint_score_order=cfg.train.select_mode),
            callbacks=[ReportLog(str(reports)), StopOnFatal(), *callbacks],
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=Sharding(),
    )

    # 3. Run it; a thread follows the reports (progress lines, TensorBoard).
    follow = _Follow(reports, out / "tensorboard", cfg.train.epochs, print if progress else None)
    follow.start()
    sigint = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        fatal = fatal_cause(e)
        if fatal is None:
            raise
        raise fatal from None  # one line, as the worker raised it (Ray has logged the worker's traceback)
    finally:
        follow.stop()
        # Ray Train's Ctrl-C handler holds the run's controller handle: left installed, it keeps the controller,
        # and through it the data split coordinators and their blocks, alive until the next run (bench scale).
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
    elapsed = time.perf_counter() - t_start

    # 4. The run folder: metrics, bad clips, curves, the final model.
    rows = dedupe_epochs(read_reports(reports))
    write_metrics(out, rows)
    plot_curves(rows, out / "curves.png")
    if info is None:
        bad, _ = bad_fraction_of(log)
        bad = list({b["clip_id"]: b for b in bad}.values())  # every epoch decodes (and reports) again
        write_bad_clips(out / BAD_CLIPS_FILE, bad)
        ray.kill(log)
        n = int(df["split"].isin(["train", "val"]).sum())
        check_bad_fraction(len(bad), n, cfg.data.max_bad_fraction, out / BAD_CLIPS_FILE)
    # 5. The model: the best epoch by the selection metric among the checkpoints Ray Train kept (an unreadable
    #    or non-finite one skipped for the next best).
    epoch = export_best(result.best_checkpoints, select, cfg.train.select_mode, out / MODEL_FILE)
    if epoch is not None:
        row = next((r for r in rows if int(r["epoch"]) == epoch), {})
        write_selection(out, epoch, select, cfg.train.select_mode, row.get(select))
        if progress:
            v = row.get(select, float("nan"))
            shown = f"{100 * v:.1f} %" if select.endswith(("_f1", "_acc")) else f"{v:.4g}"  # scores in percent
            print(f"model.pt: epoch {epoch + 1} of {len(rows)}, the best by {select} ({cfg.train.select_mode}"
                  f"imum: {shown})")
    first = follow.rows[0]["wall_time"] - wall_start if follow.rows else float("nan")
    return TrainResult(out=out, metrics=rows, epochs_run=[int(r["epoch"]) for r in follow.rows],
                       model_path=out / MODEL_FILE, source=source, elapsed_s=elapsed, first_report_s=first)


def export_best(checkpoints: Sequence[tuple[Any, dict[str, Any]]], select: str, mode: str, path: Path) -> int | None:
    """Export the best of Ray Train's kept ``(checkpoint, metrics)`` by ``select`` (ties: the first, as
    ``Result.get_best_checkpoint``) to ``path``; one that is unreadable or non-finite is skipped with a warning
    for the next best. Returns the epoch, None when nothing was kept; :class:`BadCheckpoint` when none is intact."""
    ranked = sorted((c for c in checkpoints if c[1].get(select) is not None), key=lambda c: c[1][select],
                    reverse=mode == "max")
    errors: list[str] = []
    for checkpoint, _ in ranked:
        with checkpoint.as_directory() as d:
            try:
                epoch = export_model(Path(d) / CHECKPOINT_FILE, path)
            except BadCheckpoint as e:
                errors.append(str(e))
                print(f"warning: {e}; exporting the next best checkpoint", file=sys.stderr, flush=True)
                continue
        return epoch
    if errors:
        raise BadCheckpoint(f"no intact checkpoint to export {path.name} from: {'; '.join(errors)}")
    return None


def identity_only_ce(df: Any, num_emotions: int, num_speakers: int) -> dict[str, float]:
    """The validation cross-entropy of the identity-only priors fitted on train: p(emotion | speaker) for the
    aux head that reads the speaker embedding, p(speaker | emotion) for the one that reads the emotion
    embedding (the workers compare their aux heads with it: re-encoding)."""
    tr, va = df[df["split"] == "train"], df[df["split"] == "val"]
    if not len(tr) or not len(va):
        return {}
    e_tr, s_tr = tr["emotion_idx"].to_numpy(), tr["speaker_idx"].to_numpy()
    e_va, s_va = va["emotion_idx"].to_numpy(), va["speaker_idx"].to_numpy()
    return {"aux_emo": prior_cross_entropy(s_tr, e_tr, s_va, e_va, num_emotions),
            "aux_spk": prior_cross_entropy(e_tr, s_tr, e_va, s_va, num_speakers)}
