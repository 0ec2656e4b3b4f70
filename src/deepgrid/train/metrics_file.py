"""A run's metrics on disk: ``metrics.jsonl``, ``evaluation.json`` and TensorBoard event files.

``metrics.jsonl`` holds one JSON object a line, written (and flushed) as the run goes, so that a
run killed mid-way leaves every line it finished:

- ``{"kind": "round", ...}`` after each round (a single-process run: after each job, the work of
  one worker's round): ``round``, ``phase``, ``epoch`` (from 1), ``loss`` (the round's mean
  training loss), ``samples``, ``seconds`` (the round's), ``samples_per_s``, ``workers``,
  ``time`` (seconds since the Unix epoch) and ``elapsed_s`` (wall time since the run started,
  carried on across ``--resume``);
- ``{"kind": "validation", ...}`` after each validation: ``round``, ``phase``, ``epoch``,
  ``loss`` (the epoch's training loss), ``validation_loss``, ``best_loss``, ``accuracy`` (on the
  validation split, for classifiers), ``time``, ``elapsed_s``.

``evaluation.json`` is the final test-set evaluation (``Evaluation.to_dict``: accuracy, per-class
precision/recall/F1, the confusion matrix). With the ``tensorboard`` extra installed, the same
scalars go to TensorBoard event files under ``tensorboard/`` (``tensorboard --logdir RUN_DIR``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from deepgrid.atomic_files import atomic_write
from deepgrid.data.dataset import ArrayDataset
from deepgrid.errors import DataError
from deepgrid.models.base import Model

METRICS_FILE = "metrics.jsonl"
EVALUATION_FILE = "evaluation.json"
TENSORBOARD_DIR = "tensorboard"


def tensorboard_available() -> bool:
    """Both halves of TensorBoard logging: torch's writer and the ``tensorboard`` package it needs."""
    return importlib.util.find_spec("tensorboard") is not None


def _number(value: float | None, digits: int = 6) -> float | None:
    """JSON has no NaN or infinity: such a value is written as null."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


class MetricsFile:
    """Appends a run's metric lines to ``run_dir/metrics.jsonl`` (and TensorBoard, if installed).

    ``fresh`` starts the file anew; otherwise (a resumed run) lines are appended and the wall
    clock goes on from the last line's ``elapsed_s``. Use as a context manager, or ``close()``.
    """

    def __init__(self, run_dir: str | Path, *, fresh: bool = True, tensorboard: bool | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        offset = 0.0 if fresh else _last_elapsed(self.path)
        self._start = time.monotonic() - offset
        self._file = self.path.open("w" if fresh else "a", encoding="utf-8")
        if not fresh and self._file.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # a line cut short by a kill stays a line of its own (skipped when read)
        self._writer: Any = None
        if tensorboard is None:
            tensorboard = tensorboard_available()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))

    def __enter__(self) -> MetricsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._start

    def _write(self, line: dict[str, Any]) -> None:
        now = time.time()
        line.update(time=round(now, 3), elapsed_s=round(self.elapsed_s, 3))
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()  # a run killed mid-way keeps every whole line

    def _scalar(self, tag: str, value: float | None, step: int) -> None:
        if self._writer is not None and value is not None:
            self._writer.add_scalar(tag, value, step)

    def add_round(self, *, round: int, phase: str, epoch: int, loss: float | None, samples: int, seconds: float,
              workers: int, **extra: Any) -> None:
        """One round (``epoch`` counts from 1); ``extra``: more figures of the round (JSON values)."""
        rate = samples / seconds if seconds > 0 else None
        self._write({"kind": "round", "round": round, "phase": phase, "epoch": epoch, "loss": _number(loss),
                     "samples": samples, "seconds": round_s(seconds), "samples_per_s": _number(rate, 1),
                     "workers": workers, **extra})
        self._scalar(f"loss/{phase}", _number(loss), round)
        self._scalar("samples_per_s", _number(rate, 1), round)
        self._scalar("workers", workers, round)

    def add_validation(self, *, round: int, phase: str, epoch: int, loss: float | None, validation_loss: float,
                   best_loss: float | None = None, accuracy: float | None = None) -> None:
        """One validation, after epoch ``epoch`` (from 1) of ``phase``, at round ``round``."""
        line: dict[str, Any] = {"kind": "validation", "round": round, "phase": phase, "epoch": epoch,
                                "loss": _number(loss), "validation_loss": _number(validation_loss),
                                "best_loss": _number(best_loss)}
        if accuracy is not None:
            line["accuracy"] = _number(accuracy)
        self._write(line)
        self._scalar(f"validation/loss/{phase}", _number(validation_loss), round)
        self._scalar(f"validation/accuracy/{phase}", _number(accuracy), round)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def round_s(seconds: float) -> float:
    return round(float(seconds), 4)


def _last_elapsed(path: Path) -> float:
    """The last whole line's ``elapsed_s`` (0 without one): a resumed run's clock goes on from there."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0.0
    for text in reversed(lines):
        try:
            return float(json.loads(text).get("elapsed_s", 0.0))
        except (ValueError, AttributeError):
            continue  # a line cut short by a kill
    return 0.0


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` (a file, or the run directory holding one); a last line cut
    short by a kill is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise DataError(f"No metrics file at {path}; a run of `deepgrid train` or `deepgrid master` writes "
                        f"{METRICS_FILE} into its output directory (runs/<job_name> by default).")
    lines: list[dict[str, Any]] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            continue  # an unfinished last line
        if not isinstance(line, dict):
            raise DataError(f"{path}:{number} is not a JSON object; is this a deepgrid {METRICS_FILE}?")
        lines.append(line)
    return lines


def write_evaluation(run_dir: str | Path, evaluation: Any) -> Path:
    """``evaluation.json``: the final test-set evaluation (an ``Evaluation``), written atomically."""
    path = Path(run_dir) / EVALUATION_FILE
    text = json.dumps(evaluation.to_dict(), indent=1) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def validation_accuracy(model: Model, data: ArrayDataset | None) -> float | None:
    """The share of ``data`` a classifier labels right, with the model's parameters as they are
    now; None without data, or for a model whose output is not one score per class."""
    if data is None or len(data) == 0:
        return None
    model.module.eval()
    right = 0
    with torch.no_grad():
        for x, y in zip(data.x.split(4096), data.y.split(4096), strict=True):
            scores = model.forward(x.to(model.device))
            if scores.ndim != 2 or scores.shape[1] < 2:
                return None
            right += int((scores.argmax(dim=1).cpu() == y).sum())
    return right / len(data)
