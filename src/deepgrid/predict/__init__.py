"""``deepgrid predict MODEL_DIR INPUT``: a saved model's classes and probabilities for new examples;
and the command line's ``predict`` and ``export`` (:mod:`deepgrid.export`).

INPUT is a .npz, .npy, .csv or .parquet file, an image or a folder of images, or an IDX file
(:mod:`deepgrid.predict.inputs` reads them, a chunk at a time, as the model's training data were
read). Out, per example in input order: ``prediction`` (the class index) and ``p0`` ..
``p{n_out-1}`` (the softmax of the logits), CSV or JSON lines, on stdout or in ``--output FILE``
(written whole or not at all); image inputs get a first column more, ``file``, the image each
row is of. Labels are never needed; where the input has them, the closing
line on stderr gives the accuracy, which is ``deepgrid evaluate``'s on the same examples.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from deepgrid.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from deepgrid.models.base import Model
    from deepgrid.predict.inputs import Chunk, Settings

INPUT_KINDS = ("npz", "npy", "csv", "parquet", "images", "idx")
KIND_ALIASES = {"mnist": "idx", "fashion-mnist": "idx"}  # `deepgrid train --dataset` names for IDX files
OUTPUT_FORMATS = ("csv", "jsonl")
EXPORT_FORMATS = ("onnx", "torchscript")  # deepgrid.export.FORMATS; not imported here: it imports torch
PROGRESS_EVERY_S = 2.0


def add_model_commands(sub: Any) -> None:
    """``deepgrid predict`` and ``deepgrid export``, on a model ``deepgrid train`` saved."""
    kinds = (*INPUT_KINDS, *KIND_ALIASES)
    predict = sub.add_parser("predict", help="predict classes of new examples with a saved model",
                             description="Write a saved model's predicted class and class probabilities for "
                                         "every example in INPUT (CSV or JSON lines; stdout by default).")
    predict.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by `deepgrid train`")
    predict.add_argument("input", metavar="INPUT", help="a .npz, .npy, .csv or .parquet file, an image or a folder "
                                                        "of images, or an IDX file")
    predict.add_argument("--output", "-o", metavar="FILE", help="write the predictions there (default: stdout)")
    predict.add_argument("--format", choices=OUTPUT_FORMATS,
                         help="csv (header prediction,p0..) or jsonl; default csv, jsonl for an --output *.jsonl")
    predict.add_argument("--dataset", choices=kinds, metavar="KIND",
                         help=f"INPUT's kind when its name does not say: {', '.join(INPUT_KINDS)}")
    predict.add_argument("--label-column", metavar="NAME",
                         help="CSV/Parquet column of labels, left out of the features (default: the model's)")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="write a saved model as ONNX or TorchScript",
                            description="Write a saved model's forward pass (features in, class probabilities "
                                        "out, any batch size) as model.onnx or model.pt, run it once to check it.")
    export.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by `deepgrid train`")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="onnx (needs deepgrid[export]) "
                                                                                "or torchscript")
    export.add_argument("--output", "-o", metavar="FILE", help="default: MODEL_DIR/model.onnx or model.pt")
    export.add_argument("--json", action="store_true", help="end with one JSON line of results on stdout")
    export.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.export import export_saved

    result = export_saved(args.model_dir, args.format, args.output)
    _log(f"deepgrid: exported {result['model']} ({result['n_in']} features -> {result['n_out']} class "
         f"probabilities) to {result['output']}" + ("" if result["checked"] else " (not run: no onnxruntime)"))
    return result


def cmd_predict(args: argparse.Namespace) -> None:
    from deepgrid.atomic_files import atomic_write
    from deepgrid.predict.inputs import input_kind

    model, settings = load_for_prediction(args.model_dir, args.label_column)
    path = Path(args.input)
    kind = input_kind(path, args.dataset)
    fmt = args.format or ("jsonl" if args.output and Path(args.output).suffix in (".jsonl", ".json", ".ndjson")
                          else "csv")
    if args.output is None:
        try:
            summary = predict_input(model, settings, path, kind, sys.stdout, fmt)
        except BrokenPipeError:  # `deepgrid predict ... | head`: the reader has all it wants
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
    else:
        output = Path(args.output)
        if output.is_dir():
            raise DataError(f"--output {output} is a directory; give the file to write, e.g. {output / 'predictions.csv'}.")
        found: list[dict[str, Any]] = []

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as stream:
                found.append(predict_input(model, settings, path, kind, stream, fmt))

        try:
            atomic_write(output, write)
        except OSError as e:
            raise DataError(f"Cannot write {output}: {e.strerror or e}.") from None
        summary = found[0]
    accuracy = f"; accuracy on INPUT's labels: {summary['accuracy']:.4f}" if "accuracy" in summary else ""
    _log(f"deepgrid: {summary['rows']:,} predictions written to {args.output or 'stdout'} in "
         f"{summary['elapsed_s']:.1f} s{accuracy}")


def load_for_prediction(model_dir: str, label_column: str | None = None) -> tuple[Model, Settings]:
    """The saved model, on the CPU, and how its training data were prepared (model.json's conf)."""
    from deepgrid.config.conf import MNIST_DATASETS, Conf
    from deepgrid.models.base import Model
    from deepgrid.models.files import read_model_meta
    from deepgrid.predict.inputs import Settings

    model = Model.load(model_dir)
    conf = read_model_meta(Path(model_dir)).get("conf")
    conf = conf if isinstance(conf, dict) else {}  # model.save() from Python: no conf, the defaults

    def field(name: str) -> Any:
        return conf.get(name, getattr(Conf, name))

    settings = Settings(model.conf.n_in, model.conf.n_out, label_column or field("label_column"), field("x_key"),
                        field("y_key"), field("image_mode"), bool(field("binarize")),
                        divide=field("dataset") in MNIST_DATASETS)
    return model.to("cpu"), settings


def predict_input(model: Model, settings: Settings, path: Path, kind: str, stream: IO[str],
                  fmt: str) -> dict[str, Any]:
    """Predict every example of INPUT, a chunk at a time, writing each chunk's lines to ``stream``."""
    from deepgrid.data.sources import check_labels
    from deepgrid.predict.inputs import open_input, prepare

    rows, chunks = open_input(path, kind, settings)
    log = logging.getLogger("deepgrid")
    start = last = time.perf_counter()
    done, correct, labelled = 0, 0, 0
    write: Callable[[Chunk, np.ndarray], None] | None = None
    for chunk in chunks:
        features = prepare(chunk.x, settings, where=str(path), first=done)
        probabilities = model.predict_proba(features)  # (rows, n_out)
        if write is None:
            write = output_writer(stream, fmt, settings.n_out, with_files=chunk.files is not None)
        write(chunk, probabilities)
        if chunk.y is not None:
            labels = check_labels(chunk.y, settings.n_out, str(path)).numpy()
            correct += int((probabilities.argmax(axis=1) == labels).sum())
            labelled += len(labels)
        done += len(probabilities)
        if time.perf_counter() - last > PROGRESS_EVERY_S:  # only inputs that take a while say so
            last = time.perf_counter()
            log.info(f"deepgrid: predicted {done:,}" + (f" of {rows:,} ({done / rows:.0%})" if rows else "")
                     + f" examples of {path}")
    if done == 0:
        raise DataError(f"{path}: no examples in it; nothing to predict.")
    stream.flush()
    summary: dict[str, Any] = {"rows": done, "elapsed_s": time.perf_counter() - start}
    if labelled == done:
        summary["accuracy"] = correct / done
    return summary


def output_writer(stream: IO[str], fmt: str, n_out: int, *, with_files: bool) -> Callable[[Chunk, Any], None]:
    """A function writing one chunk's predictions to ``stream``; CSV's header is written now."""
    # 9 significant digits: a float32 probability read back is the same float32.
    if fmt == "jsonl":
        def write_jsonl(chunk: Chunk, probabilities: Any) -> None:
            for i, row in enumerate(probabilities):
                line = {"file": chunk.files[i]} if chunk.files is not None else {}
                line |= {"prediction": int(row.argmax()), "probabilities": [float(f"{p:.9g}") for p in row]}
                stream.write(json.dumps(line) + "\n")

        return write_jsonl
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow((["file"] if with_files else []) + ["prediction"] + [f"p{k}" for k in range(n_out)])

    def write_csv(chunk: Chunk, probabilities: Any) -> None:
        predictions = probabilities.argmax(axis=1)
        writer.writerows(([chunk.files[i]] if chunk.files is not None else [])
                         + [str(int(predictions[i]))] + [f"{p:.9g}" for p in row]
                         for i, row in enumerate(probabilities))

    return write_csv


def _log(message: str) -> None:
    logging.getLogger("deepgrid").info(message)  # stderr; -q hides it
