"""deepgrid's RBM and layer-wise pretraining against their matrix-product bound and scikit-learn, in one run.

Speed (interleaved rounds, medians). Each round times, one after the other, for about ``--seconds``
each, on the same Fashion-MNIST training images in [0, 1], batch 64, ``--threads`` threads:

* rbm 784 -> 256, CD-1, float32: deepgrid's ``rbm`` model (``train_step`` of its pretraining
  phase, the inner loop of every path), scikit-learn's ``BernoulliRBM`` (float32 input, its faster
  path), and the **bound**: the bare matrix products of exactly that step (up, down, up, and the
  weight gradient as one (256 x 128) x (128 x 784) product) on preallocated tensors, nothing else:
  no sigmoid, no sampling, no update. deepgrid / bound is the share of the step spent in products;
  beside it, not a target: that bound plus momentum SGD's passes over the weight (``cd_products``'s
  ``update``), which read and write 2-3 MB a batch: on a machine whose caches do not hold them, a
  part of the step's time above its products that momentum SGD cannot avoid, however it is coded;
* the same step in bf16 (``precision: bf16``) and its bound in bf16;
* dbn 784-500-250-100, each layer's pretraining step (the input passes up through the fixed layers
  below, as ``pretrain:i`` does), its bound (those forward products + the layer's CD-1 products),
  and all three layers together (one pass over the data for each, as ``pretrain_epochs: 1``);
* sda, one denoising-autoencoder layer 784 -> 500 (its hand-written step, as ``train_step`` runs
  it with SGD), and its bound: the two forward products and the three of the backward pass.

Rounds alternate the contenders, so the machine's load (others share the 2 cores) falls on all of
them alike; the load average and the CPU other processes used in each round are printed. The lock
/tmp/deepgrid-bench.lock is held while a round times (other sessions' tests wait for it), let go
between rounds.

Accuracy (after the timing, not timed): an RBM of each kind trained ``--epochs`` passes, its
features fed to the same ``LogisticRegression`` (scikit-learn's ``Pipeline([BernoulliRBM,
LogisticRegression])`` with the RBM swapped), float32 and bf16, the mean over ``--seeds`` RBMs (10 by
default: one seed's figure has a standard deviation of about 0.0027, so a mean of 3 still moved by
0.0016, about the margin the target leaves); and the DBN as examples/dbn.yaml
(pretraining 1 pass per layer, fine-tuning with Adam for ``--dbn-epochs``), float32 and bf16.

    python bench/bench_rbm.py                  # about 15 minutes on 2 cores
    python bench/bench_rbm.py --quick          # 10,000 examples, 2 short rounds, small accuracy runs
    python bench/bench_rbm.py --no-accuracy    # the speed part only

Targets (issue 13): rbm and dbn (all layers) >= 0.8 x their bound; rbm features + logistic
regression >= 0.857; the DBN >= 0.88 in float32 and bf16. Prints tables, then one JSON line with
every figure (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from common import BenchLock, ForeignCpu  # type: ignore[import-not-found]

from deepgrid import NeuralNetConfiguration
from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.mnist import load_mnist
from deepgrid.models.autoencoder import StackedDenoisingAutoencoder
from deepgrid.models.cd import native_bf16_cpu
from deepgrid.models.dbn import DBN
from deepgrid.models.rbm import RBM
from deepgrid.train.loop import fit

BATCH = 64
RBM_HIDDEN = 256
DBN_SIZES = (500, 250, 100)
SDA_HIDDEN = 500
LR = 0.05
CHUNK = 50  # batches per train_step call while timing: a worker's job is of this order
BOUND_TARGET = 0.8
RBM_ACCURACY_TARGET = 0.857
DBN_ACCURACY_TARGET = 0.88


# -- the bounds: the step's matrix products alone, on preallocated tensors ----------------------------


def cd_products(n_visible: int, n_hidden: int, dtype: torch.dtype, below: tuple[int, ...] = (),
                update: bool = False) -> Callable[[torch.Tensor], None]:
    """One CD-1 step's products for an RBM n_visible -> n_hidden, after the forward products through
    the layers ``below`` (sizes from the input up to n_visible): a function of the batch.

    ``update``: with what momentum SGD must do to the weight besides, whatever the code: the gradient's
    product adds into the momentum buffer (reading it) and W -= lr x buffer (reading both, writing W).
    Not the bound the target names; it tells how much of a step's time above its products is the
    optimizer's memory traffic, which depends on the machine's caches."""
    torch.manual_seed(0)
    sizes = (*below, n_visible)
    lower = [(torch.randn(b, a, dtype=dtype) * 0.01, torch.zeros(b, dtype=dtype), torch.empty(BATCH, b, dtype=dtype))
             for a, b in zip(sizes, sizes[1:], strict=False)]
    w = torch.randn(n_hidden, n_visible, dtype=dtype) * 0.01
    bh, bv = torch.zeros(n_hidden, dtype=dtype), torch.zeros(n_visible, dtype=dtype)
    hiddens, visibles = torch.zeros(2 * BATCH, n_hidden, dtype=dtype), torch.zeros(2 * BATCH, n_visible, dtype=dtype)
    h_neg, h_pos, v_neg = hiddens[:BATCH], hiddens[BATCH:], visibles[:BATCH]
    grad, wt = torch.zeros(n_hidden, n_visible, dtype=dtype), w.t()
    lower_t = [(lw.t(), lb, out) for lw, lb, out in lower]

    def step(x: torch.Tensor) -> None:
        h = x
        for lwt, lb, out in lower_t:
            h = torch.addmm(lb, h, lwt, out=out)
        # v_pos stands for the step's input in the gradient's product: filling it is a copy, not a product.
        torch.addmm(bh, h, wt, out=h_pos)  # up
        torch.addmm(bv, h_pos, w, out=v_neg)  # down
        torch.addmm(bh, v_neg, wt, out=h_neg)  # up
        if update:  # grad is the momentum buffer; a tiny rate keeps the weights' values (and their speed) steady
            torch.addmm(grad, hiddens.t(), visibles, beta=0.5, alpha=1.0 / BATCH, out=grad)
            w.add_(grad, alpha=-1e-6)
        else:
            torch.mm(hiddens.t(), visibles, out=grad)  # the weight gradient, both phases in one product

    return step


def sda_products(n_visible: int, n_hidden: int) -> Callable[[torch.Tensor], None]:
    """One denoising-autoencoder step's products (tied weights): encode, decode, and the backward
    pass's three (decoder weight gradient, gradient to the code, encoder weight gradient)."""
    torch.manual_seed(0)
    w, bh, bv = torch.randn(n_hidden, n_visible) * 0.01, torch.zeros(n_hidden), torch.zeros(n_visible)
    h, out = torch.empty(BATCH, n_hidden), torch.empty(BATCH, n_visible)
    g_dec, g_enc, dh = torch.empty(n_hidden, n_visible), torch.empty(n_hidden, n_visible), torch.empty(BATCH, n_hidden)
    wt = w.t()

    def step(x: torch.Tensor) -> None:
        torch.addmm(bh, x, wt, out=h)
        torch.addmm(bv, h, w, out=out)
        torch.mm(h.t(), out, out=g_dec)
        torch.mm(out, wt, out=dh)
        torch.mm(dh.t(), x, out=g_enc)

    return step


# -- the contenders: each a function of a chunk of batches ---------------------------------------------


def bound_runner(product: Callable[[torch.Tensor], None], dtype: torch.dtype) -> Callable[[list[Any]], None]:
    cast: dict[int, torch.Tensor] = {}  # the input in ``dtype``, made once: a cast is no product

    def run(chunk: list[Any]) -> None:
        for x, _ in chunk:
            if x.dtype != dtype:
                x = cast.get(id(x)) if id(x) in cast else cast.setdefault(id(x), x.to(dtype))
            product(x)

    return run


def model_runner(model: Any, phase: str) -> Callable[[list[Any]], None]:
    return lambda chunk: model.train_step(phase, chunk)


def sklearn_runner(lr: float) -> Callable[[list[Any]], None]:
    from sklearn.neural_network import BernoulliRBM

    def run(chunk: list[Any]) -> None:
        x = torch.cat([b[0] for b in chunk]).numpy()
        BernoulliRBM(n_components=RBM_HIDDEN, batch_size=BATCH, learning_rate=lr, n_iter=1, random_state=0).fit(x)

    return run


def network(**fields: Any) -> NeuralNetConfiguration:
    settings: dict[str, Any] = dict(n_in=784, n_out=10, k=1, pretrain_lr=LR, momentum=0.5, pretrain_epochs=1)
    return NeuralNetConfiguration(**{**settings, **fields})


def contenders(bf16: bool, lr: float) -> dict[str, Callable[[list[Any]], None]]:
    """Name -> runner, in the order each round times them."""
    f32, b16 = torch.float32, torch.bfloat16
    out: dict[str, Callable[[list[Any]], None]] = {
        "rbm bound": bound_runner(cd_products(784, RBM_HIDDEN, f32), f32),
        "rbm bound+update": bound_runner(cd_products(784, RBM_HIDDEN, f32, update=True), f32),
        "rbm deepgrid": model_runner(RBM(network(hidden_layer_sizes=(RBM_HIDDEN,), pretrain_lr=lr)), "pretrain:0"),
        "rbm scikit-learn": sklearn_runner(lr),
    }
    if bf16:
        out["rbm bound bf16"] = bound_runner(cd_products(784, RBM_HIDDEN, b16), b16)
        out["rbm deepgrid bf16"] = model_runner(RBM(network(hidden_layer_sizes=(RBM_HIDDEN,), precision="bf16")),
                                                "pretrain:0")
    dbns = {"": DBN(network(hidden_layer_sizes=DBN_SIZES))}
    if bf16:
        dbns[" bf16"] = DBN(network(hidden_layer_sizes=DBN_SIZES, precision="bf16"))
    sizes = (784, *DBN_SIZES)
    for i in range(len(DBN_SIZES)):
        out[f"dbn:{i} bound"] = bound_runner(cd_products(sizes[i], sizes[i + 1], f32, sizes[:i]), f32)
        for suffix, model in dbns.items():
            out[f"dbn:{i} deepgrid{suffix}"] = model_runner(model, f"pretrain:{i}")
    out["sda bound"] = bound_runner(sda_products(784, SDA_HIDDEN), f32)
    sda = StackedDenoisingAutoencoder(network(hidden_layer_sizes=(SDA_HIDDEN,), pretrain_lr=0.01))
    out["sda deepgrid"] = model_runner(sda, "pretrain:0")
    return out


def load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def time_group(runners: dict[str, Callable[[list[Any]], None]], chunks: list[list[Any]],
               seconds: float) -> dict[str, float]:
    """Samples/s of each runner, the runners taking turns chunk by chunk (about 50 batches each) for
    about ``seconds`` each: a step and its bound see the same moments of the machine's load."""
    for run in runners.values():
        run(chunks[0][:2])  # warm: first calls make optimizers and buffers
    samples = dict.fromkeys(runners, 0)
    elapsed = dict.fromkeys(runners, 0.0)
    i = 0
    while min(elapsed.values()) < seconds:
        chunk = chunks[i % len(chunks)]
        for name, run in runners.items():
            start = time.perf_counter()
            run(chunk)
            elapsed[name] += time.perf_counter() - start
            samples[name] += len(chunk) * BATCH
        i += 1
    return {name: samples[name] / elapsed[name] for name in runners}


def speed(chunks: list[list[Any]], rounds: int, seconds: float, bf16: bool, lr: float) -> dict[str, Any]:
    runners = contenders(bf16, lr)
    groups: dict[str, dict[str, Callable[[list[Any]], None]]] = {}
    for name, run in runners.items():  # "rbm deepgrid bf16" -> group "rbm"
        # scikit-learn apart, and last: numpy's OpenBLAS threads spin on the cores for a while after
        # each of its products, which slowed whatever ran next (in the rbm group, the bound: deepgrid
        # then ran at 1.46-1.48x "its bound" on a quiet machine).
        groups.setdefault("scikit-learn" if "scikit-learn" in name else name.split()[0], {})[name] = run
    groups["scikit-learn"] = groups.pop("scikit-learn")
    rates: dict[str, list[float]] = {name: [] for name in runners}
    loads, foreign = [], []
    lock = BenchLock("bench_rbm.py")
    watch = ForeignCpu()
    watch.start()
    try:
        for r in range(rounds):
            before_load, before_cpu, started = load(), watch.read(), time.perf_counter()
            for group in groups.values():
                lock.before_contender()
                for name, rate in time_group(group, chunks, seconds).items():
                    rates[name].append(rate)
                lock.release()  # between groups: a waiting test run gets its turn
                time.sleep(0.5)  # any spinning BLAS threads of this group go to sleep before the next
            others = (watch.read() - before_cpu) / (time.perf_counter() - started)
            loads.append(max(before_load, load()))
            foreign.append(others)
            print(f"  round {r + 1}/{rounds}: load average {loads[-1]:.2f}, other processes used {others:.2f} "
                  f"CPU; rbm deepgrid {rates['rbm deepgrid'][-1]:,.0f}/s, bound {rates['rbm bound'][-1]:,.0f}/s",
                  flush=True)
    finally:
        lock.release()
        watch.stop()
    for suffix in ("deepgrid", "bound", "deepgrid bf16"):  # all DBN layers, one pass each: their times add up
        if f"dbn:0 {suffix}" in rates:
            rates[f"dbn {suffix}"] = [1.0 / sum(1.0 / rates[f"dbn:{i} {suffix}"][r] for i in range(len(DBN_SIZES)))
                                      for r in range(rounds)]
    medians = {name: statistics.median(v) for name, v in rates.items()}
    return {"rates": rates, "medians": medians, "load": loads, "others_cpu": foreign}


def ratio(rates: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of a / b, each round's two measured side by side."""
    return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))


# -- accuracy -----------------------------------------------------------------------------------------


def logistic_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs's ConvergenceWarning at max_iter: the same cap for all
        clf = LogisticRegression(max_iter=300, C=1.0)
        clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def accuracy(train: Any, test: Any, epochs: int, dbn_epochs: int, bf16: bool, lr: float,
             seeds: list[int]) -> dict[str, Any]:
    from sklearn.neural_network import BernoulliRBM

    out: dict[str, Any] = {}
    y, ty = train.y.numpy(), test.y.numpy()
    sk = BernoulliRBM(n_components=RBM_HIDDEN, batch_size=BATCH, learning_rate=lr, n_iter=epochs, random_state=0)
    sk.fit(train.x.numpy())
    out["rbm scikit-learn"] = logistic_accuracy(sk.transform(train.x.numpy()), y, sk.transform(test.x.numpy()), ty)
    print(f"  rbm scikit-learn + logistic regression: {out['rbm scikit-learn']:.4f}", flush=True)
    for precision in ("float32", "bf16") if bf16 else ("float32",):
        scores = []
        for seed in seeds:
            model = RBM(network(hidden_layer_sizes=(RBM_HIDDEN,), pretrain_epochs=epochs, pretrain_lr=lr,
                                precision=precision, seed=seed))
            start = time.perf_counter()
            fit(model, ArrayDataset(train.x, train.y), batch_size=BATCH, epochs=1)  # the pretraining + 1 softmax pass
            seconds = time.perf_counter() - start
            scores.append(logistic_accuracy(model.transform(train.x), y, model.transform(test.x), ty))
            print(f"  rbm deepgrid {precision}, seed {seed} + logistic regression: {scores[-1]:.4f} "
                  f"({seconds:.1f} s to train)", flush=True)
        out[f"rbm {precision}"], out[f"rbm {precision} seeds"] = statistics.mean(scores), dict(zip(seeds, scores, strict=True))
        print(f"  rbm deepgrid {precision} + logistic regression, mean of {len(seeds)} seeds: "
              f"{out[f'rbm {precision}']:.4f} (range {min(scores):.4f}-{max(scores):.4f})", flush=True)
    for precision in ("float32", "bf16") if bf16 else ("float32",):
        # examples/dbn.yaml: 784-500-250-100, CD-1, 1 pretraining pass per layer, Adam fine-tuning.
        model = DBN(network(hidden_layer_sizes=DBN_SIZES, optimizer="adam", finetune_lr=0.001,
                            finetune_epochs=dbn_epochs, precision=precision))
        start = time.perf_counter()
        fit(model, ArrayDataset(train.x, train.y), batch_size=BATCH)
        seconds = time.perf_counter() - start
        out[f"dbn {precision}"] = model.score(test.x, test.y)
        out[f"dbn {precision} seconds"] = seconds
        print(f"  dbn deepgrid {precision}: test accuracy {out[f'dbn {precision}']:.4f} ({seconds:.1f} s to train)",
              flush=True)
    return out


# -- the distributed path: pretraining samples/s per worker -----------------------------------------


class JobSeconds:
    """A runner callback: (phase, worker, samples, seconds) of every job, from the workers' own clocks."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str, int, float]] = []

    def on_round_end(self, master: Any, report: Any) -> None:
        self.jobs += [(report.phase, r.worker_id, r.n_samples, r.seconds) for r in report.results]


def distributed(train: Any, workers: int) -> dict[str, Any]:
    """DBN 784-500-250-100 pretraining (one pass per layer; fine-tuning 1 pass, not counted) on ``workers``
    local Ray workers of 1 thread each, averaging every 50 batches; against the same pretraining in one
    process at 1 thread. Per worker: its jobs' samples / their seconds on the worker (set_flat_params,
    the train_step and get_flat_params: what a job costs a worker)."""
    import tempfile

    from deepgrid import Conf
    from deepgrid.distributed import engine
    from deepgrid.distributed.runner import ActorNetworkRunner

    net = dict(n_in=784, n_out=10, hidden_layer_sizes=list(DBN_SIZES), k=1, pretrain_lr=LR, momentum=0.5,
               pretrain_epochs=1, finetune_epochs=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    single = DBN(NeuralNetConfiguration(**{**net, "hidden_layer_sizes": DBN_SIZES}))
    data = ArrayDataset(train.x, train.y)
    single_seconds = 0.0
    for i in range(len(DBN_SIZES)):
        order = data.batch_order(BATCH, 0, 0)
        batches = [data.batch(idx) for idx in order]
        start = time.perf_counter()
        single.train_step(f"pretrain:{i}", batches)
        single_seconds += time.perf_counter() - start
    torch.set_num_threads(threads)
    single_rate = len(DBN_SIZES) * len(batches) * BATCH / single_seconds

    watch = JobSeconds()
    with tempfile.TemporaryDirectory() as home:
        os.environ["DEEPGRID_HOME"] = home
        engine.start_local(num_cpus=workers)
        runner = ActorNetworkRunner("master", data)
        try:
            runner.setup(Conf(model="dbn", workers=workers, batch_size=BATCH, averaging_frequency=50, epochs=1,
                              dashboard=None, network=net))
            runner.callbacks.append(watch)
            start = time.perf_counter()
            runner.train()
            wall = time.perf_counter() - start
        finally:
            runner.shutdown()
            engine.shutdown()
    per_worker: dict[str, list[float]] = {}
    for phase, worker, n, seconds in watch.jobs:
        if phase.startswith("pretrain"):
            acc = per_worker.setdefault(worker, [0, 0.0])
            acc[0] += n
            acc[1] += seconds
    rates = {w: n / sec for w, (n, sec) in per_worker.items()}
    pretrain_samples = sum(n for phase, _, n, _ in watch.jobs if phase.startswith("pretrain"))
    return {"workers": workers, "single_process_1_thread": single_rate, "per_worker": rates,
            "per_worker_mean": statistics.mean(rates.values()) if rates else 0.0,
            "pretrain_samples": pretrain_samples, "run_seconds_with_finetune": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per contender per round (default 2)")
    parser.add_argument("--epochs", type=int, default=5, help="RBM passes for the accuracy part (default 5)")
    parser.add_argument("--dbn-epochs", type=int, default=20, help="DBN fine-tuning passes (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every contender (default 2)")
    parser.add_argument("--seeds", type=int, default=10,
                        help="RBMs (seeds 123, 124, ...) whose features' accuracy is averaged (default 10): one seed's "
                             "figure has a standard deviation of about 0.0027")
    parser.add_argument("--lr", type=float, default=LR, help="RBM learning rate (default 0.05)")
    parser.add_argument("--quick", action="store_true", help="10,000 examples, 2 rounds of 1 s, small accuracy runs")
    parser.add_argument("--no-accuracy", action="store_true", help="the speed part only")
    parser.add_argument("--no-bf16", action="store_true", help="float32 only")
    parser.add_argument("--distributed", type=int, default=0, metavar="N",
                        help="also pretrain the DBN on N local workers: samples/s per worker (default: skip)")
    parser.add_argument("--only-distributed", action="store_true", help="the --distributed part alone")
    parser.add_argument("--data-dir", help="Fashion-MNIST directory (default: found as deepgrid finds it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.epochs, args.dbn_epochs, args.seeds = 2, 1.0, 1, 2, 1
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, not {args.seeds}")
    bf16 = not args.no_bf16 and native_bf16_cpu()

    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    threadpool_limits(args.threads)  # numpy's BLAS, for scikit-learn: the same threads as torch
    train = load_mnist("fashion-mnist", "train", args.data_dir, limit=10_000 if args.quick else None)
    test = load_mnist("fashion-mnist", "test", args.data_dir)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    batches = [(train.x[idx], train.y[idx]) for idx in order[: len(order) // BATCH * BATCH].view(-1, BATCH)]
    chunks = [batches[i : i + CHUNK] for i in range(0, len(batches) - CHUNK + 1, CHUNK)]
    print(f"batch {BATCH}, {args.threads} thread(s), torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {native_bf16_cpu()}); {args.rounds} rounds of {args.seconds:g} s per contender, "
          f"{os.cpu_count()} cores, load average {load():.2f}", flush=True)

    if args.only_distributed:
        out = distributed(train, args.distributed or 2)
        print(f"dbn pretraining, {out['workers']} workers of 1 thread: per worker {out['per_worker_mean']:,.0f} samples/s "
              f"({', '.join(f'{v:,.0f}' for v in out['per_worker'].values())}); one process, 1 thread: "
              f"{out['single_process_1_thread']:,.0f} samples/s; ratio {out['per_worker_mean'] / out['single_process_1_thread']:.2f}")
        print(json.dumps({"bench": "rbm-distributed", **out}))
        return 0
    timed = speed(chunks, args.rounds, args.seconds, bf16, args.lr)
    m, rates = timed["medians"], timed["rates"]  # name -> median samples/s; name -> per round
    keys = ["rbm", *(f"dbn:{i}" for i in range(len(DBN_SIZES))), "dbn", "sda"]
    ratios = {key: ratio(rates, f"{key} deepgrid", f"{key} bound") for key in keys}
    speedups = {key: ratio(rates, f"{key} deepgrid bf16", f"{key} deepgrid") for key in keys
                if f"{key} deepgrid bf16" in rates}
    print()
    print("samples/s: medians over rounds; the ratios: medians of each round's ratio (measured side by side)")
    print(f"{'step':<26} {'deepgrid':>10} {'bound':>10} {'deepgrid/bound':>15} {'bf16':>10} "
          f"{'bf16 bound':>11} {'bf16/float32':>13}")
    names = [("rbm 784-256 CD-1", "rbm")] + [(f"dbn layer {i} ({(784, *DBN_SIZES)[i]}-{DBN_SIZES[i]})", f"dbn:{i}")
                                              for i in range(len(DBN_SIZES))]
    names += [("dbn all layers", "dbn"), (f"sda layer 784-{SDA_HIDDEN}", "sda")]
    for label, key in names:
        ours, b16, b16_bound = m[f"{key} deepgrid"], m.get(f"{key} deepgrid bf16"), m.get(f"{key} bound bf16")
        print(f"{label:<26} {ours:>10,.0f} {m[f'{key} bound']:>10,.0f} {ratios[key]:>15.2f} "
              + (f"{b16:>10,.0f}" if b16 else " " * 10) + " " + (f"{b16_bound:>11,.0f}" if b16_bound else " " * 11)
              + " " + (f"{speedups[key]:>12.2f}x" if key in speedups else ""))
    beside = ratio(rates, "rbm deepgrid", "rbm bound+update")
    print(f"{'rbm bound + SGD update':<26} {'':>10} {m['rbm bound+update']:>10,.0f} {beside:>15.2f}    (not the "
          "target's bound: the products plus momentum SGD's own passes over the weight, see cd_products)")
    print(f"{'rbm scikit-learn':<26} {m['rbm scikit-learn']:>10,.0f}    (deepgrid / scikit-learn = "
          f"{m['rbm deepgrid'] / m['rbm scikit-learn']:.2f}x)")
    print(f"load average per round {timed['load']}, other processes' CPU per round "
          f"{[round(c, 2) for c in timed['others_cpu']]}")
    verdict = {k: ratios[k] >= BOUND_TARGET for k in ("rbm", "dbn")}
    print(f"targets: rbm {ratios['rbm']:.2f} x bound ({'PASS' if verdict['rbm'] else 'MISS'} >= {BOUND_TARGET}), "
          f"dbn all layers {ratios['dbn']:.2f} x bound ({'PASS' if verdict['dbn'] else 'MISS'} >= {BOUND_TARGET})")

    acc: dict[str, Any] = {}
    if not args.no_accuracy:
        print(f"\naccuracy ({len(train):,} training examples, RBM {args.epochs} passes, DBN {args.dbn_epochs} "
              "fine-tuning passes; not timed against the others)", flush=True)
        first = NeuralNetConfiguration().seed  # the configuration's default seed, then the next ones
        acc = accuracy(train, test, args.epochs, args.dbn_epochs, bf16, args.lr, list(range(first, first + args.seeds)))
        checks = {"rbm float32": RBM_ACCURACY_TARGET, "dbn float32": DBN_ACCURACY_TARGET, "dbn bf16": DBN_ACCURACY_TARGET}
        print("accuracy targets: " + ", ".join(f"{k} {acc[k]:.4f} ({'PASS' if acc[k] >= t else 'MISS'} >= {t})"
                                               for k, t in checks.items() if k in acc))
        if "rbm bf16" in acc:
            print(f"bf16 - float32: rbm features {acc['rbm bf16'] - acc['rbm float32']:+.4f}, "
                  f"dbn {acc['dbn bf16'] - acc['dbn float32']:+.4f}")
    print(json.dumps({
        "bench": "rbm", "python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
        "rounds": args.rounds, "seconds": args.seconds, "train_examples": len(train),
        "samples_per_s": {k: round(v, 1) for k, v in m.items()}, "samples_per_s_rounds": timed["rates"],
        "ratios": {k: round(v, 3) for k, v in ratios.items()}, "rbm_over_bound_with_update": round(beside, 3),
        "bf16_speedups": {k: round(v, 3) for k, v in speedups.items()}, "load": timed["load"], "others_cpu": timed["others_cpu"],
        "accuracy": acc, "bound_targets_met": verdict,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
