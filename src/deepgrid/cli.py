"""The `deepgrid` command: train, evaluate, status.

Every user mistake ends as one line on stderr and exit status 2; the
effective configuration and progress go to stderr, so that with ``--json``
the last line of stdout is one JSON object a script can read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepgrid.errors import DeepgridError

EXIT_USER_ERROR = 2


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepgrid",
        description="Distributed deep-learning training: a master and workers train one network together.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser("train", help="train a model (the embedded default: everything on this machine)",
                           description="Train a model on MNIST or Fashion-MNIST and report its test accuracy.")
    train.add_argument("conf", nargs="?", metavar="CONF", help="a YAML or JSON Conf file (see examples/)")
    train.add_argument("--model", "-a", help="model kind: rbm, dbn, sda, mlp, cnn")
    train.add_argument("--epochs", type=positive_int, help="passes of fine-tuning over the training data")
    train.add_argument("--batch-size", type=positive_int, help="mini-batch size (per worker)")
    train.add_argument("--data-dir", help="directory with the IDX files (else $DEEPGRID_DATA, then Debian's)")
    train.add_argument("--dataset", choices=["fashion-mnist", "mnist"], help="which data set")
    train.add_argument("--train-limit", type=positive_int, help="use only the first N training examples")
    train.add_argument("--test-limit", type=positive_int, help="use only the first N test examples")
    train.add_argument("--threads", type=positive_int, help="torch threads for training (default: all cores)")
    train.add_argument("--output", "-o", help="where to save the trained model (default: runs/<job_name>)")
    train.add_argument("--workers", "-w", type=positive_int, help="local worker actors (default: one per CPU core)")
    train.add_argument("--averaging-frequency", "-k", type=positive_int,
                       help="mini-batches each worker trains between parameter averages")
    train.add_argument("--resume", metavar="DIR", help="continue from the newest checkpoint in DIR")
    train.add_argument("--single-process", action="store_true",
                       help="train in this process with the reference loop (no engine, no workers)")
    train.add_argument("--json", action="store_true", help="end with one JSON line of results on stdout")
    train.set_defaults(func=cmd_train)

    status = sub.add_parser("status", help="show the state of a run (workers, round, phase, loss)",
                            description="Print the state tracker's view of a run while it trains.")
    status.add_argument("--job", default="deepgrid", help="the run's job name (Conf.job_name)")
    status.set_defaults(func=cmd_status)

    evaluate = sub.add_parser("evaluate", help="evaluate a saved model on the test set",
                              description="Load a model saved by `deepgrid train` and report test metrics.")
    evaluate.add_argument("model_dir", metavar="MODEL_DIR")
    evaluate.add_argument("--data-dir", help="directory with the IDX files")
    evaluate.add_argument("--dataset", choices=["fashion-mnist", "mnist"], help="which data set")
    evaluate.add_argument("--test-limit", type=positive_int, help="use only the first N test examples")
    evaluate.add_argument("--json", action="store_true", help="end with one JSON line of results on stdout")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_conf(args: argparse.Namespace) -> Any:
    from deepgrid.config.conf import Conf

    conf = Conf.load(args.conf) if args.conf else Conf()
    conf = conf.replace(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                        data_dir=args.data_dir, dataset=args.dataset, train_limit=args.train_limit,
                        test_limit=args.test_limit, workers=getattr(args, "workers", None),
                        averaging_frequency=getattr(args, "averaging_frequency", None))
    return conf


def class_labels(dataset: str, n_out: int) -> list[str] | None:
    from deepgrid.train.evaluation import DATASET_LABELS

    labels = DATASET_LABELS.get(dataset)
    return list(labels) if labels is not None and len(labels) == n_out else None


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from deepgrid.data.mnist import load_splits

    conf = load_conf(args)
    output = Path(args.output or Path("runs") / conf.job_name)
    if conf.checkpoint_dir is None and not args.single_process:
        conf = conf.replace(checkpoint_dir=str(output / "checkpoints"))
    log("deepgrid: effective configuration\n" + conf.describe())
    if args.threads:
        torch.set_num_threads(args.threads)
    train_data, test_data = load_splits(conf)
    if args.single_process:
        model, result = train_single_process(conf, train_data)
        workers, samples_per_s, elapsed = 1, result.samples_per_s, result.elapsed_s
    else:
        from deepgrid.distributed.runner import ActorNetworkRunner

        with ActorNetworkRunner("master", train_data, progress=log) as runner:
            runner.setup(conf, resume=args.resume)
            log(f"deepgrid: training {conf.model} ({runner.model.n_params:,} parameters) on "
                f"{len(runner.train_data):,} examples with {len(runner.workers)} workers")
            model = runner.train()
            workers, samples_per_s, elapsed = len(runner.workers), runner.samples_per_s, runner.train_seconds
    evaluation = model.evaluate(test_data.x, test_data.y, labels=class_labels(conf.dataset, conf.network.n_out))
    model.save(output, extra={"conf": conf.to_dict(), "test_accuracy": evaluation.accuracy})
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
    }


def train_single_process(conf: Any, train_data: Any) -> tuple[Any, Any]:
    """The reference loop in this process (``--single-process``)."""
    from deepgrid.models.registry import get
    from deepgrid.train.loop import fit

    validation = None
    if conf.validation_fraction > 0:
        train_data, validation = train_data.split(conf.validation_fraction, seed=conf.network.seed)
    if train_data.n_in != conf.network.n_in:
        from deepgrid.errors import DataError

        raise DataError(f"The data have {train_data.n_in} features per example but network.n_in is "
                        f"{conf.network.n_in}; set network.n_in to {train_data.n_in}.")
    model = get(conf.model)(conf.network)
    log(f"deepgrid: training {conf.model} ({model.n_params:,} parameters) on {len(train_data):,} examples, one process")
    result = fit(model, train_data, epochs=conf.epochs, batch_size=conf.batch_size,
                 job_size=conf.averaging_frequency, validation=validation, patience=conf.patience,
                 min_improvement=conf.min_improvement, progress=sys.stderr.isatty(),
                 on_epoch=lambda phase, epoch, loss: log(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: loss {loss:.4f}"))
    return model, result


def cmd_status(args: argparse.Namespace) -> None:
    from deepgrid.state.status import format_status, read_status, status_path

    snapshot = read_status(status_path(args.job))
    print(format_status(snapshot))


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.data.mnist import load_mnist
    from deepgrid.models.base import Model

    start = time.perf_counter()
    model = Model.load(args.model_dir)
    meta_conf = json.loads((Path(args.model_dir) / "model.json").read_text()).get("conf", {})
    dataset = args.dataset or meta_conf.get("dataset", "fashion-mnist")
    test = load_mnist(dataset, "test", args.data_dir or meta_conf.get("data_dir"),
                      binarize=bool(meta_conf.get("binarize", False)), limit=args.test_limit)
    evaluation = model.evaluate(test.x, test.y, labels=class_labels(dataset, model.conf.n_out))
    print(evaluation.stats())
    return {"model": model.name, "test_accuracy": round(evaluation.accuracy, 4),
            "examples": len(test), "elapsed_s": round(time.perf_counter() - start, 2)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        summary = args.func(args)
    except DeepgridError as e:
        print(f"deepgrid: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("deepgrid: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False) and summary is not None:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
