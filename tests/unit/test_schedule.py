"""The shared phase/epoch loop: order, early stopping, resuming, and the progress it keeps."""

from __future__ import annotations

import math

from deepgrid.models.base import FINETUNE, Phase
from deepgrid.train.schedule import RunProgress, run_phases


class TwoPhases:
    """What run_phases needs of a model: its phases (an unsupervised one, then fine-tuning)."""

    def phases(self, epochs: int | None) -> list[Phase]:
        return [Phase("pretrain", 2, supervised=False), Phase(FINETUNE, epochs or 3, supervised=True)]


def run(progress: RunProgress, losses: list[float], **kwargs) -> tuple[bool, list[tuple[str, int, tuple]], list]:
    trained: list[tuple[str, int, tuple]] = []
    started: list[str] = []
    values = iter(losses)
    finished = run_phases(TwoPhases(), None, lambda i, phase, epoch, skip: trained.append(
        (phase.name, epoch, tuple(sorted(skip)))) or 1.0, progress,
        validate=lambda: next(values), on_phase=lambda phase: started.append(phase.name), **kwargs)
    return finished, trained, started


def test_every_phase_and_epoch_in_order() -> None:
    progress = RunProgress()
    finished, trained, started = run(progress, [3.0, 2.0, 1.0])
    assert finished
    assert trained == [("pretrain", 0, ()), ("pretrain", 1, ()), (FINETUNE, 0, ()), (FINETUNE, 1, ()), (FINETUNE, 2, ())]
    assert started == ["pretrain", FINETUNE]
    assert (progress.phase, progress.phase_index, progress.epoch, progress.best_loss) == (FINETUNE, 1, 2, 1.0)


def test_early_stopping_ends_the_run_and_only_supervised_phases_validate() -> None:
    progress = RunProgress()
    finished, trained, _ = run(progress, [1.0, 1.5, 1.6], patience=2)
    assert not finished
    assert [t[:2] for t in trained] == [("pretrain", 0), ("pretrain", 1), (FINETUNE, 0), (FINETUNE, 1), (FINETUNE, 2)]
    assert progress.best_loss == 1.0 and progress.bad_checks == 2


def test_a_resumed_run_starts_where_it_stood_with_its_stopping_state() -> None:
    saved = RunProgress(round=7, phase=FINETUNE, phase_index=1, epoch=1, done_jobs={0, 2}, best_loss=1.0, bad_checks=1)
    progress = RunProgress.from_meta(saved.to_meta())
    assert progress == saved
    finished, trained, started = run(progress, [1.5], resume=True, patience=2)
    assert not finished  # the check saved before the crash counts: one more without gain stops it
    assert trained == [(FINETUNE, 1, (0, 2))]  # the jobs trained before the crash are skipped
    assert started == []  # the resumed phase does not start afresh (no momentum reset)


def test_progress_meta_has_no_infinity() -> None:
    meta = RunProgress().to_meta()
    assert meta["best_loss"] is None and not any(isinstance(v, float) and math.isinf(v) for v in meta.values())
