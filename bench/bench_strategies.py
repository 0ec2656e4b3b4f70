"""deepgrid's training strategies beside PyTorch DDP and Ray Train: time to accuracy, stragglers, scale.

All contenders run side by side in one invocation, on the job of bench_distributed.py (see
common.py): MLP 784-256-128-10 relu, SGD lr 0.05 momentum 0.9, batch 64 per worker, Fashion-MNIST
from Debian's files, the same initial weights and per-epoch shuffle for everyone.

Parts (the first runs when no part is named):

  --tta         time to accuracy: each deepgrid strategy with 1 and 2 workers, DDP (gloo, 2
                processes) and Ray Train (TorchTrainer, 2 workers), E epochs (--epochs, 10).
                The parameters are copied --evals-per-epoch times per epoch (deepgrid: from
                ``runner.on_round`` once that many more samples have trained) and tested on the
                10,000 held-out images after the run, off the clock. Reports the wall time to
                --targets (0.86 and 0.88) since the contender's start (start-up included, the copies' time
                subtracted), samples/s and the test accuracy after E epochs;
                writes a markdown table and a PNG of accuracy against wall time to --out-dir.
                --seeds S1,S2,...: every contender once per seed, and a table of the medians
                over seeds of the times to the targets (one seed's curve near 0.88, where this
                job levels off, crosses it epochs earlier or later with the floats' rounding).
  --stragglers  one of 2 workers 3x slower (it sleeps twice a mini-batch's one-thread time, measured
                at the start, per mini-batch): deepgrid ``average`` (pulled jobs) and ``async``, and DDP with one slow
                rank; throughput slowed / unslowed.
  --scale       8, 16, 32 deepgrid worker actors on this machine (Ray given that many logical
                CPUs): the master's time per round and its share of the round.

    .venv/bin/python bench/bench_strategies.py                       # time to accuracy, 10 epochs
    .venv/bin/python bench/bench_strategies.py --strategies average,async --stragglers --scale
    .venv/bin/python bench/bench_strategies.py --quick --tta --stragglers --scale   # smoke run
    .venv/bin/python bench/bench_strategies.py --tta --workers 2 --strategies average,async --seeds 123,1,2,3,4 --skip-ray-train

While it times, it holds /tmp/deepgrid-bench.lock (other sessions' tests wait for it), at most
about 4 minutes at a time: between contenders it lets go for 30 s.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
import torch
from common import BATCH, LR, MOMENTUM, BenchLock, ForeignCpu, Plan

from deepgrid.models.mlp import MLP

ROOT = Path(__file__).resolve().parent.parent
ALL_STRATEGIES = ("average", "async", "allreduce", "sharing")
QUICK_LIMIT = 10_000


# -- one contender's run -----------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    curve: list[list[float]] = field(default_factory=list)  # [s since start, samples, test acc]
    samples: int = 0
    train_s: float | None = None  # the training loop, the copies' time subtracted
    wall_s: float | None = None  # start to end, start-up and shutdown included
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    others_cpu: float | None = None  # CPUs other people's processes used meanwhile (of os.cpu_count())
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def samples_per_s(self) -> float | None:
        return self.samples / self.train_s if self.train_s else None

    @property
    def final_acc(self) -> float | None:
        return self.curve[-1][2] if self.curve else None

    @property
    def best_acc(self) -> float | None:
        return max(p[2] for p in self.curve) if self.curve else None

    @property
    def startup_s(self) -> float | None:
        """Start to the training loop: the curve's end less the training time."""
        return self.curve[-1][0] - self.train_s if self.curve and self.train_s else None

    def time_to(self, target: float) -> float | None:
        return next((p[0] for p in self.curve if p[2] >= target), None)

    def epochs_to(self, target: float, epoch_samples: int) -> float | None:
        return next((p[1] / epoch_samples for p in self.curve if p[2] >= target), None)


class EverySamples:
    """deepgrid's parameters copied (``common.Snapshots``) from ``runner.on_round`` each time another
    ``every`` samples have trained; tested after the run."""

    def __init__(self, every: float, t0: float) -> None:
        self.every, self.next_at = every, every
        self.snapshots = common.Snapshots(t0)

    def __call__(self, runner: Any) -> None:
        if runner.samples_trained >= self.next_at:
            self.snapshots.take(runner.samples_trained, runner.params)
            while self.next_at <= runner.samples_trained:
                self.next_at += self.every


def run_deepgrid(train: Any, test: Any, strategy: str, workers: int, epochs: int, k: int, evals_per_epoch: int,
                 factory: Callable[[], Any] | None = None, seed: int = common.SEED,
                 extra: dict[str, Any] | None = None) -> Run:
    from deepgrid.distributed.runner import ActorNetworkRunner

    common.quiet_ray()  # deepgrid starts (and stops) its own local Ray
    conf = common.deepgrid_conf(workers, k, epochs, "bench-strategies", seed=seed, strategy=strategy, **(extra or {}))
    t0 = time.monotonic()
    marks = EverySamples(len(train) / evals_per_epoch if evals_per_epoch else float("inf"), t0)
    runner = ActorNetworkRunner("master", train, model_factory=factory)
    runner.on_round = marks
    try:
        runner.setup(conf)
        runner.train()
        if marks.snapshots.last_samples != runner.samples_trained:
            marks.snapshots.take(runner.samples_trained, runner.params)
    finally:
        runner.shutdown()
    wall = time.monotonic() - t0
    run = Run(f"deepgrid {strategy}, {workers} worker{'s' if workers > 1 else ''}",
              marks.snapshots.curve(test.x, test.y), runner.samples_trained,
              runner.train_seconds - marks.snapshots.taken_s, wall)
    run.extra.update(rounds=runner.round, jobs_by_worker=jobs_by_worker(runner.history),
                     job_s_by_worker=job_seconds(runner.history))
    return run


def job_seconds(history: list[dict[str, Any]]) -> dict[str, float]:
    """Each worker's mean seconds per job (as the worker timed it)."""
    seconds: dict[str, list[float]] = {}
    for entry in history:
        seconds.setdefault(entry["worker_id"], []).append(entry["seconds"])
    return {w: round(sum(v) / len(v), 4) for w, v in seconds.items()}


def jobs_by_worker(history: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in history:
        counts[entry["worker_id"]] = counts.get(entry["worker_id"], 0) + 1
    return counts


def run_ddp(limit: int | None, epochs: int, evals_per_epoch: int, slow_rank: int = -1, sleep_s: float = 0.0,
            seed: int = common.SEED) -> Run:
    t0 = time.monotonic()
    r, _ = common.run_ddp(limit, Plan(epochs, evals_per_epoch, t0, slow_rank, sleep_s, seed))
    return Run("PyTorch DDP gloo, 2 processes", r["curve"] or [[0.0, r["samples"], r["accuracy"]]], r["samples"],
               r["seconds"], time.monotonic() - t0)


def run_ray_train(train: Any, test: Any, epochs: int, evals_per_epoch: int, seed: int = common.SEED) -> Run:
    t0 = time.monotonic()
    m, _ = common.run_ray_train(train, test, Plan(epochs, evals_per_epoch, t0, seed=seed), name="bench-strategies")
    return Run("Ray Train TorchTrainer, 2 workers", m["curve"], m["samples"], m["seconds"], time.monotonic() - t0)


class Bench:
    """Runs contenders one at a time under the lock, noting the load and other people's CPU use."""

    def __init__(self, lock: BenchLock, monitor: ForeignCpu) -> None:
        self.lock, self.monitor = lock, monitor

    def run(self, name: str, fn: Callable[..., Run], *args: Any, **kwargs: Any) -> Run:
        self.lock.before_contender()
        print(f"... running {name}", file=sys.stderr, flush=True)
        load0, t0, f0 = os.getloadavg()[0], time.perf_counter(), self.monitor.read()
        try:
            run = fn(*args, **kwargs)
        except Exception as e:  # a contender that cannot run is reported, not hidden
            text = str(e).strip()
            run = Run(name, error=f"{type(e).__name__}: {text.splitlines()[-1][:200] if text else ''}")
        run.name = name
        run.load = (round(load0, 2), round(os.getloadavg()[0], 2))
        run.others_cpu = round((self.monitor.read() - f0) / (time.perf_counter() - t0), 2)
        return run


# -- part 1: time to accuracy ----------------------------------------------------------------------


def part_tta(bench: Bench, args: argparse.Namespace, strategies: list[str], train: Any, test: Any) -> list[Run]:
    """Every contender once per seed (``--seeds``): a seed sets everyone's initial weights and shuffles.
    With several seeds each run's name ends in its seed, and ``by_contender`` gathers them again."""
    runs = []
    for seed in args.seeds:
        tag = f", seed {seed}" if len(args.seeds) > 1 else ""
        for strategy in strategies:
            for workers in args.workers:
                settings = "".join(f", {key}={value}" for key, value in args.conf.items())
                name = f"deepgrid {strategy}, {workers} worker{'s' if workers > 1 else ''}{settings}{tag}"
                runs.append(bench.run(name, run_deepgrid, train, test, strategy, workers, args.epochs, args.k,
                                      args.evals_per_epoch, seed=seed, extra=args.conf))
        if not args.skip_ddp:
            runs.append(bench.run(f"PyTorch DDP gloo, 2 processes{tag}", run_ddp, args.train_limit, args.epochs,
                                  args.evals_per_epoch, seed=seed))
        if not args.skip_ray_train:
            runs.append(bench.run(f"Ray Train TorchTrainer, 2 workers{tag}", run_ray_train, train, test, args.epochs,
                                  args.evals_per_epoch, seed=seed))
    return runs


def seed_of(run: Run) -> str:
    """The seed a run's name ends in ("" with one seed)."""
    return run.name.partition(", seed ")[2]


def by_contender(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by contender, the seed left out of the name."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.name.partition(", seed ")[0], []).append(r)
    return groups


def median_time_to(runs: list[Run], target: float) -> float | None:
    """The median over seeds of the time to ``target``, a run that never reached it counting as
    slower than any that did (None when that is the median): a seed that misses is not dropped."""
    times = [t if (t := r.time_to(target)) is not None else float("inf") for r in runs if not r.error]
    value = statistics.median(times) if times else float("inf")
    return None if value == float("inf") else value


def seeds_table(runs: list[Run], targets: list[float]) -> str:
    """Per contender: the median over seeds of the time to each target, each seed's time, and the
    median's ratio to DDP's and Ray Train's medians."""
    groups = by_contender(runs)
    bases = {label: groups.get(name) for label, name in (("DDP", "PyTorch DDP gloo, 2 processes"),
                                                       ("Ray Train", "Ray Train TorchTrainer, 2 workers"))}
    head = "| contender | " + " | ".join(f"median time to {t} s | each seed | / DDP | / Ray Train" for t in targets)
    lines = [head + " |", "| --- |" + " ---: | --- | ---: | ---: |" * len(targets)]
    for name, group in groups.items():
        cells = []
        for t in targets:
            median = median_time_to(group, t)
            each = ", ".join("-" if r.error or r.time_to(t) is None else f"{r.time_to(t):.1f}" for r in group)
            cells += [fmt(median, ".1f") if median is not None else "not reached", each]
            for label in ("DDP", "Ray Train"):
                base = median_time_to(bases[label], t) if bases[label] else None
                cells.append(fmt(median / base if median and base else None, ".3f"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tta_table(runs: list[Run], targets: list[float], epochs: int, epoch_samples: int) -> str:
    head = ("| contender | " + " | ".join(f"time to {t} s (epochs)" for t in targets)
            + f" | samples/s | test acc after {epochs} epochs | best acc | start-up s | wall s | load before/after "
            "| others' CPUs |")
    lines = [head, "| --- |" + " ---: |" * (len(targets) + 5) + " --- | ---: |"]
    for r in runs:
        if r.error:
            lines.append(f"| {r.name} | {r.error} |" + " |" * (len(targets) + 4)
                         + f" {r.load[0]}/{r.load[1]} | {r.others_cpu} |")
            continue
        cells = []
        for target in targets:
            reached = r.time_to(target)
            cells.append("not reached" if reached is None
                         else f"{reached:.1f} ({fmt(r.epochs_to(target, epoch_samples), '.2f')})")
        lines.append(
            f"| {r.name} | {' | '.join(cells)} | {fmt(r.samples_per_s, ',.0f')} "
            f"| {fmt(r.final_acc, '.4f')} | {fmt(r.best_acc, '.4f')} | {fmt(r.startup_s, '.1f')} "
            f"| {fmt(r.wall_s, '.1f')} | {r.load[0]}/{r.load[1]} | {r.others_cpu} |")
    return "\n".join(lines)


def tta_ratios(runs: list[Run], targets: list[float]) -> str:
    """Each deepgrid contender against DDP and Ray Train: time to each target (below 1: sooner) and
    samples/s (above 1: faster)."""
    def same_seed(label: str, prefix: str, seed_tag: str) -> tuple[str, Run | None]:  # the run of the same seed
        return label, next((r for r in runs if r.name.startswith(prefix) and seed_of(r) == seed_tag and not r.error),
                           None)

    columns: list[tuple[str, Callable[[Run], float | None]]] = [
        (f"time to {t}", functools.partial(Run.time_to, target=t)) for t in targets]
    columns.append(("samples/s", lambda r: r.samples_per_s))
    labels = ("DDP", "Ray Train")
    lines = ["| contender | " + " | ".join(f"{name} / {label}" for name, _ in columns for label in labels) + " |",
             "| --- |" + " ---: |" * (len(columns) * len(labels))]
    for r in runs:
        if not r.name.startswith("deepgrid") or r.error:
            continue
        bases = [same_seed("DDP", "PyTorch DDP", seed_of(r)), same_seed("Ray Train", "Ray Train", seed_of(r))]
        cells = []
        for _, value in columns:
            for _, base in bases:
                a_v, b_v = value(r), (value(base) if base else None)
                cells.append(fmt(a_v / b_v if a_v and b_v else None, ".2f"))
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[Run], targets: list[float], path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (.venv/bin/pip install matplotlib, or the project's [bench] extras): "
              "no plot", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(r for r in runs if r.curve):
        one = "1 worker" in r.name  # deepgrid with one worker: dashed, so the 2-worker lines stand out
        ax.plot([p[0] for p in r.curve], [p[2] for p in r.curve], marker=".", markersize=4, linewidth=1.2,
                linestyle="--" if one else "-", color=colors[i % len(colors)], label=r.name)
    for target in targets:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wall time since the contender started, s (start-up included)")
    ax.set_ylabel("test accuracy (10,000 held-out images)")
    ax.set_ylim(0.78, 0.895)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("MLP 784-256-128-10 on Fashion-MNIST, batch 64 per worker, SGD 0.05 / 0.9")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- part 2: stragglers ------------------------------------------------------------------------------


class SlowMLP(MLP):
    """An MLP that sleeps ``sleep_s`` per mini-batch before training a job: a slower machine."""

    sleep_s = 0.0

    def train_step(self, phase: str, batches: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        time.sleep(self.sleep_s * len(batches))
        return super().train_step(phase, batches, *args, **kwargs)


def one_slow_worker(network: dict[str, Any], sleep_s: float, claim: str, master_pid: int) -> MLP:
    """The worker factory: the first worker actor to build its model (the file ``claim`` decides) is slow."""
    from deepgrid.config.network import NeuralNetConfiguration

    conf = NeuralNetConfiguration.from_dict(network)
    if os.getpid() == master_pid:  # the master's own model never trains
        return MLP(conf)
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return MLP(conf)
    model = SlowMLP(conf)
    model.sleep_s = sleep_s
    return model


def batch_seconds(train: Any, n: int = 300) -> float:
    """A mini-batch's time in one thread, SGD step included (the best of 3 tries of ``n`` batches)."""
    torch.set_num_threads(1)
    module = common.build_mlp()
    opt = torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)
    batches = common.epoch_batches(len(train), 0)[:n]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        common.train_epoch(module, opt, train.x, train.y, batches)
        best = min(best, (time.perf_counter() - started) / len(batches))
    return best


def part_stragglers(bench: Bench, args: argparse.Namespace, strategies: list[str], train: Any,
                    test: Any) -> list[dict[str, Any]]:
    bench.lock.before_contender()
    per_batch = batch_seconds(train)
    sleep_s = (args.slowdown - 1) * per_batch
    print(f"stragglers: a batch takes {per_batch * 1e3:.2f} ms in one thread; the slow worker sleeps "
          f"{sleep_s * 1e3:.2f} ms per batch ({args.slowdown:g}x)")
    epochs = args.straggler_epochs
    network = common.deepgrid_conf(2, args.k, epochs, "x").network.to_dict()
    rows = []
    for strategy in [s for s in ("average", "async") if s in strategies]:
        plain = bench.run(f"deepgrid {strategy}, 2 workers", run_deepgrid, train, test, strategy, 2, epochs, args.k, 0)
        with tempfile.TemporaryDirectory() as tmp:
            factory = functools.partial(one_slow_worker, network, sleep_s, os.path.join(tmp, "slow"), os.getpid())
            slow = bench.run(f"deepgrid {strategy}, 2 workers, one slow", run_deepgrid, train, test, strategy, 2,
                             epochs, args.k, 0, factory)
        rows.append(straggler_row(f"deepgrid {strategy}" + (" (pulled jobs)" if strategy == "average" else ""),
                                  plain, slow, 0.8))
    if not args.skip_ddp:
        plain = bench.run("DDP, 2 processes", run_ddp, args.train_limit, epochs, 0)
        slow = bench.run("DDP, 2 processes, rank 1 slow", run_ddp, args.train_limit, epochs, 0, 1, sleep_s)
        rows.append(straggler_row("PyTorch DDP gloo", plain, slow, None))
        if plain.train_s:
            # A DDP step is mostly the all-reduce's round trip, so the same sleep slows it less than 3x:
            # also slow rank 1 by (slowdown - 1) of DDP's own step.
            own = (args.slowdown - 1) * plain.train_s / (plain.samples / 2 / BATCH)
            slow = bench.run("DDP, 2 processes, rank 1 slow (own step)", run_ddp, args.train_limit, epochs, 0, 1, own)
            rows.append(straggler_row(f"PyTorch DDP gloo, rank 1 {args.slowdown:g}x its own step "
                                      f"({own * 1e3:.1f} ms a batch)", plain, slow, None))
    return rows


def straggler_row(name: str, plain: Run, slow: Run, target: float | None) -> dict[str, Any]:
    ratio = (slow.samples_per_s / plain.samples_per_s
             if plain.samples_per_s and slow.samples_per_s else None)
    return {"name": name, "unslowed": plain.samples_per_s, "slowed": slow.samples_per_s, "ratio": ratio,
            "target": target, "acc_unslowed": plain.final_acc, "acc_slowed": slow.final_acc,
            "jobs_slowed_run": slow.extra.get("jobs_by_worker"), "job_s_slowed_run": slow.extra.get("job_s_by_worker"),
            "errors": [r.error for r in (plain, slow) if r.error],
            "load": [plain.load, slow.load], "others_cpu": [plain.others_cpu, slow.others_cpu]}


def straggler_table(rows: list[dict[str, Any]], slowdown: float) -> str:
    ideal = (1 + 1 / slowdown) / 2
    lines = ["| contender | samples/s unslowed | one worker slowed | slowed / unslowed | of the ideal "
             f"{ideal:.3f} | target | test acc unslowed / slowed | jobs per worker (slowed run) | a slow job / a fast "
             "one | load | others' CPUs |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | --- | --- |"]
    for r in rows:
        verdict = "" if r["target"] is None or r["ratio"] is None else (
            f">= {r['target']}: {'pass' if r['ratio'] >= r['target'] else '**miss**'}")
        jobs, job_s = r["jobs_slowed_run"], r.get("job_s_slowed_run")
        # How much slower the slow worker's jobs really ran (the fast one runs faster while it sleeps).
        slower = max(job_s.values()) / min(job_s.values()) if job_s and len(job_s) > 1 else None
        lines.append(f"| {r['name']} | {fmt(r['unslowed'], ',.0f')} | {fmt(r['slowed'], ',.0f')} "
                     f"| {fmt(r['ratio'], '.3f')} | {fmt(r['ratio'] and r['ratio'] / ideal, '.2f')} | {verdict or '-'} "
                     f"| {fmt(r['acc_unslowed'], '.4f')} / {fmt(r['acc_slowed'], '.4f')} "
                     f"| {', '.join(map(str, sorted(jobs.values()))) if jobs else '-'} | {fmt(slower, '.2f')} "
                     f"| {' , '.join(f'{a}/{b}' for a, b in r['load'])} | {r['others_cpu']} |"
                     + (f" {'; '.join(r['errors'])}" if r["errors"] else ""))
    lines.append(f"\n(The ideal: with 2 workers, one {slowdown:g}x slower, a run that never waits keeps "
                 f"(1 + 1/{slowdown:g}) / 2 = {ideal:.3f} of its throughput when each worker has a core of its "
                 "own; on these 2 shared cores the sleeping worker leaves CPU to the master and Ray, so a little "
                 "more is possible.)")
    return "\n".join(lines)


# -- part 3: scale -------------------------------------------------------------------------------------


class RoundTimes:
    """What each round cost the master: a callback (the round's RoundReport) and ``on_round`` stamps."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float, float]] = []  # (monotonic, master thread CPU, process CPU)
        self.report_s: list[float] = []  # dispatcher's round + combine, from RoundReport.seconds
        self.jobs_s: list[float] = []  # the busiest worker's job seconds in the round
        self.jobs: list[int] = []
        self.combine_s: list[float] = []

    def mark(self) -> None:
        self.stamps.append((time.monotonic(), time.thread_time(), time.process_time()))

    def on_round_end(self, master: Any, report: Any) -> None:
        per_worker: dict[str, float] = {}
        for r in report.results:
            per_worker[r.worker_id] = per_worker.get(r.worker_id, 0.0) + r.seconds
        self.report_s.append(report.seconds)
        self.jobs_s.append(max(per_worker.values(), default=0.0))
        self.jobs.append(len(report.results))

    def timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.combine_s.append(time.perf_counter() - started)
        return wrapper


def run_scale(train: Any, test: Any, workers: int, k: int, epochs: int, strategy: str) -> Run:
    from deepgrid.distributed import engine
    from deepgrid.distributed.runner import ActorNetworkRunner

    common.quiet_ray()
    # Ray's CPUs are a count it schedules by, not cores: giving it `workers` of them on 2 cores places
    # one actor (num_cpus 1, threads_per_worker 1) per logical CPU, as fractional num_cpus would.
    t0 = time.monotonic()
    # Ray would also start one idle worker process per (logical) CPU ahead of need: 32 more Python
    # processes importing on 2 cores. Fractional num_cpus would start 2; start none.
    prestart = {"RAY_prestart_worker_first_driver": "0", "RAY_enable_worker_prestart": "0"}
    saved = {name: os.environ.get(name) for name in prestart}
    os.environ.update(prestart)
    try:
        engine.start_local(num_cpus=workers)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    times = RoundTimes()
    runner = ActorNetworkRunner("master", train)
    runner.on_round = lambda r: times.mark()
    try:
        runner.setup(common.deepgrid_conf(workers, k, epochs, "bench-scale", strategy=strategy))
        set_up = time.monotonic() - t0
        runner.callbacks.append(times)
        for method in ("combine", "apply"):  # whichever the strategy uses
            if hasattr(runner.strategy, method):
                setattr(runner.strategy, method, times.timed(getattr(runner.strategy, method)))
        times.mark()
        model = runner.train()
        acc = model.score(test.x, test.y)
    finally:
        runner.shutdown()
        engine.shutdown()
    run = Run(f"deepgrid {strategy}, {workers} workers", [[0.0, runner.samples_trained, acc]],
              runner.samples_trained, runner.train_seconds, time.monotonic() - t0)
    run.extra.update(scale_summary(times, runner.round), setup_s=round(set_up, 1), workers=workers)
    return run


def scale_summary(t: RoundTimes, rounds: int) -> dict[str, Any]:
    wall = [b[0] - a[0] for a, b in zip(t.stamps, t.stamps[1:], strict=False)]
    thread = [b[1] - a[1] for a, b in zip(t.stamps, t.stamps[1:], strict=False)]
    proc = [b[2] - a[2] for a, b in zip(t.stamps, t.stamps[1:], strict=False)]
    total = sum(wall) or float("nan")

    def ms(values: list[float]) -> float:
        return round(1e3 * sum(values) / max(len(values), 1), 2)

    outside = [w - r for w, r in zip(wall, t.report_s, strict=False)]
    return {"rounds": rounds, "jobs_per_round": round(sum(t.jobs) / max(len(t.jobs), 1), 1),
            "round_ms": ms(wall), "busiest_worker_ms": ms(t.jobs_s), "combine_ms": ms(t.combine_s),
            "master_thread_cpu_ms": ms(thread), "master_process_cpu_ms": ms(proc),
            "between_rounds_ms": ms(outside),
            "combine_share": round(sum(t.combine_s) / total, 3), "master_thread_share": round(sum(thread) / total, 3),
            "master_process_share": round(sum(proc) / total, 3),
            "beyond_busiest_share": round(1 - sum(t.jobs_s) / total, 3)}


def part_scale(bench: Bench, args: argparse.Namespace, strategies: list[str], test: Any) -> list[Run]:
    train = common.load_data(args.scale_limit)[0]
    runs = []
    for strategy in [s for s in strategies if s in args.scale_strategies]:
        for n in args.scale_workers:
            runs.append(bench.run(f"deepgrid {strategy}, {n} workers", run_scale, train, test, n, args.scale_k,
                                  args.scale_epochs, strategy))
    return runs


def scale_table(runs: list[Run]) -> str:
    lines = ["| contender | set-up s | rounds | jobs/round | round ms | busiest worker's jobs ms | combine ms "
             "| master thread CPU ms | master process CPU ms | combine share | master thread share "
             "| master process share | round beyond busiest worker | samples/s | test acc | load | others' CPUs |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| --- | ---: |"]
    for r in runs:
        if r.error:
            lines.append(f"| {r.name} | {r.error} |" + " |" * 15)
            continue
        e = r.extra
        lines.append(
            f"| {r.name} | {e['setup_s']} | {e['rounds']} | {e['jobs_per_round']} | {e['round_ms']} "
            f"| {e['busiest_worker_ms']} | {e['combine_ms']} | {e['master_thread_cpu_ms']} "
            f"| {e['master_process_cpu_ms']} | {e['combine_share']:.1%} | {e['master_thread_share']:.1%} "
            f"| {e['master_process_share']:.1%} | {e['beyond_busiest_share']:.1%} | {fmt(r.samples_per_s, ',.0f')} "
            f"| {fmt(r.final_acc, '.4f')} | {r.load[0]}/{r.load[1]} | {r.others_cpu} |")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------------


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tta", action="store_true", help="time to accuracy (the default part)")
    p.add_argument("--stragglers", action="store_true", help="one worker 3x slower: throughput slowed / unslowed")
    p.add_argument("--scale", action="store_true", help="8, 16, 32 worker actors: the master's time per round")
    p.add_argument("--strategies", type=names, default=list(ALL_STRATEGIES),
                   help="deepgrid strategies to run, those deepgrid has (default: average,async,allreduce,sharing)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for time to accuracy (default 10; --quick 2)")
    p.add_argument("--targets", type=floats, default=[0.86, 0.88],
                   help="test accuracies to reach (default 0.86,0.88: 0.88 is near where this job levels off)")
    p.add_argument("--evals-per-epoch", type=int, default=4, help="test accuracy points per epoch (default 4)")
    p.add_argument("--seeds", type=ints, default=[common.SEED],
                   help="time to accuracy once per seed (initial weights and shuffles, the same for every "
                        f"contender), with the medians over seeds (default {common.SEED})")
    p.add_argument("--workers", type=ints, default=[1, 2], help="deepgrid worker counts (default 1,2)")
    p.add_argument("-k", "--averaging-frequency", type=int, default=100, dest="k",
                   help="deepgrid's averaging_frequency (default 100)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training examples (default all 60,000)")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_LIMIT:,} examples, 2 epochs, small scale")
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--skip-ray-train", action="store_true")
    p.add_argument("--slowdown", type=float, default=3.0, help="how much slower the straggler is (default 3)")
    p.add_argument("--straggler-epochs", type=int, default=3)
    p.add_argument("--scale-workers", type=ints, default=None, help="default 8,16,32 (--quick: 4,8)")
    p.add_argument("--scale-strategies", type=names, default=["average"],
                   help="strategies for --scale (default average)")
    p.add_argument("--scale-limit", type=int, default=30_000, help="training examples for --scale (default 30,000)")
    p.add_argument("--scale-k", type=int, default=5, help="averaging_frequency for --scale (default 5)")
    p.add_argument("--scale-epochs", type=int, default=3)
    p.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "bench-strategies",
                   help="where the tables, the plot and the JSON go (default runs/bench-strategies)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="time to accuracy: a Conf field for deepgrid's runs, its value in YAML (e.g. "
                        "reset_momentum=false); repeat for more")
    args = p.parse_args(argv)
    args.conf = dict(conf_field(text, p) for text in args.conf)
    if args.quick:
        args.train_limit = args.train_limit or QUICK_LIMIT
        args.scale_limit = min(args.scale_limit, QUICK_LIMIT)
        args.straggler_epochs = min(args.straggler_epochs, 2)
        args.scale_epochs = min(args.scale_epochs, 2)
    args.epochs = args.epochs or (2 if args.quick else 10)
    args.scale_workers = args.scale_workers or ([4, 8] if args.quick else [8, 16, 32])
    if not (args.tta or args.stragglers or args.scale):
        args.tta = True
    return args


def conf_field(text: str, parser: argparse.ArgumentParser) -> tuple[str, Any]:
    """``KEY=VALUE`` as (key, the YAML value), or the parser's one-line error."""
    import yaml

    from deepgrid.config.conf import Conf

    key, sep, value = text.partition("=")
    if not sep or key not in Conf.__dataclass_fields__:
        parser.error(f"--conf {text!r}: expected KEY=VALUE with KEY a Conf field (e.g. reset_momentum=false)")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    from deepgrid.config.conf import STRATEGIES

    args = parse(argv)
    strategies = []
    for s in args.strategies:
        if s in STRATEGIES:
            strategies.append(s)
        else:
            print(f"strategy {s!r}: not in deepgrid's STRATEGIES {STRATEGIES}: skipped")
    # The master's status file goes under $DEEPGRID_HOME; keep the bench's out of ~/.deepgrid.
    home = tempfile.TemporaryDirectory(prefix="deepgrid-bench-")
    os.environ.setdefault("DEEPGRID_HOME", home.name)
    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    monitor = ForeignCpu()
    monitor.start()
    bench = Bench(BenchLock("bench_strategies.py"), monitor)
    train, test = common.load_data(args.train_limit)
    print(f"bench_strategies: MLP 784-256-128-10 relu, batch {BATCH}/worker, SGD lr {LR} momentum {MOMENTUM}, "
          f"{len(train):,} train / {len(test):,} test examples, strategies {','.join(strategies) or '-'}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          "initial weights identical to deepgrid's MLP: "
          f"{all(common.initial_params_match(seed) for seed in (args.seeds if args.tta else [common.SEED]))}")
    summary: dict[str, Any] = {"bench": "strategies", "strategies": strategies, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    report: list[str] = []
    try:
        if args.tta:
            runs = part_tta(bench, args, strategies, train, test)
            table = tta_table(runs, args.targets, args.epochs, len(train))
            ratios = tta_ratios(runs, args.targets)
            png = plot(runs, args.targets, args.out_dir / "time_to_accuracy.png")
            report += [f"## Time to {' and '.join(map(str, args.targets))} test accuracy, {args.epochs} epochs, "
                       f"{args.evals_per_epoch} test points per epoch", "", table, "", ratios, ""]
            if len(args.seeds) > 1:
                report += [f"## Medians over {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))})", "",
                           seeds_table(runs, args.targets), ""]
            if png:
                report += [f"plot: {png}", ""]
            summary["tta"] = [asdict(r) | {"samples_per_s": r.samples_per_s} for r in runs]
        if args.stragglers:
            rows = part_stragglers(bench, args, strategies, train, test)
            report += [f"## Stragglers: one of 2 workers {args.slowdown:g}x slower, {args.straggler_epochs} epochs",
                       "", straggler_table(rows, args.slowdown), ""]
            summary["stragglers"] = rows
        if args.scale:
            runs = part_scale(bench, args, strategies, test)
            report += [f"## Scale: worker actors on {os.cpu_count()} cores, {args.scale_limit:,} examples, "
                       f"K = {args.scale_k}, {args.scale_epochs} epochs", "", scale_table(runs), ""]
            summary["scale"] = [asdict(r) for r in runs]
    finally:
        bench.lock.release()
        monitor.stop()
        home.cleanup()
    text = "\n".join(report)
    (args.out_dir / "report.md").write_text(text + "\n")
    (args.out_dir / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n" + text)
    print(f"written: {args.out_dir / 'report.md'}, {args.out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
