"""`average` with several workers: a worker given the round's parameters drops its SGD momentum.

Four real worker actors train the MLP of the namespace-host tests (lr 0.1, momentum 0.9, jobs of
4 batches) on Fashion-MNIST-shaped data, one job per worker per round (``pull_jobs: false``, so
each run's rounds are the same). Kept, the workers' momentum compounds with the block momentum
(0.75 for 4 workers) and the parameters grow without bound; dropped, the run converges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepgrid import Conf
from deepgrid.data.mnist import load_splits
from deepgrid.distributed.runner import ActorNetworkRunner
from tests.integration.local_engine import ray_local  # noqa: F401 (an autouse fixture)
from tests.integration.test_master_worker_cli import fake_fashion_mnist

WORKERS = 4
EPOCHS = 6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("momentum-data")
    fake_fashion_mnist(directory, n_train=3000, n_test=500)
    return directory


def train(data_dir: Path, **changes: Any) -> tuple[float, float, list[float]]:
    """(parameter norm, test accuracy, each epoch's mean job loss) of one run."""
    conf = Conf.from_dict({"model": "mlp", "data_dir": str(data_dir), "workers": WORKERS, "batch_size": 32,
                           "averaging_frequency": 4, "epochs": EPOCHS, "pull_jobs": False,
                           "network": {"hidden_layer_sizes": [64], "activation": "relu"}, **changes})
    runner = ActorNetworkRunner("master", None)
    try:
        runner.setup(conf)
        model = runner.train()
        rounds_per_epoch = len({h["round"] for h in runner.history}) // EPOCHS
        losses = [float(np.mean([h["loss"] for h in runner.history
                                 if e * rounds_per_epoch < h["round"] <= (e + 1) * rounds_per_epoch]))
                  for e in range(EPOCHS)]
        test = load_splits(runner.conf)[1]
        accuracy = model.evaluate(test.x, test.y).accuracy
    finally:
        runner.shutdown()
    return float(np.linalg.norm(model.get_flat_params())), accuracy, losses


def test_dropping_momentum_keeps_four_workers_converging(data_dir: Path) -> None:
    norm, accuracy, losses = train(data_dir)  # the default: reset_momentum true
    kept_norm, _, kept_losses = train(data_dir, reset_momentum=False)
    print(f"\nreset: norm {norm:.1f}, accuracy {accuracy}, losses {losses}; kept: norm {kept_norm:.1f}, "
          f"losses {kept_losses}")
    assert accuracy >= 0.95 and losses[-1] < 0.05, (accuracy, losses)
    assert losses[-1] <= min(losses), f"the loss rose after its lowest epoch: {losses}"
    # The setting is what made the difference: kept, the same rounds diverge.
    assert kept_norm > 5 * norm and kept_losses[-1] > 10 * max(losses[-1], 0.01), (norm, kept_norm, kept_losses)
