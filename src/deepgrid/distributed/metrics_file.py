"""The master's callback that writes ``metrics.jsonl`` (see ``deepgrid.train.metrics_file``).

    runner.setup(conf)
    runner.callbacks.append(MetricsRecorder(MetricsFile(run_dir, fresh=resume is None)))
    runner.train()  # the file is closed when training ends, however it ends

A line after each round (``on_round_end``) and after each validation (``on_epoch_end``, which the
runner calls on the callbacks that have it, after an epoch and its validation).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepgrid.distributed.callbacks import RoundReport
from deepgrid.models.base import Phase
from deepgrid.train.logs import show_configuration
from deepgrid.train.metrics_file import MetricsFile, validation_accuracy

if TYPE_CHECKING:
    from deepgrid.distributed.runner import ActorNetworkRunner


class MetricsRecorder:
    """Writes the master's rounds and validations to a ``MetricsFile``."""

    def __init__(self, metrics: MetricsFile) -> None:
        self.metrics = metrics

    def on_round_end(self, master: ActorNetworkRunner, report: RoundReport) -> None:
        extra: dict[str, Any] = {"jobs": len(report.results)}
        # A strategy's own figures of the round (`sharing`: the bytes its workers sent), as the tracker gets them.
        extra.update(getattr(master.strategy, "round_metrics", {}) or {})
        self.metrics.add_round(round=report.round, phase=report.phase, epoch=master.progress.epoch + 1,
                               loss=report.loss, samples=report.n_samples, seconds=report.seconds,
                               workers=len({r.worker_id for r in report.results}), **extra)

    def on_train_end(self, master: ActorNetworkRunner) -> None:
        self.metrics.close()  # however the run ended: the lines are on disk, TensorBoard's too

    def on_epoch_end(self, master: ActorNetworkRunner, phase: Phase, epoch: int, loss: float,
                     validation: float | None) -> None:
        if validation is None:
            return
        # The runner validated with the round's parameters in master.model: the accuracy is of the same.
        self.metrics.add_validation(round=master.round, phase=phase.name, epoch=epoch + 1, loss=loss,
                                    validation_loss=validation, best_loss=master.progress.best_loss,
                                    accuracy=epoch_accuracy(master, phase, epoch))


def epoch_accuracy(master: ActorNetworkRunner, phase: Phase, epoch: int) -> float | None:
    """The validation accuracy after ``phase``'s ``epoch``, computed once however many callbacks ask
    (the metrics file and the dashboard): a pass over the validation set costs a few % of an epoch."""
    key = (phase.name, epoch, master.round)
    cached = master.accuracy_cache
    if cached is None or cached[0] != key:
        # The runner validated with the round's parameters in master.model: the accuracy is of the same.
        cached = master.accuracy_cache = (key, validation_accuracy(master.model, master.validation))
    return cached[1]


def call_hook(callbacks: list[Any], name: str, *args: Any) -> None:
    """Call ``name(*args)`` on each callback that has it (``on_epoch_end``, ``on_train_end``):
    hooks a callback may leave out, unlike ``on_round_end``."""
    for callback in callbacks:
        hook = getattr(callback, name, None)
        if hook is not None:
            hook(*args)


def begin_outputs(runner: ActorNetworkRunner, output: Path, *, resumed: bool) -> None:
    """What a command does once ``runner.setup`` has checked the Conf, its data and its servers:
    print the effective configuration (not earlier: an error must be the last line on the screen),
    and write the run's ``metrics.jsonl`` (appended to when ``resumed``) into ``output``."""
    show_configuration(runner.conf.describe(), checked=True)
    runner.callbacks.append(MetricsRecorder(MetricsFile(output, fresh=not resumed)))
