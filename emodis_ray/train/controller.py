"""What Ray Train runs outside the train workers: the callbacks on its controller and the data config on its
dataset manager.

Ray Train unpickles these classes in their own processes (``TrainController``, ``DatasetManager``), importing
this module there. So it imports Ray and :mod:`emodis_ray.core.errors` only: no torch, sklearn or plotting,
which cost those processes about 4 s of CPU each at every run's start-up (two CPUs, `python -X importtime`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import ray.train
from ray.data import ExecutionOptions

from emodis_ray.core.errors import FATAL


class ReportLog(ray.train.UserCallback):
    """Runs on the Train controller (on the driver's node): appends every report to ``reports.jsonl``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        row = {**metrics[0], "wall_time": time.time()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class StopOnFatal(ray.train.UserCallback):
    """Runs on the Train controller: a worker error that a retry cannot cure (:data:`~emodis_ray.core.errors.FATAL`)
    is raised here, before Ray Train's failure policy sees it. A callback's error ends the run at once (a
    ``ControllerError`` is not retried), so ``FailureConfig.max_failures`` is left to real failures (a dead
    worker or node)."""

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for e in worker_exceptions.values():
            if isinstance(e, FATAL):
                raise e


def fatal_cause(error: BaseException) -> BaseException | None:
    """The fatal error a Ray Train failure wraps (a ``ControllerError`` raised by :class:`StopOnFatal`, a
    ``WorkerGroupError`` from a worker, any ``__cause__``), or None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, FATAL):
            return e
        todo += [getattr(e, "controller_failure", None), *getattr(e, "worker_failures", {}).values(),
                 getattr(e, "_base_exc", None), e.__cause__]
    return None


class Sharding(ray.train.DataConfig):
    """Runs on Ray Train's dataset manager. ``train``: equal shards (DDP needs the same number of steps on every
    worker); ``val``: every row exactly once. Order preserved (deterministic shards)."""

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


__all__ = ["ReportLog", "StopOnFatal", "fatal_cause", "Sharding"]
