"""Denoising autoencoder layers and the stacked model ``sda`` (synthetic data, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepgrid.data.dataset import ArrayDataset
from deepgrid.models.autoencoder import DenoisingAutoencoderLayer, StackedDenoisingAutoencoder
from deepgrid.models.base import Model
from deepgrid.train.loop import fit
from tests.helpers import PROTOTYPE_CLASSES as N_CLASSES
from tests.helpers import PROTOTYPE_FEATURES as N_IN
from tests.helpers import batches, prototypes_data


def small_sda(**fields) -> StackedDenoisingAutoencoder:
    settings = dict(n_in=N_IN, n_out=N_CLASSES, hidden_layer_sizes=(16, 8), pretrain_lr=0.01, momentum=0.5,
                    finetune_lr=0.5, pretrain_epochs=1, finetune_epochs=1, corruption_level=0.2)
    return StackedDenoisingAutoencoder(**{**settings, **fields})


def test_layer_shapes_and_tied_weights():
    layer = DenoisingAutoencoderLayer(N_IN, 8)
    x, _ = prototypes_data(10)
    assert layer.encode(x).shape == (10, 8)
    assert layer.decode(layer.encode(x)).shape == (10, N_IN)
    assert layer.reconstruction_loss(x).shape == ()
    # tied weights: the decoder has no weight of its own
    assert [name for name, _ in layer.named_parameters()] == ["visible_bias", "linear.weight", "linear.bias"]
    with torch.no_grad():
        expected = torch.sigmoid(layer.encode(x) @ layer.linear.weight + layer.visible_bias)
    torch.testing.assert_close(layer.decode(layer.encode(x)), expected)


def test_corruption_zeroes_the_given_fraction():
    layer = DenoisingAutoencoderLayer(1000, 8, corruption_level=0.3)
    x = torch.ones(50, 1000)
    zeroed = float((layer.corrupt(x) == 0).float().mean())
    assert zeroed == pytest.approx(0.3, abs=0.01)
    assert torch.equal(DenoisingAutoencoderLayer(1000, 8, corruption_level=0.0).corrupt(x), x)


def test_gaussian_visible_units_use_squared_error():
    layer = DenoisingAutoencoderLayer(N_IN, 8, visible_unit="gaussian", corruption_level=0.0)
    x = torch.randn(10, N_IN)
    with torch.no_grad():
        expected = 0.5 * (layer.decode(layer.encode(x)) - x).square().sum(1).mean()
    torch.testing.assert_close(layer.reconstruction_loss(x), expected)


def test_phases_in_order_and_layer_i_changes_only_layer_i():
    x, y = prototypes_data()
    model = small_sda(pretrain_epochs=2)
    assert [(p.name, p.epochs) for p in model.phases(5)] == [("pretrain:0", 2), ("pretrain:1", 2), ("finetune", 5)]
    assert [p.name for p in small_sda(pretrain_epochs=0).phases()] == ["finetune"]
    for i in range(2):
        before = {name: p.clone() for name, p in model.module.named_parameters()}
        model.train_step(f"pretrain:{i}", batches(x, y))
        changed = {name for name, p in model.module.named_parameters() if not torch.equal(before[name], p)}
        assert changed == {f"layers.{i}.linear.weight", f"layers.{i}.linear.bias", f"layers.{i}.visible_bias"}


@pytest.mark.parametrize("fields", [{}, {"visible_unit": "gaussian"}])
def test_each_phase_lowers_its_loss(fields):
    x, y = prototypes_data()
    model = small_sda(**fields)
    data = batches(x, y)
    for phase in ("pretrain:0", "pretrain:1", "finetune"):
        first = model.train_step(phase, data).loss
        for _ in range(8):
            last = model.train_step(phase, data).loss
        # the upper layer's inputs are probabilities, whose cross-entropy has a floor well above 0
        assert np.isfinite(last) and last < (0.99 if phase == "pretrain:1" else 0.9) * first, phase


def test_fit_learns_and_save_load_round_trip(tmp_path):
    x, y = prototypes_data()
    model = small_sda()
    fit(model, ArrayDataset(x, y), batch_size=32, epochs=10)
    assert model.score(x, y) > 0.9
    assert model.transform(x).shape == (len(x), 8)
    model.save(tmp_path)
    loaded = Model.load(tmp_path)
    assert isinstance(loaded, StackedDenoisingAutoencoder)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_flat_params_round_trip():
    a, b = small_sda(seed=1), small_sda(seed=2)
    b.set_flat_params(a.get_flat_params())
    np.testing.assert_array_equal(a.get_flat_params(), b.get_flat_params())
    x, _ = prototypes_data(20)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))


@pytest.mark.parametrize("corruption", [0.0, 0.3])
@pytest.mark.parametrize("unit", ["binary", "gaussian"])
def test_hand_gradient_matches_autograd(unit, corruption):
    """The hand-written step (``hand_step``) against autograd on ``reconstruction_loss``, from the
    same corruption: the three gradients and the summed loss."""
    torch.manual_seed(0)
    layer = DenoisingAutoencoderLayer(N_IN, 7, visible_unit=unit, corruption_level=corruption)
    x = torch.rand(16, N_IN) if unit == "binary" else torch.randn(16, N_IN)
    torch.manual_seed(5)
    layer.reseed_sampler()
    loss = layer.reconstruction_loss(x, layer.corrupt(x))
    loss.backward()
    torch.manual_seed(5)
    layer.reseed_sampler()
    with torch.no_grad():
        s = layer._scratch_for(x, None)
        s.error.zero_()
        layer.hand_step(x, None, scratch=s)
    for hand, auto in zip(s.grads, (layer.linear.weight.grad, layer.linear.bias.grad, layer.visible_bias.grad), strict=True):
        torch.testing.assert_close(hand, auto)
    torch.testing.assert_close(s.error[0] / len(x), loss.detach())


@pytest.mark.parametrize(("momentum", "l2"), [(0.0, 0.0), (0.5, 1e-3)])
def test_hand_sgd_matches_the_generic_loop(momentum, l2):
    """Both layers of an SdA pretrained through ``cd.train_by_hand`` (the upper one on the lower's fixed
    views) against the generic loop (autograd, then SGD.step) from the same parameters and seed: the
    same parameters and reported losses, to float rounding (fused momentum updates round differently)."""
    x, y = prototypes_data()
    data = batches(x, y)
    fast, slow = small_sda(momentum=momentum, l2=l2), small_sda(momentum=momentum, l2=l2)
    slow.module.load_state_dict(fast.module.state_dict())
    for phase in ("pretrain:0", "pretrain:1"):
        torch.manual_seed(3)
        hand = [fast.train_step(phase, data).loss for _ in range(3)]
        torch.manual_seed(3)
        generic = []
        for _ in range(3):
            slow.layers[int(phase[-1])].reseed_sampler()  # as LayerwiseModel.train_step does first
            generic.append(Model.train_step(slow, phase, data).loss)  # zero_grad, backward, optimizer.step
        np.testing.assert_allclose(hand, generic, rtol=1e-5)
        for a, b in zip(fast.module.parameters(), slow.module.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
