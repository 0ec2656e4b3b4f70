"""Data larger than memory: a worker's samples/s reading memory-mapped ``.npy`` against in memory.

Writes a generated data set (Gaussian blobs, float32) as ``dataset: npy`` files, then trains
one epoch of it with a ``Worker`` (the distributed worker, no Ray: the part that reads the
data) three ways, alternating, best of ``--repeats``:

* ``memory``: the examples held in memory as a tensor (the object-store path);
* ``mapped-warm``: memory-mapped (``data_feed: files``), the file already in the page cache;
* ``mapped-cold``: memory-mapped, the file dropped from the page cache first
  (``posix_fadvise(DONTNEED)``): every page read from disk, as when the data exceed memory.

With ``--cap-mb`` or ``--headroom-mb`` it runs the setup of tests/integration/test_bigdata.py
instead (root and a memory cgroup needed): each worker is a process of its own in a memory
cgroup, and the table has

* ``memory``: the examples held in memory, no cap (the in-memory path as it is used);
* ``mapped``: memory-mapped, no cap (the page cache holds the whole file after the first pass);
* ``mapped-capped``: memory-mapped under the cap (``--cap-mb``, or the worker's measured
  baseline plus ``--headroom-mb``), the data several times what the cap leaves for them,

each with the peak memory the cgroup charged (RSS and page cache).

    python bench/bench_bigdata.py                    # 200,000 x 256 float32 (205 MB)
    python bench/bench_bigdata.py --rows 50000       # quicker
    python bench/bench_bigdata.py --rows 800000 --headroom-mb 96 --repeats 1   # 819 MB, capped

Prints a table, then one JSON line with every figure. The files are deleted at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BenchLock  # noqa: E402

from deepgrid.config.conf import Conf  # noqa: E402
from deepgrid.distributed.worker import Worker, build_named_model, load_worker_data  # noqa: E402
from deepgrid.state.base import Job  # noqa: E402
from deepgrid.train.loop import jobs  # noqa: E402

N_CLASSES = 4


def write(directory: Path, rows: int, n_in: int) -> None:
    centers = np.random.default_rng(99).normal(size=(N_CLASSES, n_in)).astype(np.float32) * 0.5
    rng = np.random.default_rng(1)
    x = np.lib.format.open_memmap(directory / "train_x.npy", mode="w+", dtype=np.float32, shape=(rows, n_in))
    y = rng.integers(0, N_CLASSES, rows)
    for start in range(0, rows, 50_000):
        part = y[start : start + 50_000]
        x[start : start + len(part)] = centers[part] + rng.normal(size=(len(part), n_in)).astype(np.float32)
    x.flush()
    del x
    np.save(directory / "train_y.npy", y)
    np.save(directory / "test_x.npy", centers[y[:100]])
    np.save(directory / "test_y.npy", y[:100])


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def epoch(worker: Worker, job_size: int) -> tuple[int, float]:
    """Train one epoch job by job, as the master hands it out; (samples, seconds)."""
    order = worker._order("finetune", 0)
    samples, start, started = 0, 0, time.perf_counter()
    for index, job in enumerate(jobs(order, job_size)):
        task = Job("finetune", 0, index, start, start + len(job))
        samples += worker.train(None, dataclasses.asdict(task))["n_samples"]
        start += len(job)
    return samples, time.perf_counter() - started


def make_worker(conf: Conf, mode: str) -> Worker:
    network = conf.network.to_dict()

    def factory() -> Any:
        return build_named_model(conf.model, network)

    if mode == "memory":
        data = load_worker_data(conf.to_dict())
        return Worker("w", factory, data.x.numpy(), data.y.numpy(), batch_size=conf.batch_size)
    return Worker("w", factory, conf.to_dict(), batch_size=conf.batch_size)


# -- capped: each worker a process in a memory cgroup (as tests/integration/test_bigdata.py) --
def memory_cgroup() -> tuple[Path, str]:
    """(a new child cgroup of this process's memory cgroup, its limit file); exits with one line
    where there is none to make (not root, no memory controller)."""
    parent: tuple[Path, str] | None = None
    if os.geteuid() == 0:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):  # v1
                parent = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
                break
            if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").is_file():  # v2
                parent = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
                break
    if parent is None:
        sys.exit("--cap-mb/--headroom-mb need root and a memory cgroup (v1 or v2) to cap a worker in")
    folder = parent[0] / f"deepgrid-bench-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir()
    except OSError as e:
        sys.exit(f"cannot create a memory cgroup under {parent[0]}: {e}")
    if not (folder / parent[1]).exists():
        folder.rmdir()
        sys.exit(f"{folder.parent} has no {parent[1]}: the memory controller is not enabled there")
    return folder, parent[1]


def peak_mb(folder: Path) -> float:
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (folder / name).exists():
            return int((folder / name).read_text()) / (1 << 20)
    return float("nan")


def run_in_cgroup(folder: Path, limit_file: str, cap_bytes: int, conf: Conf, mode: str,
                  threads: int) -> tuple[dict[str, Any] | None, float]:
    """One epoch in a fresh process charged to ``folder`` (capped at ``cap_bytes``); (its JSON line,
    or None if it failed or was killed; the cgroup's peak MB)."""
    # Every run starts with the file on disk only: the last run's page cache stays charged to the
    # cgroup after its process exits, and would count in this run's peak.
    drop_cache(Path(conf.data_dir) / "train_x.npy")
    (folder / limit_file).write_text(str(cap_bytes))
    if (folder / "memory.max_usage_in_bytes").exists():
        (folder / "memory.max_usage_in_bytes").write_text("0")  # v1: the peak from now on (v2 has no reset)
    procs = folder / "cgroup.procs"

    def join() -> None:  # in the child, before exec: everything it allocates is charged to the cgroup
        procs.write_text(str(os.getpid()))

    run = subprocess.run([sys.executable, __file__, "--worker", mode, "--threads", str(threads),
                          "--conf", json.dumps(conf.to_dict())], capture_output=True, text=True,
                         preexec_fn=join)
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        print(f"  {mode}: exit {run.returncode} {run.stderr.strip().splitlines()[-1:] or ''}", file=sys.stderr)
        return None, peak_mb(folder)
    return json.loads(lines[-1]), peak_mb(folder)


def worker_process(mode: str, conf: Conf) -> None:
    """The --worker side: ``baseline`` builds the worker and trains nothing, ``mapped`` and
    ``memory`` train one epoch; one JSON line."""
    worker = make_worker(conf, "memory" if mode == "memory" else "mapped")
    samples, seconds = epoch(worker, conf.averaging_frequency) if mode != "baseline" else (0, 0.0)
    print(json.dumps({"mode": mode, "samples": samples, "seconds": seconds}))


def capped(args: argparse.Namespace, conf: Conf, size_mb: float) -> None:
    folder, limit_file = memory_cgroup()
    none = 1 << 40
    try:
        _, base_mb = run_in_cgroup(folder, limit_file, none, conf.replace(train_limit=1000), "baseline", args.threads)
        cap_mb = args.cap_mb if args.cap_mb is not None else base_mb + args.headroom_mb
        runs = {"memory": none, "mapped": none, "mapped-capped": int(cap_mb * (1 << 20))}
        rates: dict[str, list[float]] = {mode: [] for mode in runs}
        peaks: dict[str, float] = {}
        with BenchLock("bench_bigdata.py") as lock:
            for _ in range(args.repeats):
                for mode, cap in runs.items():
                    lock.before_contender()
                    out, peaks[mode] = run_in_cgroup(folder, limit_file, cap, conf, mode.split("-")[0], args.threads)
                    if out is not None:
                        rates[mode].append(out["samples"] / out["seconds"])
    finally:
        folder.rmdir()
    best = {mode: max(r) if r else float("nan") for mode, r in rates.items()}
    print(f"{args.rows:,} examples x {args.n_in} float32 features ({size_mb:.0f} MB), MLP {args.n_in}-32-{N_CLASSES}, "
          f"batch 64, {args.threads} thread(s), best of {args.repeats}; worker baseline {base_mb:.0f} MB, "
          f"cap {cap_mb:.0f} MB ({size_mb * 1e6 / (1 << 20) / (cap_mb - base_mb):.1f}x the headroom for data)")
    for mode, rate in best.items():
        print(f"  {mode:14s} {rate:10,.0f} samples/s   {rate / best['memory']:5.2f} x in-memory   "
              f"peak {peaks[mode]:6.0f} MB")
    print(json.dumps({"rows": args.rows, "n_in": args.n_in, "size_mb": round(size_mb, 1), "threads": args.threads,
                      "baseline_mb": round(base_mb), "cap_mb": round(cap_mb),
                      "peak_mb": {mode: round(peak) for mode, peak in peaks.items()},
                      "samples_per_s": {mode: round(rate) for mode, rate in best.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--n-in", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cap-mb", type=float, help="cap each worker's memory at this many MB (a cgroup)")
    parser.add_argument("--headroom-mb", type=float, help="cap at the worker's measured baseline plus this many MB")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one capped worker process
    parser.add_argument("--conf", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker_process(args.worker, Conf.from_dict(json.loads(args.conf)))
        return
    results: dict[str, list[float]] = {"memory": [], "mapped-warm": [], "mapped-cold": []}
    with tempfile.TemporaryDirectory(prefix="deepgrid-bigdata-") as tmp:
        directory = Path(tmp)
        write(directory, args.rows, args.n_in)
        size_mb = (directory / "train_x.npy").stat().st_size / 1e6
        conf = Conf(model="mlp", dataset="npy", data_dir=str(directory), data_feed="files", batch_size=64,
                    averaging_frequency=100, network={"n_in": args.n_in, "n_out": N_CLASSES,
                                                      "hidden_layer_sizes": [32], "activation": "relu"})
        if args.cap_mb is not None or args.headroom_mb is not None:
            capped(args, conf, size_mb)
            return
        with BenchLock("bench_bigdata.py") as lock:
            for _ in range(args.repeats):
                for mode in results:
                    lock.before_contender()
                    worker = make_worker(conf, mode)  # the mapped worker's digest reads the file once
                    if mode == "mapped-cold":
                        drop_cache(directory / "train_x.npy")
                    samples, seconds = epoch(worker, conf.averaging_frequency)
                    results[mode].append(samples / seconds)
                    del worker
    best = {mode: max(rates) for mode, rates in results.items()}
    print(f"{args.rows:,} examples x {args.n_in} float32 features ({size_mb:.0f} MB), MLP {args.n_in}-32-{N_CLASSES}, "
          f"batch 64, {args.threads} thread(s), best of {args.repeats}")
    for mode, rate in best.items():
        print(f"  {mode:12s} {rate:10,.0f} samples/s   {rate / best['memory']:5.2f} x in-memory")
    print(json.dumps({"rows": args.rows, "n_in": args.n_in, "size_mb": round(size_mb, 1), "threads": args.threads,
                      "samples_per_s": {mode: round(rate) for mode, rate in best.items()}}))


if __name__ == "__main__":
    main()
