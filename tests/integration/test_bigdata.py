"""Data larger than a worker's memory trains (dataset: npy, memory-mapped).

A worker process runs in a memory cgroup of its own (v1 ``memory.limit_in_bytes`` or v2
``memory.max``; page cache counts against it and is dropped under pressure, as for any RSS
cap). The cap is the worker's measured baseline (Python, torch, the model, the mapping opened
and nothing read) plus ``HEADROOM_MB``; the training features are larger than the whole cap
and several times the headroom. The mapped worker trains a whole epoch to a good held-out
accuracy under the cap, and the same worker holding the examples in memory is killed under it
(so the cap bites). Needs root and a writable cgroup hierarchy: skipped elsewhere. 80-110 s
on a 2-core machine, most of it the mapped worker's epoch (a 4 KB read per row under the cap).
``RLIMIT_AS`` cannot show this: a mapping counts in the address space whether its pages are
read or not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepgrid import Conf

ROOT = Path(__file__).resolve().parents[2]
N_IN, N_CLASSES = 256, 4
ROWS = 700_000  # 717 MB of float32 features: over twice the cap (about 220 MB of baseline + 96 MB)
HEADROOM_MB = 96


def own_memory_cgroup() -> tuple[Path, str] | None:
    """(a folder to create a child cgroup in, its limit file), or None where this cannot be done."""
    if os.geteuid() != 0:
        return None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # v1
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").is_file():  # v2
            return Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
    return None


@pytest.fixture
def cgroup() -> Any:
    found = own_memory_cgroup()
    if found is None:
        pytest.skip("needs root and a memory cgroup to cap a worker's memory")
    parent, limit_file = found
    folder = parent / f"deepgrid-test-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir()
    except OSError as e:
        pytest.skip(f"cannot create a memory cgroup under {parent}: {e}")
    if not (folder / limit_file).exists():
        folder.rmdir()
        pytest.skip(f"{folder} has no {limit_file}: the memory controller is not enabled there")
    yield folder, limit_file
    folder.rmdir()  # its processes have exited


def write_blobs(directory: Path, train_rows: int) -> None:
    """Four Gaussian blobs, written a chunk at a time (this process never holds them whole)."""
    directory.mkdir(exist_ok=True)
    centers = np.random.default_rng(99).normal(size=(N_CLASSES, N_IN)).astype(np.float32) * 0.5
    for split, rows, seed in (("train", train_rows, 1), ("test", 2000, 2)):
        rng = np.random.default_rng(seed)
        x = np.lib.format.open_memmap(directory / f"{split}_x.npy", mode="w+", dtype=np.float32, shape=(rows, N_IN))
        y = rng.integers(0, N_CLASSES, rows)
        for start in range(0, rows, 50_000):
            part = y[start : start + 50_000]
            x[start : start + len(part)] = centers[part] + rng.normal(size=(len(part), N_IN)).astype(np.float32)
        x.flush()
        del x
        np.save(directory / f"{split}_y.npy", y)
        # Out of the page cache: the capped worker must read (and be charged for) what it uses.
        fd = os.open(directory / f"{split}_x.npy", os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_capped(conf: Conf, mode: str, folder: Path, limit_file: str, cap_bytes: int) -> tuple[int, dict[str, Any] | None, str]:
    (folder / limit_file).write_text(str(cap_bytes))
    procs = folder / "cgroup.procs"

    def join() -> None:  # in the child, before exec: everything it allocates is charged to the cgroup
        procs.write_text(str(os.getpid()))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "tests.integration.bigdata_worker", json.dumps(conf.to_dict()), mode],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, preexec_fn=join)
    lines = run.stdout.strip().splitlines()
    return run.returncode, json.loads(lines[-1]) if run.returncode == 0 and lines else None, run.stderr[-2000:]


def peak_bytes(folder: Path) -> int | None:
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (folder / name).exists():
            return int((folder / name).read_text())
    return None


def test_a_worker_trains_data_larger_than_its_memory_cap(cgroup: tuple[Path, str], tmp_path: Path) -> None:
    folder, limit_file = cgroup
    write_blobs(tmp_path / "big", ROWS)
    write_blobs(tmp_path / "small", 2000)
    conf = Conf(model="mlp", dataset="npy", data_dir=str(tmp_path / "big"), data_feed="files", batch_size=64,
                averaging_frequency=100, network={"n_in": N_IN, "n_out": N_CLASSES, "hidden_layer_sizes": [32],
                                                  "activation": "relu", "finetune_lr": 0.05})
    data_bytes = (tmp_path / "big" / "train_x.npy").stat().st_size
    try:
        # The baseline: the same worker on a small copy (Python, torch, the model; next to no data).
        code, baseline, err = run_capped(conf.replace(data_dir=str(tmp_path / "small")), "baseline", folder,
                                         limit_file, 1 << 40)
        assert code == 0, err
        base = peak_bytes(folder) or int(baseline["peak_rss_mb"] * (1 << 20))  # type: ignore[index]
        cap = base + HEADROOM_MB * (1 << 20)
        assert data_bytes > 2 * cap and data_bytes > 3 * HEADROOM_MB * (1 << 20)

        code, mapped, err = run_capped(conf, "mapped", folder, limit_file, cap)
        assert code == 0, f"the mapped worker failed under a {cap >> 20} MB cap: {err}"
        assert mapped is not None and mapped["mapped"] and mapped["samples"] == ROWS // 64 * 64
        assert mapped["accuracy"] > 0.9
        print(f"\nmemory cap {cap >> 20} MB (baseline {base >> 20} MB + {HEADROOM_MB} MB), training features "
              f"{data_bytes >> 20} MB: mapped worker trained {mapped['samples']} samples at "
              f"{mapped['samples'] / mapped['seconds']:,.0f} samples/s, accuracy {mapped['accuracy']:.3f}")

        # The same worker holding the examples in memory does not fit under the same cap: the
        # kernel's OOM killer ends it (SIGKILL), not an error of its own.
        code, held, err = run_capped(conf, "memory", folder, limit_file, cap)
        assert code == -signal.SIGKILL and held is None, (
            f"the in-memory worker was not killed under the cap (exit {code}): the test does not cap anything; {err}")
    finally:
        for name in ("train_x.npy", "train_y.npy"):  # pytest keeps its last temporary folders: not 700 MB each
            (tmp_path / "big" / name).unlink(missing_ok=True)
