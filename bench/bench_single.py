"""Single-process throughput: deepgrid's reference loop against a hand-written PyTorch loop.

Both train the same MLP (784-256-128-10, ReLU, SGD momentum 0.9, lr 0.05,
batch 64) from the same initial weights over the same batch order, so they do
the same arithmetic; the only difference is the code around it. Runs
alternate (hand-written, deepgrid, deepgrid, hand-written, ...) and the best of
``--repeats`` counts, to damp noise from other work on the machine.

    python bench/bench_single.py              # full Fashion-MNIST, 2 epochs, 1 and 2 threads
    python bench/bench_single.py --quick      # a 10,000-example slice, 1 epoch
    python bench/bench_single.py --accuracy   # examples/{mlp,cnn,dbn,sda}.yaml against their targets

Prints a table, then one JSON line with every figure (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from deepgrid import Conf, NeuralNetConfiguration
from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.mnist import load_mnist, load_splits, training_split
from deepgrid.models.mlp import MLP
from deepgrid.models.registry import get
from deepgrid.train.loop import fit, phase_seed

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.95
ACCURACY_TARGETS = {  # example file -> (test accuracy at least, wall seconds at most)
    "examples/mlp.yaml": (0.89, 300.0),
    "examples/cnn.yaml": (0.91, 300.0),
    "examples/dbn.yaml": (0.88, 300.0),
    "examples/sda.yaml": (0.88, 300.0),
}
BATCH_SIZE = 64
NETWORK = NeuralNetConfiguration(n_in=784, n_out=10, hidden_layer_sizes=(256, 128), activation="relu",
                                 optimizer="sgd", finetune_lr=0.05, momentum=0.9, seed=123)


# -- the two loops -----------------------------------------------------------------------------------


def plain_module(model: MLP) -> nn.Module:
    """A plain nn.Sequential with the MLP's sizes and its initial weights (copied, not shared)."""
    sizes = (NETWORK.n_in, *NETWORK.hidden_layer_sizes, NETWORK.n_out)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    module = nn.Sequential(*layers)
    module.load_state_dict({k: v.clone() for k, v in model.module.state_dict().items()})
    return module


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle deepgrid's batch_order makes for (seed, epoch), written out by hand."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def hand_written(module: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> int:
    """The loop one writes from the PyTorch tutorial. Returns the samples trained."""
    optimizer = torch.optim.SGD(module.parameters(), lr=NETWORK.finetune_lr, momentum=NETWORK.momentum)
    module.train()
    n_batches = len(x) // BATCH_SIZE
    for epoch in range(epochs):
        perm = epoch_permutation(len(x), seed, epoch)
        for i in range(n_batches):
            idx = perm[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
            xb, yb = x[idx], y[idx]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(module(xb), yb)
            loss.backward()
            optimizer.step()
    return epochs * n_batches * BATCH_SIZE


def accuracy(logits_fn: Any, test: ArrayDataset) -> float:
    with torch.no_grad():
        return float((logits_fn(test.x).argmax(dim=1) == test.y).float().mean())


# -- throughput ----------------------------------------------------------------------------------------


def run_once(kind: str, train: ArrayDataset, epochs: int) -> tuple[float, int, Any]:
    """(seconds, samples, trained thing) for one run of ``kind``; building the model is not timed."""
    model = MLP(NETWORK)
    seed = phase_seed(NETWORK.seed, 0)
    if kind == "hand-written":
        module = plain_module(model)
        start = time.perf_counter()
        samples = hand_written(module, train.x, train.y, epochs, seed)
        return time.perf_counter() - start, samples, module
    start = time.perf_counter()
    result = fit(model, train, epochs=epochs, batch_size=BATCH_SIZE)
    return time.perf_counter() - start, result.samples, model


def throughput(train: ArrayDataset, test: ArrayDataset, threads: int, epochs: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    # Warm up both paths (allocator, thread pool) on a few batches; not counted.
    warm = train.subset(slice(0, BATCH_SIZE * 20))
    run_once("hand-written", warm, 1)
    run_once("deepgrid", warm, 1)

    times: dict[str, list[float]] = {"hand-written": [], "deepgrid": []}
    samples: dict[str, int] = {}
    trained: dict[str, Any] = {}
    for r in range(repeats):
        order = ("hand-written", "deepgrid") if r % 2 == 0 else ("deepgrid", "hand-written")
        for kind in order:
            seconds, n, thing = run_once(kind, train, epochs)
            times[kind].append(seconds)
            samples[kind] = n
            trained[kind] = thing
    if samples["hand-written"] != samples["deepgrid"]:
        raise SystemExit(f"the loops trained different sample counts: {samples}")

    module, model = trained["hand-written"], trained["deepgrid"]
    module.eval()
    model.module.eval()
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(module.parameters(), model.module.parameters(),
                                                               strict=True))
    out: dict[str, Any] = {"threads": threads, "samples": samples["deepgrid"], "max_param_diff": diff}
    for kind in times:
        best = min(times[kind])
        key = kind.replace("-", "_")
        out[key] = {
            "samples_per_s": samples[kind] / best,
            "median_samples_per_s": samples[kind] / statistics.median(times[kind]),
            "seconds": [round(t, 3) for t in times[kind]],
            "test_accuracy": accuracy(module if kind == "hand-written" else model.forward, test),
        }
    out["ratio"] = out["deepgrid"]["samples_per_s"] / out["hand_written"]["samples_per_s"]
    out["median_ratio"] = out["deepgrid"]["median_samples_per_s"] / out["hand_written"]["median_samples_per_s"]
    out["meets_target"] = out["ratio"] >= TARGET_RATIO
    return out


def print_throughput(rows: list[dict[str, Any]], epochs: int, repeats: int, n_train: int) -> None:
    print(f"MLP 784-256-128-10 relu, SGD momentum {NETWORK.momentum} lr {NETWORK.finetune_lr}, batch {BATCH_SIZE}, "
          f"{n_train:,} training examples x {epochs} epoch(s), best of {repeats} alternating runs")
    header = f"{'threads':>7}  {'loop':<13} {'samples/s':>10} {'median':>10}  {'test acc':>8}  runs (s)"
    print(header)
    print("-" * len(header))
    for row in rows:
        for key, label in (("hand_written", "hand-written"), ("deepgrid", "deepgrid")):
            r = row[key]
            print(f"{row['threads']:>7}  {label:<13} {r['samples_per_s']:>10,.0f} {r['median_samples_per_s']:>10,.0f}  "
                  f"{r['test_accuracy']:>8.4f}  {', '.join(f'{t:.2f}' for t in r['seconds'])}")
        verdict = "ok" if row["meets_target"] else "BELOW TARGET"
        print(f"{row['threads']:>7}  {'ratio':<13} {row['ratio']:>10.3f} {row['median_ratio']:>10.3f}  "
              f"(deepgrid / hand-written, target >= {TARGET_RATIO}: {verdict}; "
              f"max |param difference| {row['max_param_diff']:.2e})")


# -- accuracy ------------------------------------------------------------------------------------------


def accuracy_run(path: str, data_dir: str | None, quick: bool) -> dict[str, Any]:
    conf = Conf.load(ROOT / path)
    if data_dir:
        conf = conf.replace(data_dir=data_dir)
    if quick:
        conf = conf.replace(train_limit=5000, test_limit=2000, epochs=1)
    min_accuracy, max_seconds = ACCURACY_TARGETS[path]
    start = time.perf_counter()
    train, test = load_splits(conf)
    train, validation = training_split(train, conf)
    model = get(conf.model)(conf.network)
    result = fit(model, train, epochs=conf.epochs, batch_size=conf.batch_size, job_size=conf.averaging_frequency,
                 validation=validation, patience=conf.patience, min_improvement=conf.min_improvement)
    test_accuracy = model.score(test.x, test.y)
    wall = time.perf_counter() - start
    return {
        "conf": path,
        "model": conf.model,
        "epochs": conf.finetune_epochs,
        "train_examples": len(train),
        "test_examples": len(test),
        "test_accuracy": test_accuracy,
        "train_seconds": result.elapsed_s,
        "wall_seconds": wall,
        "samples_per_s": result.samples_per_s,
        "target_accuracy": min_accuracy,
        "target_seconds": max_seconds,
        "meets_target": test_accuracy >= min_accuracy and wall <= max_seconds,
    }


def print_accuracy(rows: list[dict[str, Any]]) -> None:
    header = (f"{'conf':<18} {'epochs':>6} {'test acc':>8} {'target':>7} {'wall s':>7} {'limit s':>7} "
              f"{'train s':>7} {'samples/s':>9}  verdict")
    print(header)
    print("-" * len(header))
    for r in rows:
        verdict = "ok" if r["meets_target"] else "MISSED"
        print(f"{r['conf']:<18} {r['epochs']:>6} {r['test_accuracy']:>8.4f} {r['target_accuracy']:>7.2f} "
              f"{r['wall_seconds']:>7.1f} {r['target_seconds']:>7.0f} {r['train_seconds']:>7.1f} "
              f"{r['samples_per_s']:>9,.0f}  {verdict}")


# -- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small slice of the data (a smoke run)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per throughput run (default 2; quick: 1)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each loop (default 3; quick: 2)")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    parser.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files")
    parser.add_argument("--accuracy", action="store_true",
                        help="train examples/{mlp,cnn,dbn,sda}.yaml and compare with their targets")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                            "cpus": os.cpu_count(), "quick": args.quick, "loadavg_before": load_before}
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f} before starting")

    if args.accuracy:
        torch.set_num_threads(os.cpu_count() or 1)
        rows = [accuracy_run(path, args.data_dir, args.quick) for path in ACCURACY_TARGETS]
        print_accuracy(rows)
        info["accuracy"] = rows
    else:
        epochs = args.epochs or (1 if args.quick else 2)
        repeats = args.repeats or (2 if args.quick else 3)
        limit = 10_000 if args.quick else None
        train = load_mnist("fashion-mnist", "train", args.data_dir, limit=limit)
        test = load_mnist("fashion-mnist", "test", args.data_dir, limit=2_000 if args.quick else None)
        # The hand-written loop's shuffle is deepgrid's: check it, so the comparison is like for like.
        expected = train.batch_order(BATCH_SIZE, phase_seed(NETWORK.seed, 0), 1)
        by_hand = epoch_permutation(len(train), phase_seed(NETWORK.seed, 0), 1)[: expected.numel()]
        assert torch.equal(expected.flatten(), by_hand), "batch orders differ"
        rows = [throughput(train, test, int(t), epochs, repeats) for t in args.threads.split(",")]
        print_throughput(rows, epochs, repeats, len(train))
        info.update(epochs=epochs, repeats=repeats, train_examples=len(train), test_examples=len(test),
                    throughput=rows)

    load_after = os.getloadavg()
    info["loadavg_after"] = load_after
    busy = max(load_before[0], load_after[0]) > 0.5
    print(f"load average {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} after"
          + ("  (other work was running: timings may be noisy)" if busy else ""))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
