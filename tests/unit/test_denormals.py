"""Denormal floats flushed to zero while deepgrid trains (deepgrid.train.denormals)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from deepgrid import NeuralNetConfiguration, fit
from deepgrid.distributed.worker import Worker
from deepgrid.models.mlp import MLP
from deepgrid.train.denormals import denormals_flushed, flushing

TINY = 1e-39  # a float32 denormal


@pytest.fixture(autouse=True)
def ieee() -> Iterator[None]:
    """Each test starts with denormals kept and leaves them so (the flag outlives a test)."""
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def mlp() -> MLP:
    return MLP(NeuralNetConfiguration(n_in=4, n_out=2, hidden_layer_sizes=[3], activation="relu", seed=1))


def test_flushed_for_the_block_then_as_before() -> None:
    assert not flushing() and float(torch.tensor([TINY]) * 1.0) != 0.0
    with denormals_flushed():
        assert flushing() and float(torch.tensor([TINY]) * 1.0) == 0.0
    assert not flushing()
    torch.set_flush_denormal(True)
    with denormals_flushed():
        pass
    assert flushing(), "a thread that flushed before still flushes after"


def test_fit_trains_flushed_and_puts_the_setting_back() -> None:
    seen = []
    model = mlp()
    x, y = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32), np.arange(64) % 2
    fit(model, x, y, epochs=1, batch_size=16, on_epoch=lambda *_: seen.append(flushing()))
    assert seen == [True]
    assert not flushing()


def test_a_worker_flushes_from_its_start() -> None:
    x, y = np.zeros((8, 4), dtype=np.float32), np.zeros(8, dtype=np.int64)
    worker = Worker("w1", mlp, x, y, batch_size=4)
    assert worker.failed is None and flushing()
