"""Model.reset_momentum and Model.holds_flat_params (what `average`'s workers use each round), and
the worker half of `average` that decides between keeping and dropping the momentum."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from deepgrid import NeuralNetConfiguration
from deepgrid.distributed.strategies.average import AveragePlugin
from deepgrid.models.mlp import MLP


def mlp(optimizer: str = "sgd") -> MLP:
    return MLP(NeuralNetConfiguration(n_in=6, n_out=3, hidden_layer_sizes=[5], activation="relu",
                                      optimizer=optimizer, finetune_lr=0.05, momentum=0.9, seed=3))


def batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]


def test_reset_momentum_drops_sgd_velocity_only() -> None:
    model = mlp()
    model.train_step("finetune", batches(0))
    state = model.optimizer("finetune").state
    assert state and all("momentum_buffer" in entry for entry in state.values())
    model.reset_momentum()
    assert all("momentum_buffer" not in entry for entry in state.values())
    # The next steps are those of a fresh optimizer from these parameters.
    fresh = mlp()
    fresh.set_flat_params(model.get_flat_params())
    model.train_step("finetune", batches(1))
    fresh.train_step("finetune", batches(1))
    assert np.array_equal(model.get_flat_params(), fresh.get_flat_params())


def test_reset_momentum_keeps_adam_statistics() -> None:
    model = mlp("adam")
    model.train_step("finetune", batches(0))
    before = {k: v.clone() for entry in model.optimizer("finetune").state.values() for k, v in entry.items()
              if torch.is_tensor(v)}
    model.reset_momentum()
    after = {k: v for entry in model.optimizer("finetune").state.values() for k, v in entry.items()
             if torch.is_tensor(v)}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_holds_flat_params() -> None:
    model = mlp()
    own = model.get_flat_params()
    assert model.holds_flat_params(own)
    other = own.copy()
    other[-1] = np.nextafter(other[-1], np.float32(np.inf))  # one value, one ulp away
    assert not model.holds_flat_params(other)
    assert not model.holds_flat_params(own[:-1])  # another network's length


@pytest.mark.parametrize("moved, reset, dropped", [(True, True, True), (False, True, False), (True, False, False)])
def test_average_plugin_drops_momentum_only_when_moved(moved: bool, reset: bool, dropped: bool) -> None:
    model = mlp()
    model.train_step("finetune", batches(0))
    params = model.get_flat_params() + (np.float32(0.01) if moved else np.float32(0))
    AveragePlugin(reset).take_params(SimpleNamespace(model=model), params)
    assert model.holds_flat_params(params)
    has_buffers = all("momentum_buffer" in entry for entry in model.optimizer("finetune").state.values())
    assert has_buffers is not dropped
