"""Data larger than memory: a worker's samples/s reading memory-mapped ``.npy`` against in memory.

Writes a generated data set (Gaussian blobs, float32) as ``dataset: npy`` files, then trains
one epoch of it with a ``Worker`` (the distributed worker, no Ray: the part that reads the
data) three ways, alternating, best of ``--repeats``:

* ``memory``: the examples held in memory as a tensor (the object-store path);
* ``mapped-warm``: memory-mapped (``data_feed: files``), the file already in the page cache;
* ``mapped-cold``: memory-mapped, the file dropped from the page cache first
  (``posix_fadvise(DONTNEED)``): every page read from disk, as when the data exceed memory.

    python bench/bench_bigdata.py                    # 200,000 x 256 float32 (205 MB)
    python bench/bench_bigdata.py --rows 50000       # quicker

Prints a table, then one JSON line with every figure. The files are deleted at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--n-in", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[float]] = {"memory": [], "mapped-warm": [], "mapped-cold": []}
    with tempfile.TemporaryDirectory(prefix="deepgrid-bigdata-") as tmp:
        directory = Path(tmp)
        write(directory, args.rows, args.n_in)
        size_mb = (directory / "train_x.npy").stat().st_size / 1e6
        conf = Conf(model="mlp", dataset="npy", data_dir=str(directory), data_feed="files", batch_size=64,
                    averaging_frequency=100, network={"n_in": args.n_in, "n_out": N_CLASSES,
                                                      "hidden_layer_sizes": [32], "activation": "relu"})
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
