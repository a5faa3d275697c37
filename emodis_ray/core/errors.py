"""The training errors that a retry cannot cure, in a module that imports nothing heavy: Ray Train's controller
checks worker errors against them (:mod:`emodis_ray.train.controller`) without importing torch for it."""

from __future__ import annotations

from typing import Any


class NonFiniteLoss(ValueError):
    """Training produced a NaN or infinite loss (or weights). A NaN is deterministic: the run stops, with one
    line naming the epoch and step (both counted from 1) and the loss term, never a retry or a NaN model.

    A ``ValueError`` so that the command line reports it as one line (exit 2) like other bad input."""

    def __init__(self, message: str, epoch: int = 0, step: int = 0, term: str = "") -> None:
        super().__init__(message)
        self.epoch, self.step, self.term = epoch, step, term

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (Ray) with its fields
        return type(self), (str(self), self.epoch, self.step, self.term)


class BadCheckpoint(ValueError):
    """A checkpoint or model file that is unreadable (truncated, not a torch file), lacks an entry or holds
    non-finite weights. One line naming the file; a ``ValueError``, so the command line prints it as one."""


FATAL = (NonFiniteLoss, BadCheckpoint)  # deterministic: a retry would fail the same way

__all__ = ["NonFiniteLoss", "BadCheckpoint", "FATAL"]
