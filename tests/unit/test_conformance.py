"""What every registered model does, written against the Model interface only.

Parametrised over ``deepgrid.models.registry.names()``: a new model kind is
checked as soon as it registers. A kind that needs special sizes (the CNN's
input shape) says so in ``NETWORK``; any other gets the default small network.
Also here: ``TorchModel`` wrapping a user's own ``nn.Sequential``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.errors import ModelError
from deepgrid.models import registry
from deepgrid.models.base import FINETUNE, Model, StepResult
from deepgrid.models.module import TorchModel
from deepgrid.train.loop import fit

SMALL = {"n_in": 64, "n_out": 10, "hidden_layer_sizes": (32, 16), "seed": 5}
NETWORK = {
    "cnn": {"n_in": 784, "n_out": 10, "hidden_layer_sizes": (32, 16), "input_shape": (1, 28, 28),
            "conv_channels": (4, 8), "kernel_size": 3, "seed": 5},
}
MODEL_NAMES = registry.names()


def network(name: str, **changes) -> NeuralNetConfiguration:
    return NeuralNetConfiguration(**{**NETWORK.get(name, SMALL), **changes})


def build(name: str, **changes) -> Model:
    return registry.get(name)(network(name, **changes))


@pytest.fixture
def data_for(make_class_data):
    """(x, y) that fit a model: data_for(model, n=64, seed=0)."""

    def make(model: Model, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return make_class_data(n, model.conf.n_in, model.conf.n_out, seed=seed)

    return make


def test_builtin_kinds_are_registered():
    assert {"mlp", "cnn"} <= set(MODEL_NAMES)
    for name in MODEL_NAMES:
        assert registry.get(name).name == name


@pytest.fixture(params=MODEL_NAMES)
def name(request) -> str:
    return request.param


def test_prediction_shapes(name, data_for):
    model = build(name)
    x, _ = data_for(model, 37)
    proba = model.predict_proba(x)
    assert proba.shape == (37, 10) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert (proba >= 0).all()
    labels = model.predict(x.numpy())  # NumPy in, as a user would
    assert labels.shape == (37,)
    np.testing.assert_array_equal(labels, proba.argmax(axis=1))
    assert model.predict_proba(x[0]).shape == (1, 10)  # one example


def test_phases_end_with_finetune(name):
    model = build(name)
    phases = model.phases()
    assert phases and phases[-1].name == FINETUNE and phases[-1].supervised
    assert phases[-1].epochs == model.conf.finetune_epochs
    assert model.phases(3)[-1].epochs == 3
    assert len({p.name for p in phases}) == len(phases)
    for phase in phases[:-1]:
        assert phase.epochs == model.conf.pretrain_epochs


def test_config_round_trip(name):
    model = build(name)
    config = json.loads(json.dumps(model.get_config()))
    assert config["model"] == name
    rebuilt = registry.get(config["model"])(NeuralNetConfiguration.from_dict(config["network"]))
    assert type(rebuilt) is type(model) and rebuilt.conf == model.conf
    assert rebuilt.n_params == model.n_params == len(model.get_flat_params())
    # Built from the same seed: the same initial weights.
    np.testing.assert_array_equal(rebuilt.get_flat_params(), model.get_flat_params())


def test_save_load_round_trip(name, data_for, tmp_path):
    model = build(name)
    x, y = data_for(model)
    model.train_step(model.phases()[-1].name, [(x, y)])  # weights no longer at their initial values
    model.save(tmp_path / "m", extra={"note": "hello"})
    assert json.loads((tmp_path / "m" / "model.json").read_text())["note"] == "hello"
    loaded = Model.load(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.conf == model.conf
    np.testing.assert_array_equal(loaded.get_flat_params(), model.get_flat_params())
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert type(model).load(tmp_path / "m").name == name  # the subclass's own load


def test_load_by_the_wrong_class_raises(name, tmp_path):
    model = build(name)
    model.save(tmp_path / "m")
    other = next(registry.get(n) for n in ("mlp", "cnn") if n != name)
    with pytest.raises(ModelError, match=f"holds a '{name}' model"):
        other.load(tmp_path / "m")


def test_flat_params_round_trip(name):
    model = build(name)
    flat = model.get_flat_params()
    assert flat.dtype == np.float32 and flat.ndim == 1 and len(flat) == model.n_params
    flat[:] = 0  # a copy: changing it does not change the model
    assert np.abs(model.get_flat_params()).sum() > 0
    target = np.random.default_rng(0).standard_normal(model.n_params).astype(np.float32)
    model.set_flat_params(target)
    np.testing.assert_array_equal(model.get_flat_params(), target)
    model.set_flat_params(torch.from_numpy(target * 2))  # a tensor works too
    np.testing.assert_array_equal(model.get_flat_params(), target * 2)
    for wrong in (target[:-1], np.concatenate([target, [0.0]]).astype(np.float32)):
        with pytest.raises(ModelError, match=f"{len(wrong)} values"):
            model.set_flat_params(wrong)
    np.testing.assert_array_equal(model.get_flat_params(), target * 2)  # untouched by the failures


def test_flat_params_carry_between_models(name, data_for):
    a, b = build(name), build(name, seed=99)
    x, _ = data_for(a, 16)
    assert not np.array_equal(a.predict_proba(x), b.predict_proba(x))
    b.set_flat_params(a.get_flat_params())
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))


def test_every_phase_lowers_its_loss(name, data_for):
    model = build(name)
    x, y = data_for(model, 4 * 32, seed=1)
    batches = list(zip(x.split(32), y.split(32), strict=True))
    for phase in model.phases():
        steps = [model.train_step(phase.name, batches) for _ in range(10)]
        assert all(isinstance(s, StepResult) and s.n_samples == 4 * 32 for s in steps)
        losses = [s.loss for s in steps]
        assert all(np.isfinite(losses)), (phase.name, losses)
        assert losses[-1] < losses[0], (phase.name, losses)


def test_training_changes_only_what_the_phase_trains(name, data_for):
    """A pretraining phase leaves the output layer alone; fine-tuning moves something."""
    model = build(name)
    x, y = data_for(model, 32)
    for phase in model.phases():
        before = {k: v.clone() for k, v in model.module.state_dict().items()}
        model.train_step(phase.name, [(x, y)])
        after = model.module.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed, phase.name
        trained = {id(p) for p in model.phase_parameters(phase.name)}
        untouched = [k for k, p in model.module.named_parameters() if id(p) not in trained]
        assert not changed & set(untouched), (phase.name, changed & set(untouched))


def test_score_and_evaluate(name, data_for):
    model = build(name)
    x, y = data_for(model, 50)
    accuracy = model.score(x, y)
    assert 0.0 <= accuracy <= 1.0
    ev = model.evaluate(x, y.numpy())
    assert ev.n_examples == 50 and ev.accuracy == pytest.approx(accuracy)


# -- a user's own module ---------------------------------------------------------------------------


def user_module() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_torch_model_trains_saves_and_loads(tmp_path, make_class_data):
    torch.manual_seed(0)
    model = TorchModel(user_module(), n_in=64, optimizer="adam", finetune_lr=0.01)
    x, y = make_class_data(320, 64, seed=3)
    before = model.score(x, y)
    fit(model, x.numpy(), y.numpy(), epochs=5, batch_size=32)
    after = model.score(x, y)
    assert after > max(before, 0.5)
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "model.json").read_text())["model"] == "module"

    loaded = TorchModel.load(tmp_path / "m", module=user_module())
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert loaded.conf == model.conf
    with pytest.raises(ModelError, match="module="):
        Model.load(tmp_path / "m")  # the module's code is the user's: it must be given
    with pytest.raises(ModelError, match="does not fit"):
        TorchModel.load(tmp_path / "m", module=nn.Sequential(nn.Linear(64, 10)))


def test_torch_model_custom_loss(make_class_data):
    calls = []

    def loss(logits, y):
        calls.append(len(y))
        return nn.functional.cross_entropy(logits, y)

    model = TorchModel(user_module(), loss=loss, n_in=64)
    x, y = make_class_data(64, 64)
    result = model.train_step(FINETUNE, [(x[:32], y[:32]), (x[32:], y[32:])])
    assert calls == [32, 32] and result.n_samples == 64
