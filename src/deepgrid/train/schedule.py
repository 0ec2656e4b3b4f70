"""The one phase/epoch loop that every training path runs, and where a run stands in it.

``run_phases`` walks every phase of a model (a DBN: pretrain layer 1 ... n, then fine-tune),
every epoch of each, checks the validation loss after each supervised epoch and stops early as
the seed did. How an epoch is trained is the caller's: the reference loop trains its jobs in
this process (``train.loop.fit``), the master hands them to workers round by round. Both
resume from a ``RunProgress``: what a checkpoint's metadata records.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deepgrid.models.base import Model, Phase


class EarlyStopping:
    """The seed's early stopping: stop after ``patience`` checks without improving by ``min_improvement``."""

    def __init__(self, patience: int, min_improvement: float = 1e-3) -> None:
        self.patience, self.min_improvement = patience, min_improvement
        self.best, self.bad_checks = math.inf, 0

    def should_stop(self, loss: float) -> bool:
        if loss < self.best - self.min_improvement:
            self.best, self.bad_checks = loss, 0
        else:
            self.bad_checks += 1
        return self.patience > 0 and self.bad_checks >= self.patience


@dataclass
class RunProgress:
    """Where a run stands: the phase and epoch under way, the jobs of that epoch already trained,
    the rounds done, and the early stopping state. It round-trips through checkpoint metadata."""

    round: int = 0
    phase: str = ""
    phase_index: int = 0
    epoch: int = 0
    done_jobs: set[int] = field(default_factory=set)
    best_loss: float | None = None  # None: no validation yet in this phase (JSON has no infinity)
    bad_checks: int = 0

    def to_meta(self) -> dict[str, Any]:
        return {"phase": self.phase, "phase_index": self.phase_index, "epoch": self.epoch, "round": self.round,
                "param_version": self.round, "done_jobs": sorted(self.done_jobs),
                "best_loss": self.best_loss, "bad_checks": self.bad_checks}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> RunProgress:
        best = meta.get("best_loss")
        return cls(round=int(meta.get("round", 0)), phase=str(meta.get("phase") or ""),
                   phase_index=int(meta.get("phase_index", 0)), epoch=int(meta.get("epoch", 0)),
                   done_jobs=set(meta.get("done_jobs", [])), best_loss=None if best is None else float(best),
                   bad_checks=int(meta.get("bad_checks", 0)))


# train_epoch(phase_index, phase, epoch, skip) -> the epoch's mean training loss; ``skip``: the
# indices of the epoch's jobs already trained before a resume.
TrainEpoch = Callable[[int, Phase, int, set[int]], float]
# on_epoch(phase, epoch, training loss, validation loss or None)
OnEpoch = Callable[[Phase, int, float, float | None], None]


def run_phases(model: Model, epochs: int | None, train_epoch: TrainEpoch, progress: RunProgress, *,
               resume: bool = False, validate: Callable[[], float] | None = None, patience: int = 0,
               min_improvement: float = 1e-3, on_phase: Callable[[Phase], None] | None = None,
               on_epoch: OnEpoch | None = None) -> bool:
    """Train every phase of ``model``; False when early stopping ended the run.

    ``progress`` is kept up to date as the run goes (the caller checkpoints it); with ``resume``
    the run starts at its phase, epoch and jobs. ``on_phase`` is called when a phase starts
    afresh (not when a resumed run re-enters it); ``validate`` returns the validation loss.
    """
    for phase_index, phase in enumerate(model.phases(epochs)):
        if resume and phase_index < progress.phase_index:
            continue
        stopper = EarlyStopping(patience, min_improvement)
        first_epoch, skip = 0, set()
        if resume and phase_index == progress.phase_index:
            # The resumed phase: its epoch, its jobs already trained, its early stopping state.
            first_epoch, skip = progress.epoch, set(progress.done_jobs)
            stopper.best = math.inf if progress.best_loss is None else progress.best_loss
            stopper.bad_checks = progress.bad_checks
        else:
            progress.best_loss, progress.bad_checks = None, 0
            if on_phase is not None:
                on_phase(phase)
        resume = False
        for epoch in range(first_epoch, phase.epochs):
            progress.phase_index, progress.phase, progress.epoch = phase_index, phase.name, epoch
            progress.done_jobs = set(skip)
            loss = train_epoch(phase_index, phase, epoch, skip)
            skip = set()
            val, stop = None, False
            if validate is not None and phase.supervised:
                val = validate()
                stop = stopper.should_stop(val)
                progress.best_loss, progress.bad_checks = stopper.best, stopper.bad_checks
            if on_epoch is not None:
                on_epoch(phase, epoch, loss, val)
            if stop:
                return False
    return True
