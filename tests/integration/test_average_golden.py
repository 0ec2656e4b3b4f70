"""The `average` strategy gives, for the same seed, the same parameters to the bit as the
master did before the strategy seam (issue 9): the refactor must not change a single float.

The figures below are SHA-256 digests of the final float32 parameters, recorded from main at
commit "Average in job order" (before the seam), on this project's CI machine. Float results of
the same code can differ between CPU kinds (vector paths), so a digest that fails on a
different machine is re-recorded there from that commit: `DEEPGRID_PRINT_GOLDEN=1 pytest -s
tests/integration/test_average_golden.py` prints them.

With `pull_jobs: false` each round hands one job to each worker, and the mean is summed in job
order, so the result does not depend on which result arrived first.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from deepgrid import Conf
from deepgrid.distributed.runner import ActorNetworkRunner
from tests.integration.local_engine import ray_local  # noqa: F401 (an autouse fixture)
from tests.integration.synthetic import N_CLASSES, N_IN, TRAIN

GOLDEN = {
    1: "bbdf87df4c15acece6a3dfe70ac0e8fc55f23ef1f4c6cfd64627032187e0d665",
    2: "2947cf4b684e11a2d4da1a7649584f3ce06334aa16c3d8010f9caa7e819c6e04",
}


def conf(workers: int) -> Conf:
    return Conf(model="mlp", workers=workers, batch_size=16, averaging_frequency=4, epochs=2,
                block_momentum=0.5,  # exercise the block step with one worker too
                pull_jobs=False,  # one job per worker per round, whatever the timing
                network=dict(n_in=N_IN, n_out=N_CLASSES, hidden_layer_sizes=[32], activation="relu",
                             finetune_lr=0.05, seed=7))


def digest(params: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(params, dtype=np.float32).tobytes()).hexdigest()


@pytest.mark.parametrize("workers", [1, 2])
def test_average_matches_the_recorded_parameters(workers: int) -> None:
    runner = ActorNetworkRunner("master", TRAIN)
    try:
        runner.setup(conf(workers))
        model = runner.train()
    finally:
        runner.shutdown()
    got = digest(model.get_flat_params())
    if os.environ.get("DEEPGRID_PRINT_GOLDEN"):
        print(f"\n{workers}: {got!r},")
    assert got == GOLDEN[workers], (f"{workers} worker(s): the parameters differ from those recorded before "
                                    "the strategy seam")
