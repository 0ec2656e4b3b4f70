"""Test-set results: what ``deepgrid train``, ``master`` and ``evaluate`` print and return, and
``deepgrid report RUN_DIR``, which draws a run's metrics files.

The metrics table and the one-line summary go to stdout (not with ``-q``); the returned dict is
the ``--json`` result, so its keys are part of the command line's interface. A run's directory
gets ``evaluation.json`` beside the model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from deepgrid.train.logs import shows_progress


def class_labels(dataset: str, n_out: int) -> list[str] | None:
    """The data set's class names, when the network has one output per class."""
    from deepgrid.train.evaluation import DATASET_LABELS

    labels = DATASET_LABELS.get(dataset)
    return list(labels) if labels is not None and len(labels) == n_out else None


def report(model: Any, conf: Any, test_data: Any, output: Path, workers: int, samples_per_s: float,
           elapsed: float, runner: Any = None) -> dict[str, Any]:
    """After training: evaluate on the held-out test set, save the model, print and return the results."""
    evaluation = model.evaluate(test_data.x, test_data.y, labels=class_labels(conf.dataset, conf.network.n_out))
    from deepgrid.train.metrics_file import write_evaluation

    model.save(output, extra={"conf": conf.public_dict(), "test_accuracy": evaluation.accuracy})
    write_evaluation(output, evaluation)
    if shows_progress():  # -q: only the --json line, if asked for
        print(evaluation.stats())
        print(f"test accuracy: {evaluation.accuracy:.4f}   ({samples_per_s:,.0f} samples/s with {workers} worker(s), "
              f"{elapsed:.1f} s training)   model saved to {output}")
    return {
        "model": conf.model,
        "workers": workers,
        "test_accuracy": round(evaluation.accuracy, 4),
        "samples_per_s": round(samples_per_s, 1),
        "elapsed_s": round(elapsed, 2),
        "output": str(output),
        # Distributed runs: jobs per machine, and per phase and epoch the mini-batches never
        # trained or trained twice (the ledger).
        **({"rounds": runner.round, "jobs_by_host": runner.jobs_by_host(), "ledger": runner.ledger_summary()}
           if runner else {}),
        # Per-class precision/recall/F1 and the confusion matrix, as in evaluation.json.
        "evaluation": evaluation.to_dict(),
    }


def evaluate_saved(model_dir: str, dataset: str | None = None, data_dir: str | None = None,
                   test_limit: int | None = None) -> dict[str, Any]:
    """A model saved by ``deepgrid train`` on the test set of the data it was trained on (by
    default): print its metrics and return the results."""
    from deepgrid.config.conf import MNIST_DATASETS
    from deepgrid.data.mnist import load_mnist
    from deepgrid.models.base import Model

    start = time.perf_counter()
    model = Model.load(model_dir)
    meta_conf = json.loads((Path(model_dir) / "model.json").read_text()).get("conf", {})
    dataset = dataset or meta_conf.get("dataset", "fashion-mnist")
    if dataset in MNIST_DATASETS:
        test = load_mnist(dataset, "test", data_dir or meta_conf.get("data_dir"),
                          binarize=bool(meta_conf.get("binarize", False)), limit=test_limit)
    else:  # a user's own data set kind, read with the Conf it was trained with
        from deepgrid.config.conf import Conf
        from deepgrid.data.sources import load_source

        conf = Conf.from_dict({**meta_conf, "dataset": dataset, "data_dir": data_dir or meta_conf.get("data_dir"),
                               "network": model.conf.to_dict()})
        test = load_source(conf, "test", test_limit)
    evaluation = model.evaluate(test.x, test.y, labels=class_labels(dataset, model.conf.n_out))
    print(evaluation.stats())
    return {"model": model.name, "test_accuracy": round(evaluation.accuracy, 4),
            "examples": len(test), "elapsed_s": round(time.perf_counter() - start, 2)}


def add_report_command(sub: Any) -> None:
    """``deepgrid report RUN_DIR``: the run's metrics drawn as PNG files (matplotlib, the plots extra)."""
    command = sub.add_parser("report", help="draw a run's metrics as PNG files (loss, accuracy, confusion matrix)",
                             description="Read RUN_DIR/metrics.jsonl and evaluation.json and write PNG plots "
                                         "into RUN_DIR. Needs matplotlib: install deepgrid[plots].")
    command.add_argument("run_dir", metavar="RUN_DIR", help="a run's output directory (runs/<job_name> by default)")
    command.add_argument("--json", action="store_true", help="end with one JSON line of results on stdout")
    command.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.train.plots import write_plots

    paths = write_plots(args.run_dir)
    if shows_progress():
        for path in paths:
            print(path)
    return {"plots": [str(path) for path in paths]}
