"""What the benchmarks share: the competitors' network, data order and training loop, PyTorch DDP and
Ray Train runs of it, deepgrid's Conf for the same job, and a watch on other people's CPU use.

bench_distributed.py and bench_strategies.py import this as ``common`` (Python puts a script's own
folder first on its path). Every contender trains the same network on the same data with the same
initialisation and the same per-epoch shuffle:

  MLP 784-256-128-10 (relu, Xavier init, seed 123) on Fashion-MNIST,
  batch 64 per worker/process, SGD lr 0.05 momentum 0.9.

The data order of an epoch is deepgrid's ``ArrayDataset.batch_order`` permutation (seed 123 *
1_000_003 + epoch); DDP and Ray Train shard it DistributedSampler-style (rank r takes every
world-th index, ragged tail dropped) and cut each shard into batches of 64.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

DATA_DIR = "/usr/share/datasets/fashion-mnist"
HIDDEN = (256, 128)
N_IN, N_OUT = 784, 10
BATCH = 64
LR = 0.05
MOMENTUM = 0.9
SEED = 123  # deepgrid's default NeuralNetConfiguration.seed
# Held while a benchmark times: other sessions' test runs wait until it is gone.
LOCK = Path("/tmp/deepgrid-bench.lock")
STALE_LOCK_S = 600.0


# -- how much CPU other people's processes took meanwhile --------------------------------------------


def process_table() -> dict[int, tuple[str, int, int, int]]:
    """Every process on the machine: pid -> (its name, its parent's pid, the CPU ticks it has used,
    user and system, and when it started, in ticks since boot)."""
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                text = f.read()
        except OSError:  # it ended meanwhile
            continue
        rest = text[text.rfind(")") + 2 :].split()  # the name, in parentheses, may hold spaces
        procs[int(d)] = (text[text.find("(") + 1 : text.rfind(")")], int(rest[1]), int(rest[11]) + int(rest[12]),
                         int(rest[19]))
    return procs


class ForeignCpu(threading.Thread):
    """Samples /proc every ``interval`` s and splits CPU time between this bench's process tree
    (itself, Ray's processes it started, DDP's processes) and everything else on the machine.
    ``foreign_s`` is the CPU seconds the others used: on 2 cores, others using 0.5 CPU on average
    leave the contenders 1.5."""

    def __init__(self, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.foreign_s, self.ours_s = interval, 0.0, 0.0
        self._tick = os.sysconf("SC_CLK_TCK")
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, int], int] = {}
        self._boot_ticks = self._now_ticks()
        self._sample(first=True)

    def _now_ticks(self) -> int:
        with open("/proc/uptime") as f:
            return int(float(f.read().split()[0]) * self._tick)

    def _sample(self, first: bool = False) -> None:
        with self._lock:
            self._sample_locked(first)

    def _sample_locked(self, first: bool) -> None:
        procs = process_table()
        children: dict[int, list[int]] = {}
        for pid, (_, ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        ours, todo = set(), [os.getpid()]
        while todo:
            pid = todo.pop()
            ours.add(pid)
            todo += children.get(pid, [])
        foreign = mine = 0
        seen = {}
        for pid, (_, _, cpu, started) in procs.items():
            key = (pid, started)
            before = self._seen.get(key, 0 if started >= self._boot_ticks else cpu)
            seen[key] = cpu
            if first:
                continue
            if pid in ours:
                mine += cpu - before
            else:
                foreign += cpu - before
        self._seen = seen
        self.foreign_s += foreign / self._tick
        self.ours_s += mine / self._tick

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._sample()

    def read(self) -> float:
        """CPU seconds other processes used since the start."""
        self._sample()
        return self.foreign_s

    def ours(self) -> float:
        """CPU seconds this bench's process tree used since the start (whole intervals of processes
        that ended between two samples may be missed: read it around windows where none end)."""
        self._sample()
        return self.ours_s

    def stop(self) -> None:
        self._halt.set()


# -- the lock other sessions' tests wait for while a benchmark times ------------------------------


class BenchLock:
    """/tmp/deepgrid-bench.lock, held while contenders run, never longer than ``max_hold_s`` plus one
    contender: past that, it is let go for ``pause_s`` (so a waiting test run gets its turn)."""

    def __init__(self, owner: str, max_hold_s: float = 200.0, pause_s: float = 30.0) -> None:
        self.owner, self.max_hold_s, self.pause_s = owner, max_hold_s, pause_s
        self.since: float | None = None  # when this process took the lock; None: not holding it
        self.passed_over: str | None = None  # a stale holder's line, once said

    def acquire(self) -> None:
        said = False
        while True:
            try:
                fd = os.open(LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, age = self._holder()
                if holder_gone(holder):  # its process ended without letting go: take it over
                    print(f"... {LOCK} was left behind by an ended process ({holder}): taking it over",
                          file=sys.stderr, flush=True)
                    LOCK.unlink(missing_ok=True)
                    continue
                if age > STALE_LOCK_S:  # twice the 5 minutes anyone may hold it: left behind or hung
                    if self.passed_over != holder:
                        print(f"... {LOCK} has been held for {age / 60:.0f} min ({holder}), past any turn: "
                              "timing without it", file=sys.stderr, flush=True)
                        self.passed_over = holder
                    return
                if not said:
                    print(f"... {LOCK} is held ({holder}): another benchmark is timing; waiting", file=sys.stderr,
                          flush=True)
                    said = True
                time.sleep(5)
                continue
            os.write(fd, f"{os.getpid()} {self.owner}\n".encode())
            os.close(fd)
            self.since = time.monotonic()
            return

    @staticmethod
    def _holder() -> tuple[str, float]:
        """What the lock file says, and its age in seconds (0 if it was let go of meanwhile)."""
        try:
            return LOCK.read_text().strip() or "?", time.time() - LOCK.stat().st_mtime
        except OSError:
            return "?", 0.0

    def release(self) -> None:
        if self.since is not None:
            LOCK.unlink(missing_ok=True)
            self.since = None

    def __enter__(self) -> BenchLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def before_contender(self) -> None:
        """Call before each timed piece: takes the lock, or lets it go for a while if held long."""
        if self.since is not None and time.monotonic() - self.since > self.max_hold_s:
            self.release()
            print(f"... let go of {LOCK} for {self.pause_s:.0f} s", file=sys.stderr, flush=True)
            time.sleep(self.pause_s)
        if self.since is None:
            self.acquire()


def holder_gone(holder: str) -> bool:
    """True when the lock's line starts with a process id that no longer runs on this machine."""
    first = holder.split()[0] if holder.split() else ""
    if not first.isdigit():
        return False
    try:
        os.kill(int(first), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, as another user
        return False
    return False


# -- the network, the data order, one epoch ---------------------------------------------------------


def build_mlp(seed: int = SEED) -> nn.Sequential:
    """784-256-128-10 with relu, Xavier-uniform weights and zero biases after torch.manual_seed(seed):
    the same calls in the same order as deepgrid's MLP.build, hence the same initial weights as
    deepgrid's with network seed ``seed``."""
    torch.manual_seed(seed)
    sizes = (N_IN, *HIDDEN)
    layers: list[nn.Module] = []
    for i in range(len(HIDDEN)):
        layers += [_init(nn.Linear(sizes[i], sizes[i + 1])), nn.ReLU()]
    layers.append(_init(nn.Linear(sizes[-1], N_OUT)))
    return nn.Sequential(*layers)


def _init(layer: nn.Linear) -> nn.Linear:
    with torch.no_grad():
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return layer


def initial_params_match(seed: int = SEED) -> bool:
    """build_mlp(seed) and deepgrid's MLP with network seed ``seed`` start from the very same weights
    (and order their parameters the same way, so a deepgrid flat vector loads into build_mlp())."""
    from deepgrid.config.network import NeuralNetConfiguration
    from deepgrid.models.mlp import MLP

    ours = torch.cat([p.detach().reshape(-1) for p in build_mlp(seed).parameters()]).numpy()
    theirs = MLP(NeuralNetConfiguration(hidden_layer_sizes=HIDDEN, activation="relu", seed=seed)).get_flat_params()
    return ours.shape == theirs.shape and bool(np.array_equal(ours, theirs))


def epoch_permutation(n: int, epoch: int, seed: int = SEED) -> torch.Tensor:
    """The same permutation deepgrid's ArrayDataset.batch_order draws for (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def epoch_batches(n: int, epoch: int, rank: int = 0, world: int = 1, seed: int = SEED) -> torch.Tensor:
    """(n_batches, BATCH) example indices of this rank's batches of ``epoch``."""
    perm = epoch_permutation(n, epoch, seed)
    if world > 1:  # DistributedSampler(shuffle=True, drop_last=True): rank r takes perm[r::world]
        perm = perm[rank : (n // world) * world : world]
    nb = len(perm) // BATCH
    return perm[: nb * BATCH].view(nb, BATCH)


def train_epoch(module: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batches: torch.Tensor, sleep_s: float = 0.0) -> tuple[int, float]:
    """One epoch of plain SGD over ``batches``; returns (samples, mean loss). ``sleep_s`` per batch
    makes a straggler (bench_strategies.py --stragglers)."""
    module.train()
    total = torch.zeros(())
    for idx in batches:
        if sleep_s:
            time.sleep(sleep_s)
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(module(xb), yb)
        loss.backward()
        opt.step()
        total += loss.detach() * len(idx)
    n = batches.numel()
    return n, float(total) / max(n, 1)


def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    module.eval()
    with torch.no_grad():
        pred = torch.cat([module(chunk).argmax(1) for chunk in x.split(8192)])
    return float((pred == y).float().mean())


def load_data(limit: int | None) -> tuple[Any, Any]:
    """(train, test) deepgrid ArrayDatasets; ``limit`` keeps the first ``limit`` training examples."""
    from deepgrid.config.conf import Conf
    from deepgrid.data.mnist import load_splits

    return load_splits(Conf(model="mlp", data_dir=DATA_DIR, train_limit=limit))


def quiet_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def deepgrid_conf(workers: int, k: int, epochs: int, job_name: str, seed: int = SEED, **more: Any) -> Any:
    """deepgrid's Conf for the competitors' job: the same network, optimizer and batch (and, with
    ``seed``, the same initial weights and shuffles as build_mlp(seed) and epoch_batches(..., seed))."""
    from deepgrid.config.conf import Conf

    return Conf(model="mlp", workers=workers, threads_per_worker=1,
                network=dict(hidden_layer_sizes=list(HIDDEN), activation="relu", finetune_lr=LR,
                             momentum=MOMENTUM, optimizer="sgd", seed=seed),
                batch_size=BATCH, epochs=epochs, averaging_frequency=k, job_name=job_name, **more)


# -- the loop every DDP / Ray Train rank runs --------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a DDP or Ray Train rank does besides training ``epochs`` epochs."""

    epochs: int
    # Test accuracy this many times per epoch, measured by rank 0 after training on copies of the
    # parameters taken then (0: once, at the end).
    evals_per_epoch: int = 0
    t0: float = 0.0  # time.monotonic() when the contender started: curve times count from it
    slow_rank: int = -1  # this rank sleeps ``sleep_s`` before each batch (a straggler)
    sleep_s: float = 0.0
    seed: int = SEED  # the initial weights' and the epochs' shuffles (deepgrid's network seed)


class Snapshots:
    """Copies of the parameters taken along the way, with when they were taken, tested at the end.

    Testing later keeps the measuring off the training's clock and out of its way (a copy of the
    MLP's 235,146 parameters takes about 0.1 ms; testing them on 10,000 images about 50 ms, time the
    other workers of a run without barrier would go on training in). The copies' own time is taken
    off the clock as well.
    """

    def __init__(self, t0: float) -> None:
        self.t0, self.taken_s = t0, 0.0
        self.taken: list[tuple[float, int, torch.Tensor]] = []

    def take(self, samples: int, params: Any) -> None:
        """``params``: the module's parameters, or a flat vector (numpy or torch)."""
        at = time.monotonic() - self.t0 - self.taken_s
        started = time.perf_counter()
        if isinstance(params, np.ndarray):
            flat = torch.from_numpy(np.array(params, dtype=np.float32))
        elif isinstance(params, torch.Tensor):
            flat = params.detach().clone()
        else:
            flat = nn.utils.parameters_to_vector(params).detach().clone()
        self.taken.append((at, samples, flat))
        self.taken_s += time.perf_counter() - started

    @property
    def last_samples(self) -> int | None:
        return self.taken[-1][1] if self.taken else None

    def curve(self, x: torch.Tensor, y: torch.Tensor) -> list[list[float]]:
        """[seconds since t0 without the copies' time, samples, test accuracy] per copy."""
        module = build_mlp()
        out = []
        for at, samples, flat in self.taken:
            nn.utils.vector_to_parameters(flat, module.parameters())
            out.append([round(at, 3), samples, accuracy(module, x, y)])
        return out


def rank_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, test: Any, rank: int, world: int,
              plan: Plan) -> dict[str, Any]:
    """Train ``plan.epochs`` epochs of this rank's shard with SGD. Returns the totals over all ranks
    (samples, the slowest rank's seconds, CPU seconds) and, on rank 0, the test accuracy and the
    curve (``Snapshots.curve``). ``test``: a function that gives the test set's (x, y), called on
    rank 0 after training."""
    import torch.distributed as dist

    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    module = getattr(model, "module", model)
    if dist.is_initialized():
        dist.barrier()
    cpu0, start = time.process_time(), time.perf_counter()
    samples, snapshots = 0, Snapshots(plan.t0)
    sleep_s = plan.sleep_s if rank == plan.slow_rank else 0.0
    for epoch in range(plan.epochs):
        for chunk in epoch_batches(len(x), epoch, rank, world, plan.seed).tensor_split(max(plan.evals_per_epoch, 1)):
            n, _ = train_epoch(model, opt, x, y, chunk, sleep_s)
            samples += n
            if plan.evals_per_epoch and rank == 0:
                snapshots.take(samples * world, module.parameters())
    # The other ranks wait for rank 0 while it copies: take that off everyone's clock.
    totals = torch.tensor([float(samples), time.perf_counter() - start, time.process_time() - cpu0,
                           snapshots.taken_s], dtype=torch.float64)
    sums = totals.clone()
    if dist.is_initialized():
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        dist.all_reduce(totals, op=dist.ReduceOp.MAX)
    out: dict[str, Any] = {"samples": int(sums[0]), "seconds": float(totals[1] - totals[3]),
                           "cpu": float(sums[2] - sums[3]), "rank": rank}
    if rank == 0:
        tx, ty = test()
        curve = snapshots.curve(tx, ty)
        out["accuracy"] = curve[-1][2] if curve else accuracy(module, tx, ty)
        out["curve"] = curve
    return out


# -- PyTorch DDP ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_process(rank: int, world: int, port: int, limit: int | None, plan: Plan, out_path: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train, test = load_data(limit)
        out = rank_loop(DistributedDataParallel(build_mlp(plan.seed)), train.x, train.y, lambda: (test.x, test.y), rank,
                        world, plan)
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(out, f)
        # No rank tears gloo down while another still works (rank 0 tests its copies before writing):
        # a rank that did so aborted twice on 2026-11-30 ("terminate called without an active
        # exception"), and mp.spawn then killed rank 0 before it had written the run's results.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ddp(limit: int | None, plan: Plan, world: int = 2) -> tuple[dict[str, Any], float]:
    """DDP, gloo, ``world`` spawned processes of 1 thread: (rank 0's rank_loop result, wall seconds from
    the spawn to its return)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "ddp.json")
        start = time.perf_counter()
        try:
            mp.spawn(_ddp_process, args=(world, free_port(), limit, plan, out_path), nprocs=world, join=True)
        except mp.ProcessExitedException as e:
            # A rank that aborts as gloo is torn down ("terminate called without an active exception",
            # seen on 2026-11-30) after rank 0 wrote its results: those come after the last all-reduce,
            # so every rank had trained to the end. Keep them, and say so.
            if not os.path.exists(out_path):
                raise
            print(f"DDP: {e} after training to the end (its results were written); kept", file=sys.stderr)
        wall = time.perf_counter() - start
        with open(out_path) as f:
            return json.load(f), wall


# -- Ray Train --------------------------------------------------------------------------------------


def _ray_train_loop(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    refs = config["refs"]

    def arrays(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with warnings.catch_warnings():  # zero-copy read-only views of the object store; we only read them
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(ray.get(a)), torch.from_numpy(ray.get(b))

    x, y = arrays(refs[0], refs[1])
    plan = Plan(**config["plan"])
    model = ray.train.torch.prepare_model(build_mlp(plan.seed))
    metrics = rank_loop(model, x, y, lambda: arrays(refs[2], refs[3]), rank, world, plan)
    if rank != 0:
        ray.train.report(metrics)  # every worker must report, as often as rank 0
        return
    # Ray Train v2 keeps a run's metrics only with a checkpoint (Result.metrics is None otherwise):
    # rank 0 reports a tiny one holding just the metrics.
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(metrics, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def run_ray_train(train: Any, test: Any, plan: Plan, world: int = 2,
                  name: str = "bench") -> tuple[dict[str, Any], float]:
    """Ray Train TorchTrainer, ``world`` workers of 1 CPU: (rank 0's rank_loop result, wall seconds from
    ray.init to after ray.shutdown)."""
    import ray
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray's workers cannot import this module (bench/ is not on their path): ship it with the loop.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    quiet_ray()
    with tempfile.TemporaryDirectory() as storage:
        start = time.perf_counter()
        ray.init(address="local", num_cpus=world, include_dashboard=False, logging_level="WARNING")
        try:
            refs = [ray.put(a.numpy()) for a in (train.x, train.y, test.x, test.y)]
            trainer = TorchTrainer(
                _ray_train_loop,
                train_loop_config={"refs": refs, "plan": asdict(plan)},
                scaling_config=ScalingConfig(num_workers=world, use_gpu=False, resources_per_worker={"CPU": 1}),
                run_config=RunConfig(name=name, storage_path=storage),
            )
            result = trainer.fit()
        finally:
            ray.shutdown()
        wall = time.perf_counter() - start
    if result.error:
        raise RuntimeError(f"Ray Train failed: {result.error}")
    if not result.metrics:
        raise RuntimeError("Ray Train's Result carries no metrics")
    return result.metrics, wall
