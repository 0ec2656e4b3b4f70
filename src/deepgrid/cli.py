"""The `deepgrid` command: train, master, worker, conf, status, evaluate.

This module parses arguments and calls one library function per command: the engine head's
life cycle is in ``deepgrid.distributed.head``, the test-set results in ``deepgrid.report``.

Every user mistake ends as one line on stderr and exit status 2; the
effective configuration and progress go to stderr, so that with ``--json``
the last line of stdout is one JSON object a script can read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepgrid import __version__
from deepgrid.cloud.commands import add_cluster_commands
from deepgrid.config.arg_types import positive_int
from deepgrid.config.conf import DATASETS, STRATEGIES
from deepgrid.config.dashboard_address import add_dashboard_flags, dashboard_flag
from deepgrid.errors import ConfigError, DeepgridError, invalid
from deepgrid.predict import add_model_commands
from deepgrid.registry.commands import add_conf_commands
from deepgrid.report import add_report_command, evaluate_saved, report
from deepgrid.train.logs import add_verbosity_flags, configure_cli_logging, level_of, show_configuration

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepgrid",
        description="Distributed deep-learning training: a master and workers train one network together.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser("train", help="train a model (the embedded default: everything on this machine)",
                           description="Train a model on MNIST or Fashion-MNIST and report its test accuracy.")
    train.add_argument("conf", nargs="?", metavar="CONF", help="a YAML or JSON Conf file (see examples/)")
    train.add_argument("--model", "-a", help="model kind: rbm, dbn, sda, mlp, cnn, a name an installed package "
                       "registers (deepgrid.models), or pkg.module:ClassOrFactory for your own torch.nn.Module")
    train.add_argument("--epochs", type=positive_int, help="passes of fine-tuning over the training data")
    train.add_argument("--batch-size", type=positive_int, help="mini-batch size (per worker)")
    train.add_argument("--data-dir", help="directory with the IDX files (else $DEEPGRID_DATA, then Debian's)")
    train.add_argument("--dataset", choices=DATASETS, help="which data set (see README: Your own data)")
    train.add_argument("--train-limit", type=positive_int, help="use only the first N training examples")
    train.add_argument("--test-limit", type=positive_int, help="use only the first N test examples")
    train.add_argument("--threads", type=positive_int, help="torch threads for training (default: all cores)")
    train.add_argument("--output", "-o", help="where to save the trained model (default: runs/<job_name>)")
    train.add_argument("--workers", "-w", type=positive_int, help="local worker actors (default: one per CPU core)")
    train.add_argument("--averaging-frequency", "-k", type=positive_int,
                       help="mini-batches each worker trains between parameter averages")
    train.add_argument("--strategy", choices=STRATEGIES,
                       help="how workers' training is combined (default average; see README)")
    train.add_argument("--resume", metavar="DIR", help="continue from the newest checkpoint in DIR (a checkpoint_dir: a path or s3://BUCKET/PREFIX), or from one checkpoint's folder")
    train.add_argument("--state", metavar="URL",
                       help="Conf.state_url: memory:// (default) or redis://[:PASSWORD@]HOST:PORT/DB")
    train.add_argument("--single-process", action="store_true",
                       help="train in this process with the reference loop (no engine, no workers)")
    train.add_argument("--json", action="store_true", help="end with one JSON line of results on stdout")
    add_dashboard_flags(train)
    train.set_defaults(func=cmd_train)

    master = sub.add_parser("master", help="start the Ray head and the master; workers join it",
                            description="Start the engine's head and the master, wait for workers "
                                        "(`deepgrid worker -ad HOST`), then train.")
    master.add_argument("conf", metavar="CONF", help="a YAML or JSON Conf file")
    master.add_argument("--bind", "--interface", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    master.add_argument("--port", type=positive_int, default=None, help="engine port (default 6380)")
    master.add_argument("--min-workers", type=positive_int, default=1, help="train once this many workers are present")
    master.add_argument("--workers", "-w", type=int, default=0,
                        help="worker actors to start on the master's own machine too (default 0)")
    master.add_argument("--strategy", choices=STRATEGIES,
                        help="how workers' training is combined (default average; see README)")
    master.add_argument("--resume", metavar="DIR", help="continue from the newest checkpoint in DIR (a checkpoint_dir: a path or s3://BUCKET/PREFIX), or from one checkpoint's folder")
    master.add_argument("--state", metavar="URL",
                        help="Conf.state_url: memory:// (default) or redis://[:PASSWORD@]HOST:PORT/DB")
    master.add_argument("--output", "-o", help="where to save the trained model (default: runs/<job_name>)")
    master.add_argument("--json", action="store_true", help="end with one JSON line of results on stdout")
    master.add_argument("--registry", metavar="URL",
                        help="registry to publish this job's address in (zk://host:2181/deepgrid or a directory; "
                             "default: the Conf's registry_url, $DEEPGRID_REGISTRY, then $DEEPGRID_HOME/registry)")
    add_dashboard_flags(master)
    master.set_defaults(func=cmd_master)

    worker = sub.add_parser("worker", help="join a master's cluster and train the jobs it hands out",
                            description="Join the master at HOST[:PORT] (the seed's ActorNetworkRunnerApp "
                                        "-ad HOST -t worker -a dbn).")
    worker.add_argument("-ad", "--address", help="the master's HOST[:PORT] (or find it with --job)")
    worker.add_argument("--job", help="find the master of job NAME in the registry instead of giving -ad")
    worker.add_argument("--registry", metavar="URL",
                        help="registry to look --job up in (zk://host:2181/deepgrid or a directory; "
                             "default: $DEEPGRID_REGISTRY, then $DEEPGRID_HOME/registry)")
    worker.add_argument("-t", "--type", default="worker", help="only 'worker' (the master has its own command)")
    worker.add_argument("-a", "--algorithm", help="model kind this worker expects (refused if the master's differs)")
    worker.add_argument("--workers", "-w", type=positive_int,
                        help="worker actors to run on this machine (default: one per CPU core)")
    worker.add_argument("--bind", "--interface", metavar="ADDR",
                        help="this machine's address the master reaches it at (default: the one that routes to the master)")
    worker.add_argument("--token-file", metavar="FILE",
                        help="the master's Ray token (its ~/.ray/auth_token); default: $RAY_AUTH_TOKEN, "
                             "$RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token")
    worker.set_defaults(func=cmd_worker)

    add_conf_commands(sub)

    status = sub.add_parser("status", help="show the state of a run (workers, round, phase, loss)",
                            description="Print the state tracker's view of a run while it trains.")
    status.add_argument("--job", default="deepgrid", help="the run's job name (Conf.job_name)")
    status.add_argument("--state", metavar="URL",
                        help="read the run from this redis:// state tracker, not its status file")
    status.add_argument("--json", action="store_true", help="print the snapshot as one JSON object")
    status.add_argument("--watch", action="store_true", help="show it again every second until the run ends (Ctrl-C to leave)")
    status.set_defaults(func=cmd_status)

    evaluate = sub.add_parser("evaluate", help="evaluate a saved model on the test set",
                              description="Load a model saved by `deepgrid train` and report test metrics.")
    evaluate.add_argument("model_dir", metavar="MODEL_DIR")
    evaluate.add_argument("--data-dir", help="directory with the IDX files")
    evaluate.add_argument("--dataset", choices=DATASETS, help="which data set (see README: Your own data)")
    evaluate.add_argument("--test-limit", type=positive_int, help="use only the first N test examples")
    evaluate.add_argument("--json", action="store_true", help="end with one JSON line of results on stdout")
    evaluate.set_defaults(func=cmd_evaluate)
    add_report_command(sub)
    add_model_commands(sub)
    add_cluster_commands(sub)
    add_verbosity_flags(parser, sub.choices.values())
    return parser


def log(message: str) -> None:
    logging.getLogger("deepgrid").info(message)  # stderr, timestamped; -q hides it (train/logs.py)


def output_dir(args: argparse.Namespace, conf: Any) -> Path:
    """Where the trained model goes; checked before training, so a bad path costs no training time."""
    output = Path(args.output or Path("runs") / conf.job_name)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; expected a directory (new or existing). "
                          "Pass another path with -o DIR.")
    return output


def load_conf(args: argparse.Namespace) -> Any:
    from deepgrid.config.conf import Conf

    conf = Conf.load(args.conf) if args.conf else Conf()
    conf = conf.replace(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                        data_dir=args.data_dir, dataset=args.dataset, train_limit=args.train_limit,
                        test_limit=args.test_limit, workers=getattr(args, "workers", None),
                        averaging_frequency=getattr(args, "averaging_frequency", None), strategy=args.strategy)
    return conf


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from deepgrid.data.mnist import load_splits

    conf = load_conf(args).replace(state_url=args.state, dashboard=dashboard_flag(args))
    output = output_dir(args, conf)
    if conf.checkpoint_dir is None and not args.single_process:
        conf = conf.replace(checkpoint_dir=str(output / "checkpoints"))
    show_configuration(conf.describe(), checked=False)  # -v only: else once setup checked it all
    if args.threads:
        torch.set_num_threads(args.threads)
    train_data, test_data = load_splits(conf)
    if args.single_process:
        from deepgrid.train.single import train_single_process

        model, result = train_single_process(conf, train_data, log, output)
        workers, samples_per_s, elapsed, runner = 1, result.samples_per_s, result.elapsed_s, None
    else:
        from deepgrid.distributed.metrics_file import begin_outputs
        from deepgrid.distributed.runner import ActorNetworkRunner

        with ActorNetworkRunner("master", master_data(conf, train_data), progress=log) as runner:
            runner.setup(conf, resume=args.resume)
            begin_outputs(runner, output, resumed=args.resume is not None)
            log(f"deepgrid: training {conf.model} ({runner.model.n_params:,} parameters) on "
                f"{len(runner.train_data):,} examples with {len(runner.workers)} workers")
            model = runner.train()
            workers, samples_per_s, elapsed = len(runner.workers), runner.samples_per_s, runner.train_seconds
    return report(model, conf, test_data, output, workers, samples_per_s, elapsed, runner)


def master_data(conf: Any, train_data: Any) -> Any:
    """What the master hands its runner: the loaded data, or None with ``data_feed: files``, where
    the runner and every worker read the Conf's files themselves (and compare checksums)."""
    return None if conf.data_feed == "files" else train_data


def cmd_master(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.config.conf import Conf
    from deepgrid.data.mnist import load_splits
    from deepgrid.distributed.engine import DEFAULT_PORT
    from deepgrid.distributed.head import master_head
    from deepgrid.distributed.metrics_file import begin_outputs
    from deepgrid.distributed.runner import ActorNetworkRunner

    if args.workers < 0:
        raise ConfigError(invalid("--workers", args.workers, "0 or more"))
    port = args.port or DEFAULT_PORT
    conf = Conf.load(args.conf).replace(engine_address=f"{args.bind}:{port}", state_url=args.state,
                                        strategy=args.strategy, dashboard=dashboard_flag(args))
    output = output_dir(args, conf)
    if conf.checkpoint_dir is None:
        conf = conf.replace(checkpoint_dir=str(output / "checkpoints"))
    show_configuration(conf.describe(), checked=False)
    train_data, test_data = load_splits(conf)
    with master_head(args.bind, port, conf.job_name, conf.model, resume=bool(args.resume), say=log) as head:
        publish_master(args, conf, head.address)
        with ActorNetworkRunner("master", master_data(conf, train_data), progress=log) as runner:
            runner.setup(conf, resume=args.resume, local_workers=args.workers, accept_workers=True)
            begin_outputs(runner, output, resumed=args.resume is not None)
            runner.wait_for_workers(args.min_workers, hint=f"Start one with: deepgrid worker -ad {head.address} -a {conf.model}")
            log(f"deepgrid: training {conf.model} ({runner.model.n_params:,} parameters) on "
                f"{len(runner.train_data):,} examples with {len(runner.workers)} workers")
            model = runner.train()
            workers, samples_per_s, elapsed = len(runner.workers), runner.samples_per_s, runner.train_seconds
    return report(model, conf, test_data, output, workers, samples_per_s, elapsed, runner)


def cmd_worker(args: argparse.Namespace) -> dict[str, Any]:
    from deepgrid.distributed.host import join_master
    from deepgrid.distributed.token import use_token_file

    if args.type != "worker":
        raise ConfigError(f"-t/--type {args.type!r} is not a worker type; `deepgrid worker` runs workers "
                          "(-t worker). Start a master with `deepgrid master CONF`.")
    address = args.address
    if address and args.job:
        raise ConfigError("Give either -ad HOST (the master's address) or --job NAME (find it in the registry), "
                          "not both.")
    if not address and not args.job:
        raise ConfigError("Say which master to join: -ad HOST[:PORT], or --job NAME [--registry URL] to find "
                          "it in the configuration registry.")
    if args.registry and not args.job:
        raise ConfigError("--registry says where to look a job up; add --job NAME (and leave out -ad).")
    if args.token_file:
        use_token_file(args.token_file)
    if args.job:
        address = discover_master(args)
    # SIGTERM (a service manager, `kill`) ends the worker as Ctrl-C does: its node leaves the cluster.
    signal.signal(signal.SIGTERM, _interrupt)
    return join_master(address, args.algorithm, args.workers, bind=args.bind, say=log)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def publish_master(args: argparse.Namespace, conf: Any, address: str) -> None:
    """Register the master's Conf, its engine address in it, under the job name; then let go of the
    registry, so that a ZooKeeper going away later cannot touch the training."""
    from deepgrid.registry import registry_from_url, resolve_registry_url

    url = resolve_registry_url(getattr(args, "registry", None), conf)
    try:
        registry = registry_from_url(url)
        try:
            registry.register(conf.job_name, conf.replace(engine_address=address))
        finally:
            registry.close()
    except DeepgridError as e:
        if url:  # a registry the user asked for: workers would look for the job there in vain
            raise
        logging.getLogger("deepgrid").warning(f"deepgrid: warning: job not registered in the default registry ({e}); workers need -ad {address}")
        return
    log(f"deepgrid: job {conf.job_name!r} registered in {registry.url}; workers can join with: "
        f"deepgrid worker --registry {registry.url} --job {conf.job_name}")


def discover_master(args: argparse.Namespace) -> str:
    """``deepgrid worker --job NAME [--registry URL]``: the master's address, from the registry alone."""
    from deepgrid.registry import find_master, resolve_registry_url

    url = resolve_registry_url(args.registry)
    started = time.perf_counter()
    address = find_master(url, args.job)
    log(f"deepgrid: job {args.job!r}: master at {address} (from the registry "
        f"{url or 'in $DEEPGRID_HOME/registry'}, {time.perf_counter() - started:.2f} s)")
    return address


def cmd_status(args: argparse.Namespace) -> None:
    from deepgrid.dashboard.client import read_snapshot, show, watch

    if args.watch:
        watch(lambda: read_snapshot(args.job, args.state), args.json)
    else:  # printed here: main's --json line is for commands that return a summary
        print(show(read_snapshot(args.job, args.state), args.json))


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    return evaluate_saved(args.model_dir, args.dataset, args.data_dir, args.test_limit)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Cluster traffic is authenticated: Ray's token (~/.ray/auth_token or RAY_AUTH_TOKEN),
    # read when Ray is imported, so set before any command imports it.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        configure_cli_logging(level_of(args))
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
