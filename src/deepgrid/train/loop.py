"""The reference training loop: one process, every phase, start to end.

Each distributed path reduces to this: the data of an epoch are cut into
mini-batches in a fixed order (``batch_order``), those into jobs of
``job_size`` batches, and each job goes through ``model.train_step``. A
distributed run hands the jobs to workers and averages their parameters; with
one worker it computes exactly what this loop computes.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from deepgrid.data.dataset import ArrayDataset, Batches
from deepgrid.errors import DataError
from deepgrid.models.base import Model, Phase
from deepgrid.train.denormals import denormals_flushed
from deepgrid.train.metrics_file import MetricsFile, validation_accuracy
from deepgrid.train.schedule import RunProgress, run_phases


@dataclass
class FitResult:
    """What a run did: samples trained, seconds taken, and per-epoch losses."""

    samples: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, float | str]] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0


def phase_seed(seed: int, phase_index: int) -> int:
    """Each phase shuffles differently, every worker alike."""
    return seed + 7919 * phase_index


def seed_job_noise(seed: int, phase: str, epoch: int, job_index: int) -> None:
    """Seed torch's RNG (dropout, Gibbs sampling, corruption) for one job.

    The noise then depends on the job, not on which process trains it or what
    ran there before: one worker computes exactly what ``fit`` computes, and a
    job re-trained after a worker died draws the same noise.
    """
    torch.manual_seed(seed * 1_000_003 + zlib.crc32(f"{phase}/{epoch}/{job_index}".encode()))


def jobs(order: torch.Tensor, job_size: int) -> Iterator[torch.Tensor]:
    """Cut an epoch's batch order (n_batches, B) into jobs of at most ``job_size`` batches.

    The jobs are as even as they can be (937 batches at 100 give 7 jobs of 94 and 3 of 93,
    not 9 of 100 and one of 37): workers in a round then finish together instead of one
    waiting while another trains the long job.
    """
    n_jobs = -(-len(order) // job_size)
    base, extra = divmod(len(order), n_jobs) if n_jobs else (0, 0)
    start = 0
    for index in range(n_jobs):
        size = base + (1 if index < extra else 0)
        yield order[start : start + size]
        start += size


def validation_loss(model: Model, data: ArrayDataset) -> float:
    model.module.eval()
    with torch.no_grad():
        total = sum(float(model.batch_loss("finetune", x, y)[1]) * len(x)
                    for x, y in zip(data.x.split(4096), data.y.split(4096), strict=True))
    return total / len(data)


def as_validation_data(data: ArrayDataset | tuple[Any, Any], model: Model) -> ArrayDataset:
    """``validation_data`` as an ArrayDataset: one already, or a pair (features, labels)."""
    if isinstance(data, ArrayDataset):
        return data
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise DataError(f"validation_data must be a pair (x, y) or an ArrayDataset, not {type(data).__name__}.")
    return ArrayDataset.from_any(data[0], data[1], n_in=model.conf.n_in, n_classes=model.conf.n_out)


def fit(
    model: Model,
    data: ArrayDataset | Any,
    y: Any = None,
    *,
    epochs: int | None = None,
    batch_size: int = 64,
    job_size: int = 20,
    validation_data: ArrayDataset | tuple[Any, Any] | None = None,
    validation: ArrayDataset | None = None,
    patience: int = 0,
    min_improvement: float = 1e-3,
    progress: bool = False,
    on_epoch: Callable[[Phase, int, float], None] | None = None,
    metrics: MetricsFile | None = None,
) -> FitResult:
    """Train every phase of ``model`` on ``data``; ``epochs`` overrides fine-tuning's passes.

    ``data``: an ArrayDataset, or features (a numpy array, a tensor, nested lists) with their
    labels ``y`` (none for an unsupervised model), as ``fit(model, x, y)``. ``validation_data``:
    ``(x_val, y_val)`` or an ArrayDataset, checked after every epoch (its loss in the history, and
    early stopping with ``patience``); ``validation`` is its older name. ``metrics``: a line per job
    (what one worker trains in a distributed round) and per validation goes there.

    The history (a dict per epoch: phase, epoch, loss, validation_loss) is also kept on the model as
    ``model.history_``, as Keras and scikit-learn keep theirs; each call starts a new one.
    """
    if not isinstance(data, ArrayDataset):
        data = ArrayDataset.from_any(data, y, n_in=model.conf.n_in)
    elif y is not None:
        raise DataError("fit(model, data, y): an ArrayDataset holds its labels already; pass y only with an array of features.")
    if validation_data is not None:
        if validation is not None:
            raise DataError("fit: pass validation_data or validation (its older name), not both.")
        validation = as_validation_data(validation_data, model)
    result = FitResult()
    model.history_ = result.history  # type: ignore[attr-defined]  # the same list: filled as epochs end
    where = RunProgress()  # the rounds (here: jobs) done, and early stopping's best loss
    start = time.perf_counter()

    def train_epoch(phase_index: int, phase: Phase, epoch: int, skip: set[int]) -> float:
        order = data.batch_order(batch_size, phase_seed(model.conf.seed, phase_index), epoch)  # (n_batches, B)
        bar = tqdm(total=len(order), desc=f"{phase.name} epoch {epoch + 1}/{phase.epochs}",
                   unit="batch", disable=not progress, leave=False)
        loss_sum, seen = 0.0, 0
        for job_index, job in enumerate(jobs(order, job_size)):
            seed_job_noise(model.conf.seed, phase.name, epoch, job_index)
            began = time.perf_counter()
            step = model.train_step(phase.name, Batches(data, job))
            where.round += 1
            if metrics is not None:
                metrics.add_round(round=where.round, phase=phase.name, epoch=epoch + 1, loss=step.loss,
                                  samples=step.n_samples, seconds=time.perf_counter() - began, workers=1)
            loss_sum += step.loss * step.n_samples
            seen += step.n_samples
            bar.update(len(job))
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        bar.close()
        result.samples += seen
        return loss_sum / max(seen, 1)

    def epoch_done(phase: Phase, epoch: int, loss: float, val: float | None) -> None:
        entry: dict[str, float | str] = {"phase": phase.name, "epoch": epoch + 1, "loss": loss}
        if val is not None:
            entry["validation_loss"] = val
            if metrics is not None:
                metrics.add_validation(round=where.round, phase=phase.name, epoch=epoch + 1, loss=loss,
                                       validation_loss=val, best_loss=where.best_loss,
                                       accuracy=validation_accuracy(model, validation))
        result.history.append(entry)
        if on_epoch is not None:
            on_epoch(phase, epoch, loss)

    with denormals_flushed():  # as every worker trains (deepgrid.train.denormals)
        result.stopped_early = not run_phases(
            model, epochs, train_epoch, where, patience=patience, min_improvement=min_improvement,
            validate=(lambda: validation_loss(model, validation)) if validation is not None else None,
            on_epoch=epoch_done)
    result.elapsed_s = time.perf_counter() - start
    return result
