"""The DBN: phases, greedy layer-wise pretraining, fine-tuning, persistence (synthetic data, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepgrid.data.dataset import ArrayDataset
from deepgrid.models.base import Model
from deepgrid.models.dbn import DBN
from deepgrid.models.rbm import RBMLayer
from deepgrid.train.loop import fit
from tests.helpers import PROTOTYPE_CLASSES as N_CLASSES
from tests.helpers import PROTOTYPE_FEATURES as N_IN
from tests.helpers import batches, prototypes_data


def small_dbn(**fields) -> DBN:
    settings = dict(n_in=N_IN, n_out=N_CLASSES, hidden_layer_sizes=(16, 12, 8), pretrain_lr=0.05, momentum=0.5,
                    finetune_lr=0.5, pretrain_epochs=1, finetune_epochs=1)
    return DBN(**{**settings, **fields})


def test_structure_and_shapes():
    model = small_dbn(layers={0: {"k": 2, "persistent": True}, 2: {"hidden_unit": "rectified"}})
    layers = list(model.layers)
    assert all(isinstance(layer, RBMLayer) for layer in layers)
    assert [(r.n_visible, r.n_hidden) for r in layers] == [(N_IN, 16), (16, 12), (12, 8)]
    assert (layers[0].k, layers[0].persistent, layers[1].k, layers[1].persistent) == (2, True, 1, False)
    assert [r.hidden_unit for r in layers] == ["binary", "binary", "rectified"]
    x, _ = prototypes_data(10)
    assert model.forward(x).shape == (10, N_CLASSES)
    assert model.transform(x).shape == (10, 8)
    assert model.predict(x).shape == (10,)


def test_phases_in_order():
    model = small_dbn(pretrain_epochs=2, finetune_epochs=3)
    assert [(p.name, p.epochs, p.supervised) for p in model.phases()] == [
        ("pretrain:0", 2, False), ("pretrain:1", 2, False), ("pretrain:2", 2, False), ("finetune", 3, True)]
    assert model.phases(7)[-1].epochs == 7
    assert [p.name for p in small_dbn(pretrain_epochs=0).phases()] == ["finetune"]


def test_pretraining_layer_i_changes_only_layer_i():
    x, y = prototypes_data()
    model = small_dbn()
    for i in range(3):
        before = {name: p.clone() for name, p in model.module.named_parameters()}
        model.train_step(f"pretrain:{i}", batches(x, y))
        changed = {name for name, p in model.module.named_parameters() if not torch.equal(before[name], p)}
        assert changed == {f"layers.{i}.linear.weight", f"layers.{i}.linear.bias", f"layers.{i}.visible_bias"}
        assert model.phase_parameters(f"pretrain:{i}") == list(model.layers[i].parameters())


def test_each_phase_lowers_its_loss():
    x, y = prototypes_data()
    model = small_dbn()
    data = batches(x, y)
    for phase in ("pretrain:0", "pretrain:1", "pretrain:2", "finetune"):
        first = model.train_step(phase, data).loss
        for _ in range(8):
            last = model.train_step(phase, data).loss
        assert np.isfinite(last) and last < 0.8 * first, phase


def test_finetune_reuses_the_rbm_weights():
    x, y = prototypes_data()
    model = small_dbn()
    weights = [r.linear.weight.clone() for r in model.layers]
    model.train_step("finetune", batches(x, y))
    # fine-tuning moves the same tensors the RBMs pretrained
    assert all(not torch.equal(w, r.linear.weight) for w, r in zip(weights, model.layers, strict=True))
    assert model.phase_optimizer_settings("finetune") == ("sgd", 0.5, 0.5, 0.0)


def test_fit_learns():
    x, y = prototypes_data()
    model = small_dbn(pretrain_epochs=2)
    result = fit(model, ArrayDataset(x, y), batch_size=32, epochs=15)
    assert [h["phase"] for h in result.history][:6] == ["pretrain:0"] * 2 + ["pretrain:1"] * 2 + ["pretrain:2"] * 2
    assert model.score(x, y) > 0.9


def test_dropout_only_while_training():
    model = small_dbn(dropout=0.5)
    x, _ = prototypes_data(8)
    model.module.eval()
    np.testing.assert_array_equal(model.forward(x).detach(), model.forward(x).detach())
    model.module.train()
    assert not torch.equal(model.forward(x), model.forward(x))


@pytest.mark.parametrize("fields", [{}, {"layers": {0: {"persistent": True}}}])
def test_save_load_round_trip(tmp_path, fields):
    x, y = prototypes_data()
    model = small_dbn(**fields)
    fit(model, ArrayDataset(x, y), batch_size=32, epochs=2)
    model.save(tmp_path)
    loaded = Model.load(tmp_path)
    assert isinstance(loaded, DBN)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(loaded.get_flat_params(), model.get_flat_params())


def test_flat_params_round_trip():
    a, b = small_dbn(seed=1), small_dbn(seed=2)
    assert not np.array_equal(a.get_flat_params(), b.get_flat_params())
    b.set_flat_params(a.get_flat_params())
    np.testing.assert_array_equal(a.get_flat_params(), b.get_flat_params())
    x, _ = prototypes_data(20)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    sizes = [(N_IN, 16), (16, 12), (12, 8)]
    assert a.n_params == sum(i * o + o + i for i, o in sizes) + 8 * N_CLASSES + N_CLASSES
