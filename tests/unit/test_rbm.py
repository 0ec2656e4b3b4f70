"""RBMLayer and the ``rbm`` model on small synthetic binary data (runs in seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepgrid.data.dataset import ArrayDataset
from deepgrid.models.base import Model
from deepgrid.models.optimizers import Adam
from deepgrid.models.rbm import RBM, RBMLayer
from deepgrid.train.loop import fit
from tests.helpers import PROTOTYPE_CLASSES as N_CLASSES
from tests.helpers import PROTOTYPE_FEATURES as N_VISIBLE
from tests.helpers import batches, prototypes_data


def small_rbm(**fields) -> RBM:
    settings = dict(n_in=N_VISIBLE, n_out=N_CLASSES, hidden_layer_sizes=(16,), pretrain_lr=0.05, momentum=0.5,
                    finetune_lr=0.5, pretrain_epochs=1, finetune_epochs=1)
    return RBM(**{**settings, **fields})


def surrogate_gradients(layer: RBMLayer, v0: torch.Tensor, v_neg: torch.Tensor) -> list[torch.Tensor]:
    """Autograd's gradient of F(v0).mean() - F(v_neg).mean() (+ the sparsity term), the reference."""
    params = list(layer.parameters())
    objective = layer.free_energy(v0).mean() - layer.free_energy(v_neg).mean()
    if layer.sparsity_target > 0:
        with torch.no_grad():
            q = layer.mean_hiddens(v0).mean(0)
            push = layer.sparsity_cost * (q - layer.sparsity_target)  # dPenalty / d(pre-activation), per unit
        objective = objective + (layer.hidden_preactivation(v0) @ push).mean()
    return list(torch.autograd.grad(objective, params))


# -- the layer ------------------------------------------------------------------------------
@pytest.mark.parametrize("visible_unit", ["binary", "gaussian"])
@pytest.mark.parametrize("hidden_unit", ["binary", "rectified"])
def test_layer_shapes(visible_unit, hidden_unit):
    layer = RBMLayer(N_VISIBLE, 8, visible_unit=visible_unit, hidden_unit=hidden_unit)
    v, _ = prototypes_data(10, binary=visible_unit == "binary")
    assert layer.linear.weight.shape == (8, N_VISIBLE)
    assert layer.mean_hiddens(v).shape == (10, 8)
    assert layer.sample_hiddens(v).shape == (10, 8)
    h = layer.sample_hiddens(v)
    assert layer.mean_visibles(h).shape == (10, N_VISIBLE)
    assert layer.sample_visibles(h).shape == (10, N_VISIBLE)
    assert layer.free_energy(v).shape == (10,)
    assert layer.reconstruction_error(v).shape == ()
    if hidden_unit == "binary":
        assert set(layer.sample_hiddens(v).unique().tolist()) <= {0.0, 1.0}
    else:
        assert (layer.sample_hiddens(v) >= 0).all()
    if visible_unit == "binary":
        assert layer.pseudo_likelihood(v).shape == (10,)
        assert (layer.pseudo_likelihood(v) <= 0).all()
    else:
        with pytest.raises(ValueError):
            layer.pseudo_likelihood(v)


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("units", [("binary", "binary"), ("gaussian", "rectified")])
@pytest.mark.parametrize("sparsity", [0.0, 0.1])  # without it the step signs v0 instead of the hiddens
def test_hand_gradient_matches_autograd_on_the_surrogate(persistent, k, units, sparsity):
    torch.manual_seed(0)
    layer = RBMLayer(N_VISIBLE, 8, visible_unit=units[0], hidden_unit=units[1], k=k, persistent=persistent,
                     sparsity_target=sparsity, sparsity_cost=0.5)
    v0, _ = prototypes_data(16, binary=units[0] == "binary")
    layer.contrastive_divergence(v0)  # first call seeds the persistent chains
    v_neg, _ = layer.contrastive_divergence(v0)
    expected = surrogate_gradients(layer, v0, v_neg)
    for p, g in zip(layer.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_persistent_chains_are_state_not_parameters():
    layer = RBMLayer(N_VISIBLE, 8, persistent=True)
    v0, _ = prototypes_data(16)
    layer.contrastive_divergence(v0)
    assert layer.chains is not None and layer.chains.shape == (16, 8)
    before = layer.chains.clone()
    layer.contrastive_divergence(v0)
    assert not torch.equal(before, layer.chains)  # the chains move on; they are not restarted at the data
    assert "chains" not in layer.state_dict()
    assert len(list(layer.parameters())) == 3


def test_sparsity_lowers_mean_activation():
    x, y = prototypes_data()
    means = {}
    for target in (0.0, 0.05):
        model = small_rbm(sparsity_target=target, sparsity_cost=2.0 if target else 0.0)
        for _ in range(10):
            model.train_step("pretrain:0", batches(x, y))
        means[target] = float(model.transform(x).mean())
    assert means[0.05] < means[0.0] - 0.05


# -- the model ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        {},  # CD-1
        {"k": 3},  # CD-k
        {"persistent": True},  # PCD
        {"persistent": True, "k": 2},
        {"visible_unit": "gaussian", "hidden_unit": "rectified", "pretrain_lr": 0.01},
    ],
    ids=["cd1", "cd3", "pcd1", "pcd2", "gaussian-rectified"],
)
def test_training_lowers_reported_loss(fields):
    x, y = prototypes_data(binary=fields.get("visible_unit", "binary") == "binary")
    model = small_rbm(**fields)
    data = batches(x, y)
    first = model.train_step("pretrain:0", data).loss
    for _ in range(8):
        last = model.train_step("pretrain:0", data).loss
    assert np.isfinite(last) and last < 0.7 * first
    # fine-tuning trains the softmax on the frozen features; the RBM does not move
    rbm_before = [p.clone() for p in model.rbm.parameters()]
    first = model.train_step("finetune", data).loss
    for _ in range(8):
        last = model.train_step("finetune", data).loss
    assert last < first
    for before, after in zip(rbm_before, model.rbm.parameters(), strict=True):
        assert torch.equal(before, after)


def test_phases_and_fit():
    x, y = prototypes_data()
    model = small_rbm(pretrain_epochs=2, finetune_epochs=3)
    assert [(p.name, p.epochs, p.supervised) for p in model.phases()] == [
        ("pretrain:0", 2, False), ("finetune", 3, True)]
    assert [p.name for p in small_rbm(pretrain_epochs=0).phases()] == ["finetune"]
    result = fit(model, ArrayDataset(x, y), batch_size=32, epochs=10)
    assert [h["phase"] for h in result.history] == ["pretrain:0"] * 2 + ["finetune"] * 10
    assert model.score(x, y) > 0.9
    assert model.predict_proba(x).shape == (len(x), N_CLASSES)
    assert model.transform(x).shape == (len(x), 16)
    assert model.transform(x).dtype == np.float32


def test_pretrain_optimizer_settings_come_from_the_layer():
    model = small_rbm(pretrain_optimizer="adam", pretrain_lr=0.02, momentum=0.3, l2=1e-4,
                      layers={0: {"pretrain_lr": 0.03}})
    assert model.phase_optimizer_settings("pretrain:0") == ("adam", 0.03, 0.3, 1e-4)
    assert model.phase_optimizer_settings("finetune") == ("sgd", 0.5, 0.3, 1e-4)
    assert isinstance(model.optimizer("pretrain:0"), Adam)


def test_save_load_round_trip(tmp_path):
    x, y = prototypes_data()
    model = small_rbm(persistent=True)
    fit(model, ArrayDataset(x, y), batch_size=32, epochs=2)
    model.save(tmp_path)
    loaded = Model.load(tmp_path)
    assert isinstance(loaded, RBM)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(loaded.transform(x), model.transform(x))


def test_flat_params_round_trip():
    a, b = small_rbm(seed=1), small_rbm(seed=2)
    assert not np.array_equal(a.get_flat_params(), b.get_flat_params())
    b.set_flat_params(a.get_flat_params())
    np.testing.assert_array_equal(a.get_flat_params(), b.get_flat_params())
    x, _ = prototypes_data(20)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    assert a.n_params == 16 * N_VISIBLE + 16 + N_VISIBLE + 16 * N_CLASSES + N_CLASSES


def test_training_samples_have_the_given_probability():
    """The CD step's binary sampler (16-bit uniforms from numpy's PCG64) against the probabilities asked for."""
    layer = RBMLayer(N_VISIBLE, 8)
    v0, _ = prototypes_data(64)
    scratch = layer._scratch_for(v0, None)
    p = torch.linspace(0, 1, 64 * 8).view(64, 8)
    torch.manual_seed(0)
    mean = torch.stack([scratch.bernoulli(p, layer.reseed_sampler()).clone() for _ in range(400)]).mean(0)
    assert set(scratch.sample.unique().tolist()) <= {0.0, 1.0}
    assert mean[0, 0] == 0 and mean[-1, -1] == 1  # p = 0 never, p = 1 always
    torch.testing.assert_close(mean, p, atol=0.1, rtol=0)  # 400 draws: 4 standard deviations at p = 0.5
    assert abs(float((mean - p).mean())) < 0.005  # no bias overall
