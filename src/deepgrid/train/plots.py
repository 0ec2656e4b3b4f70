"""``deepgrid report RUN_DIR``: a finished (or running) run's metrics drawn as PNG files.

Reads ``metrics.jsonl`` and, when there, ``evaluation.json`` (see ``deepgrid.train.metrics_file``)
and writes into the same directory:

- ``loss_by_round.png``: training loss per round (one line per phase: a DBN's pretraining losses
  are reconstruction errors, on their own scale), validation loss, and below it the validation
  accuracy per epoch with the final test accuracy as a dashed line;
- ``loss_by_time.png``: the same against wall time since the run started;
- ``confusion_matrix.png``: the test set's confusion matrix as a heatmap (rows: true class).

matplotlib is an optional extra (``pip install deepgrid[plots]``); the figures are drawn without
pyplot (no display, no global state).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deepgrid.errors import DataError, DeepgridError
from deepgrid.train.metrics_file import EVALUATION_FILE, read_metrics

PLOTS = ("loss_by_round.png", "loss_by_time.png", "confusion_matrix.png")


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DeepgridError("deepgrid report draws with matplotlib, which is not installed: "
                            "install deepgrid[plots] (pip install 'deepgrid[plots]').") from None
    return Figure


def write_plots(run_dir: str | Path) -> list[Path]:
    """Draw the run in ``run_dir``; return the PNG files written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir} is not a directory; give the output directory of a run (runs/<job_name>).")
    Figure = _figure_class()
    lines = read_metrics(run_dir)
    evaluation = _read_evaluation(run_dir / EVALUATION_FILE)
    rounds = [line for line in lines if line.get("kind") == "round"]
    validations = [line for line in lines if line.get("kind") == "validation"]
    if not rounds and evaluation is None:
        raise DataError(f"{run_dir / 'metrics.jsonl'} holds no rounds yet and there is no {EVALUATION_FILE}: "
                        "nothing to draw.")
    written: list[Path] = []
    if rounds:
        test_accuracy = evaluation.get("accuracy") if evaluation else None
        for x_key, x_label, name in (("round", "round", PLOTS[0]), ("elapsed_s", "wall time (s)", PLOTS[1])):
            figure = Figure(figsize=(8, 6.5), layout="constrained")
            _draw_curves(figure, rounds, validations, x_key, x_label, test_accuracy)
            written.append(_save(figure, run_dir / name))
    if evaluation is not None:
        figure = Figure(figsize=(7.5, 6.5), layout="constrained")
        _draw_confusion(figure, evaluation)
        written.append(_save(figure, run_dir / PLOTS[2]))
    return written


def _read_evaluation(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e}); a finished run writes it whole.") from None
    if not isinstance(data, dict) or "confusion_matrix" not in data:
        raise DataError(f"{path} holds no confusion_matrix; is it a deepgrid {EVALUATION_FILE}?")
    return data


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=100)
    return path


def _by_phase(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    phases: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        phases.setdefault(str(line.get("phase", "")), []).append(line)
    return phases


def _points(lines: list[dict[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    pairs = [(line[x_key], line[y_key]) for line in lines
             if isinstance(line.get(x_key), (int, float)) and isinstance(line.get(y_key), (int, float))]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _draw_curves(figure: Any, rounds: list[dict[str, Any]], validations: list[dict[str, Any]], x_key: str,
                 x_label: str, test_accuracy: float | None) -> None:
    loss_axes, accuracy_axes = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    for phase, lines in _by_phase(rounds).items():
        loss_axes.plot(*_points(lines, x_key, "loss"), linewidth=1, label=f"{phase} training loss")
    for phase, lines in _by_phase(validations).items():
        loss_axes.plot(*_points(lines, x_key, "validation_loss"), marker="o", linestyle="--",
                       label=f"{phase} validation loss")
    loss_axes.set_ylabel("loss")
    loss_axes.set_title("loss per round" if x_key == "round" else "loss against wall time")
    loss_axes.grid(alpha=0.3)
    loss_axes.legend(fontsize="small")
    xs, accuracy = _points(validations, x_key, "accuracy")
    if xs:
        accuracy_axes.plot(xs, accuracy, marker="o", label="validation accuracy")
    if test_accuracy is not None:
        accuracy_axes.axhline(test_accuracy, color="grey", linestyle="--", label=f"test accuracy {test_accuracy:.4f}")
    if xs or test_accuracy is not None:
        accuracy_axes.legend(fontsize="small")
    else:
        accuracy_axes.text(0.5, 0.5, "no accuracy: set validation_fraction for a validation split",
                           ha="center", va="center", transform=accuracy_axes.transAxes)
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.set_xlabel(x_label)
    accuracy_axes.grid(alpha=0.3)


def _draw_confusion(figure: Any, evaluation: dict[str, Any]) -> None:
    matrix = evaluation["confusion_matrix"]
    n = len(matrix)
    labels = evaluation.get("labels") or [str(i) for i in range(n)]
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8, label="examples")
    top = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if count:
                axes.text(j, i, str(count), ha="center", va="center", fontsize="x-small",
                          color="white" if count > top / 2 else "black")
    axes.set_xticks(range(n), labels, rotation=45, ha="right", fontsize="small")
    axes.set_yticks(range(n), labels, fontsize="small")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    accuracy = evaluation.get("accuracy")
    axes.set_title("confusion matrix (test set)" + (f", accuracy {accuracy:.4f}" if accuracy is not None else ""))
