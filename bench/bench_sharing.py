"""The ``sharing`` strategy against ``average``: test accuracy at equal epochs and the bytes sent.

The job of bench_distributed.py (see common.py): MLP 784-256-128-10 relu, SGD lr 0.05 momentum 0.9,
batch 64 per worker, Fashion-MNIST from Debian's files, 2 worker actors, the same initial weights.
Each contender trains --epochs epochs; the table gives the accuracy on the 10,000 test images and,
for ``sharing``, the bytes its workers' updates took (serialised size) per round against the dense
vectors ``average`` sends (4 bytes a parameter per job), over the run and per epoch.

Contenders: ``average`` at each --average-k (default 100, its default K) and each --variants entry, written
``quantise:sparsity:K[:momentum]`` (quantise: tau = Strom's +-tau, exact = the values themselves;
momentum: block momentum, default off for ``sharing``).

    .venv/bin/python bench/bench_sharing.py                      # the default variants, 5 epochs
    .venv/bin/python bench/bench_sharing.py --epochs 3 --variants tau:0.01:10,exact:0.005:10
    .venv/bin/python bench/bench_sharing.py --quick              # 10k examples, 1 epoch: a smoke run

It holds /tmp/deepgrid-bench.lock while contenders run (common.BenchLock: tests and other benchmarks
wait; let go for 30 s after 200 s held).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from common import BenchLock, deepgrid_conf, load_data

DEFAULT_VARIANTS = "tau:0.01:100,tau:0.01:50,tau:0.01:20,tau:0.01:10,exact:0.005:10,tau:0.01:10:0.5"


def run_one(train: Any, test: Any, epochs: int, strategy: str, variant: tuple[str, float, int, float | None]
            ) -> dict[str, Any]:
    from deepgrid.distributed import runner as runner_module
    from deepgrid.distributed.runner import ActorNetworkRunner
    from deepgrid.distributed.strategies import make_strategy
    from deepgrid.distributed.strategies.sharing import SharingStrategy

    quantise, sparsity, k, momentum = variant
    conf = deepgrid_conf(2, k, epochs, f"bench-sharing-{os.getpid()}", strategy=strategy,
                         sharing_sparsity=sparsity, block_momentum=momentum)
    # The quantisation is no Conf value (the default won the measurement): swap the strategy in.
    runner_module.make_strategy = (lambda c: SharingStrategy(sparsity, momentum, quantise == "tau")) \
        if strategy == "sharing" else make_strategy
    started = time.perf_counter()
    with ActorNetworkRunner("master", train) as runner:
        runner.setup(conf)
        model = runner.train()
        strategy_ = runner.strategy
        rounds = runner.round
    row = {"contender": strategy if strategy == "average" else f"sharing {quantise} s={sparsity:g}",
           "K": k, "momentum": momentum if momentum is not None else "1-1/N" if strategy == "average" else "off", "rounds": rounds,
           "accuracy": model.score(test.x, test.y), "wall_s": time.perf_counter() - started}
    n_params = model.get_flat_params().size
    if strategy == "sharing":
        row.update(sent_per_round=strategy_.bytes_sent / rounds, dense_per_round=strategy_.bytes_dense / rounds,
                   sent_per_epoch=strategy_.bytes_sent / epochs)
    else:  # average's workers send their whole parameters: one dense vector a job
        jobs = sum(1 for _ in runner.history)
        row.update(sent_per_round=4 * n_params * jobs / rounds, dense_per_round=4 * n_params * jobs / rounds,
                   sent_per_epoch=4 * n_params * jobs / epochs)
    return row


def parse_variant(text: str) -> tuple[str, float, int, float | None]:
    parts = text.split(":")
    momentum = float(parts[3]) if len(parts) > 3 else None
    return parts[0], float(parts[1]), int(parts[2]), momentum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--average-k", default="100", help="K of each average baseline, comma-separated ('' for none)")
    parser.add_argument("--quick", action="store_true", help="10,000 training examples, 1 epoch")
    args = parser.parse_args()
    from deepgrid.distributed import engine

    # Accuracy, not time, is measured here, but the runs would disturb another benchmark's timing
    # (and tests wait for the lock): take turns with them.
    lock = BenchLock("bench_sharing.py")
    train, test = load_data(10_000 if args.quick else None)
    epochs = 1 if args.quick else args.epochs
    engine.start_local(num_cpus=2)
    rows = []
    try:
        for k in filter(None, args.average_k.split(",")):
            lock.before_contender()
            rows.append(run_one(train, test, epochs, "average", ("", 0.01, int(k), None)))
            print(rows[-1], file=sys.stderr, flush=True)
        for text in args.variants.split(","):
            lock.before_contender()
            rows.append(run_one(train, test, epochs, "sharing", parse_variant(text)))
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        lock.release()
        engine.shutdown()
    print(f"\n{epochs} epochs, 2 workers, batch 64\n")
    print("| contender | K | block momentum | rounds | test acc | bytes up / round | dense / round | ratio "
          "| bytes up / epoch | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['contender']} | {r['K']} | {r['momentum']} | {r['rounds']} | {r['accuracy']:.4f} "
              f"| {r['sent_per_round']:,.0f} | {r['dense_per_round']:,.0f} "
              f"| 1/{r['dense_per_round'] / r['sent_per_round']:.0f} | {r['sent_per_epoch']:,.0f} "
              f"| {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
