"""``average`` with its workers' SGD momentum dropped each round (the default) or kept, by workers and K.

The job of bench_distributed.py (see common.py): MLP 784-256-128-10 relu, SGD lr 0.05 momentum 0.9,
batch 64 per worker, Fashion-MNIST from Debian's files, the same initial weights. deepgrid's
``average`` trains --epochs epochs with N worker actors (one Ray CPU each, as many as asked for
whatever the cores: this measures accuracy, not speed) and jobs of K batches, with
``reset_momentum`` true and false; the plain PyTorch loop (one process, the same epochs) is the
reference. The table gives the test accuracy on the 10,000 test images and the parameters' norm
(a norm far above the plain loop's is the block momentum and the workers' own compounding).

    .venv/bin/python bench/bench_momentum.py                         # N 2,4,8 x K 10,100, 3 epochs
    .venv/bin/python bench/bench_momentum.py --workers 4 --k 10 --epochs 2
    .venv/bin/python bench/bench_momentum.py --quick                 # 10k examples, 1 epoch: a smoke run

It holds /tmp/deepgrid-bench.lock while contenders run (common.BenchLock).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from common import (
    BATCH,
    LR,
    MOMENTUM,
    BenchLock,
    accuracy,
    build_mlp,
    deepgrid_conf,
    epoch_batches,
    load_data,
    train_epoch,
)


def run_average(train: Any, test: Any, workers: int, k: int, epochs: int, reset: bool) -> dict[str, Any]:
    from deepgrid.distributed.runner import ActorNetworkRunner

    conf = deepgrid_conf(workers, k, epochs, f"bench-momentum-{os.getpid()}", reset_momentum=reset)
    started = time.perf_counter()
    with ActorNetworkRunner("master", train) as runner:
        runner.setup(conf)
        model = runner.train()
        rounds = runner.round
    params = model.get_flat_params()
    return {"contender": f"average, momentum {'dropped' if reset else 'kept'}", "workers": workers, "K": k,
            "rounds": rounds, "accuracy": model.score(test.x, test.y), "norm": float(np.linalg.norm(params)),
            "wall_s": time.perf_counter() - started}


def run_plain(train: Any, test: Any, epochs: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    module = build_mlp()
    opt = torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)
    started = time.perf_counter()
    for epoch in range(epochs):
        train_epoch(module, opt, train.x, train.y, epoch_batches(len(train), epoch))
    norm = float(torch.cat([p.detach().reshape(-1) for p in module.parameters()]).norm())
    return {"contender": "plain PyTorch loop", "workers": 1, "K": "-", "rounds": "-",
            "accuracy": accuracy(module, test.x, test.y), "norm": norm, "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", default="2,4,8", help="worker actors, comma-separated")
    parser.add_argument("--k", default="10,100", help="averaging_frequency values, comma-separated")
    parser.add_argument("--quick", action="store_true", help="10,000 training examples, 1 epoch")
    args = parser.parse_args()
    from deepgrid.distributed import engine

    lock = BenchLock("bench_momentum.py")
    train, test = load_data(10_000 if args.quick else None)
    epochs = 1 if args.quick else args.epochs
    workers = [int(w) for w in args.workers.split(",")]
    ks = [int(k) for k in args.k.split(",")]
    rows = []
    try:
        lock.before_contender()
        rows.append(run_plain(train, test, epochs))
        print(rows[-1], file=sys.stderr, flush=True)
        engine.start_local(num_cpus=max(workers))
        for n in workers:
            for k in ks:
                for reset in (True, False):
                    lock.before_contender()
                    rows.append(run_average(train, test, n, k, epochs, reset))
                    print(rows[-1], file=sys.stderr, flush=True)
    finally:
        lock.release()
        engine.shutdown()
    print(f"\n{epochs} epochs, batch {BATCH} per worker, SGD lr {LR} momentum {MOMENTUM}\n")
    print("| contender | workers | K | rounds | test acc | parameter norm | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['contender']} | {r['workers']} | {r['K']} | {r['rounds']} | {r['accuracy']:.4f} "
              f"| {r['norm']:.1f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
