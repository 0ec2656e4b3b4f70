"""The `average` strategy computes, to the bit, the algorithm written out in ``replay`` below: each
worker trains its job from the round's parameters with its own optimizer state (its SGD momentum
dropped when those parameters are not its own, unless ``reset_momentum: false``); the next
parameters are the sample-weighted mean of the workers' parameters, summed in float64 in job
order, plus ``block_momentum`` times the previous round's step. With ``reset_momentum: false``
that is the algorithm the master ran before the strategy seam (issue 9).

Two checks, both on the run's final float32 parameters:

* on every machine: the same schedule (which worker trained which job, round by round, as the
  run's own reports say) replayed in this process, each job through the model's ``train_step`` at
  one thread as a worker runs it, and the rounds combined by the formula above, written out here;
* on the CPU kinds it was recorded on: the SHA-256 digest recorded earlier. With momentum kept,
  the digest the master gave before the seam (main at commit 379ce18, "Average in job order");
  with momentum dropped (the default since), the digest of the commit that made it the default.
  The products round differently on other CPUs (vector paths, MKL's kernels), so a recording
  holds for its kind only: the EPYC digests failed on an Intel Xeon, where 379ce18 itself gives
  the Xeon's. Re-record on a new kind, from those commits, with
  `DEEPGRID_PRINT_GOLDEN=1 pytest -s tests/integration/test_average_golden.py`.

With `pull_jobs: false` each round hands one job to each worker, and the mean is summed in job
order, so the result does not depend on which result arrived first.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import pytest
import torch

from deepgrid import Conf
from deepgrid.distributed.runner import ActorNetworkRunner
from deepgrid.distributed.worker import build_named_model
from deepgrid.train.denormals import denormals_flushed
from deepgrid.train.loop import phase_seed, seed_job_noise
from tests.integration.local_engine import ray_local  # noqa: F401 (an autouse fixture)
from tests.integration.synthetic import N_CLASSES, N_IN, TRAIN

BLOCK_MOMENTUM = 0.5

# CPU kind (vendor, torch's vector capability) -> workers -> digest, momentum kept (reset_momentum:
# false), recorded from commit 379ce18.
RECORDED_KEPT = {
    ("AuthenticAMD", "AVX512"): {  # AMD EPYC: this project's CI machine until 2026-11-30
        1: "bbdf87df4c15acece6a3dfe70ac0e8fc55f23ef1f4c6cfd64627032187e0d665",
        2: "2947cf4b684e11a2d4da1a7649584f3ce06334aa16c3d8010f9caa7e819c6e04",
    },
    ("GenuineIntel", "AVX512"): {  # Intel Xeon (2 MB L2 a core), recorded 2026-11-30
        1: "62478ffff6c4732e9a5a78d84f4e887f2fd754b265cf9675a9ad109df05ab619",
        2: "f0efa9401aa200152c1936a998c758e15512c02d124f030c8d74cb986c1c779e",
    },
}

# The same, momentum dropped (the default), recorded from the commit that made it the default.
RECORDED_DROPPED = {
    ("AuthenticAMD", "AVX512"): {  # AMD EPYC, recorded 2026-12-01 from commit 63811b2 (and main's 3e38cbe)
        1: "bdf04bca30999e0bc2a8b16b3ab36d28f892c15cd17a6f71e124a0670152a827",
        2: "322ca153e79b19eab7adeb79772589b8c1925e90a44d237d9613e978117bf8db",
    },
    ("GenuineIntel", "AVX512"): {  # Intel Xeon, recorded 2026-12-01
        1: "5bc61fd816e7f6de12d5acfe6b137b0805b87a77081e46ee9db0695726a1d2b4",
        2: "5e75d509d36d0e612c9a3cee164ec273b6d679ced53b20f165ea44d713929ac9",
    },
}


def conf(workers: int, reset_momentum: bool) -> Conf:
    return Conf(model="mlp", workers=workers, batch_size=16, averaging_frequency=4, epochs=2,
                block_momentum=BLOCK_MOMENTUM,  # exercise the block step with one worker too
                reset_momentum=reset_momentum,
                pull_jobs=False,  # one job per worker per round, whatever the timing
                network=dict(n_in=N_IN, n_out=N_CLASSES, hidden_layer_sizes=[32], activation="relu",
                             finetune_lr=0.05, seed=7))


def digest(params: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(params, dtype=np.float32).tobytes()).hexdigest()


def cpu_kind() -> tuple[str, str]:
    vendor = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    return vendor, torch.backends.cpu.get_cpu_capability()


class Schedule:
    """A runner callback: each round's (worker, job) pairs, from the run's own reports."""

    def __init__(self) -> None:
        self.rounds: list[list[tuple[str, Any]]] = []

    def on_round_end(self, master: Any, report: Any) -> None:
        self.rounds.append([(r.worker_id, r.job) for r in report.results])


def replay(c: Conf, data: Any, initial: np.ndarray, rounds: list[list[tuple[str, Any]]]) -> np.ndarray:
    """The run's rounds in this process: a model (and so an optimizer state) per worker, each job
    trained from the round's parameters as worker.py does, the round combined as the docstring says."""
    network = c.network.to_dict()
    seed = c.network.seed
    models: dict[str, Any] = {}
    params, block_step = initial.copy(), None
    threads = torch.get_num_threads()
    torch.set_num_threads(c.threads_per_worker)  # float sums depend on how the products split their work
    try:
        for jobs in rounds:
            trained = []
            for worker_id, job in jobs:
                if worker_id not in models:  # (setdefault would build a model for every job)
                    models[worker_id] = build_named_model(c.model, network)
                model = models[worker_id]
                phases = [p.name for p in model.phases()]
                moved = not np.array_equal(model.get_flat_params(), params)
                model.set_flat_params(params)
                if moved and c.reset_momentum:  # SGD's velocity belongs to the path it left
                    model.reset_momentum()
                order = data.batch_order(c.batch_size, phase_seed(seed, phases.index(job.phase)), job.epoch)
                seed_job_noise(seed, job.phase, job.epoch, job.index)
                step = model.train_step(job.phase, [data.batch(idx) for idx in order[job.start : job.stop]])
                trained.append((job.index, model.get_flat_params(), step.n_samples))
            trained.sort(key=lambda t: t[0])  # job order
            if len(trained) == 1:
                mean = np.array(trained[0][1], dtype=np.float32)
            else:
                total = np.zeros(params.shape, dtype=np.float64)
                for _, vector, n in trained:
                    total += n * vector.astype(np.float64)
                mean = (total / sum(n for _, _, n in trained)).astype(np.float32)
            step_now = mean - params
            if block_step is not None:
                step_now += BLOCK_MOMENTUM * block_step
            block_step = step_now
            params = (params + step_now).astype(np.float32)
    finally:
        torch.set_num_threads(threads)
    return params


@pytest.mark.parametrize("reset_momentum", [True, False], ids=["momentum-dropped", "momentum-kept"])
@pytest.mark.parametrize("workers", [1, 2])
def test_average_matches_its_algorithm(workers: int, reset_momentum: bool) -> None:
    c = conf(workers, reset_momentum)
    schedule = Schedule()
    runner = ActorNetworkRunner("master", TRAIN)
    try:
        runner.setup(c)
        runner.callbacks.append(schedule)
        initial, data = runner.model.get_flat_params(), runner.train_data
        model = runner.train()
    finally:
        runner.shutdown()
    got = model.get_flat_params()
    if os.environ.get("DEEPGRID_PRINT_GOLDEN"):
        print(f"\n{cpu_kind()} reset_momentum={reset_momentum} {workers}: {digest(got)!r},")
    assert len(schedule.rounds) > 4 and all(len(jobs) <= workers for jobs in schedule.rounds)
    with denormals_flushed():  # as each worker trains
        expected = replay(c, data, initial, schedule.rounds)
    assert digest(got) == digest(expected), (f"{workers} worker(s): the run's parameters differ from the same "
                                             "rounds replayed in one process (max difference "
                                             f"{float(np.abs(got - expected).max()):.3g})")
    recorded = (RECORDED_DROPPED if reset_momentum else RECORDED_KEPT).get(cpu_kind())
    if recorded is not None:  # a kind without a recording still has the replay's check above
        assert digest(got) == recorded[workers], (f"{workers} worker(s): the parameters differ from those "
                                                  f"recorded on this CPU kind {cpu_kind()}")
