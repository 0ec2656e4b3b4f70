"""Python API habits (issue 11): fit's history on the model, validation_data, the top package's
names (light to import), and scikit-learn's estimator interface (clone, Pipeline, GridSearchCV)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import deepgrid
from deepgrid.data.dataset import ArrayDataset
from deepgrid.errors import ConfigError, DataError
from deepgrid.models.mlp import MLP
from deepgrid.train.loop import fit
from tests.conftest import class_data

SMALL = {"n_in": 32, "n_out": 4, "hidden_layer_sizes": (16,)}


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = class_data(240, 32, 4, seed=2)
    return x.numpy(), y.numpy()


def test_fit_keeps_its_history_on_the_model(data):
    model = MLP(**SMALL)
    result = fit(model, *data, epochs=3, batch_size=32)
    assert model.history_ is result.history
    assert [h["epoch"] for h in model.history_] == [1, 2, 3]
    fit(model, *data, epochs=1, batch_size=32)
    assert len(model.history_) == 1  # each fit starts a new history, as Keras's does


def test_validation_data_pair_or_dataset(data):
    x, y = data
    by_pair, by_dataset, by_old_name = MLP(**SMALL), MLP(**SMALL), MLP(**SMALL)
    fit(by_pair, x[:200], y[:200], epochs=2, batch_size=32, validation_data=(x[200:], y[200:]))
    held_out = ArrayDataset.from_any(x[200:], y[200:], n_in=32)
    fit(by_dataset, x[:200], y[:200], epochs=2, batch_size=32, validation_data=held_out)
    fit(by_old_name, x[:200], y[:200], epochs=2, batch_size=32, validation=held_out)
    losses = [[h["validation_loss"] for h in m.history_] for m in (by_pair, by_dataset, by_old_name)]
    assert len(losses[0]) == 2 and losses[0] == losses[1] == losses[2]


def test_validation_data_mistakes_are_one_line(data):
    x, y = data
    with pytest.raises(DataError, match="pair"):
        fit(MLP(**SMALL), x, y, epochs=1, validation_data=x)
    with pytest.raises(DataError, match="not both"):
        fit(MLP(**SMALL), x, y, epochs=1, validation_data=(x, y), validation=ArrayDataset.from_any(x, y))
    with pytest.raises(DataError):  # label 9 with n_out=4
        fit(MLP(**SMALL), x, y, epochs=1, validation_data=(x[:3], [0, 1, 9]))


def test_top_package_names_and_a_light_import():
    from deepgrid.distributed.runner import ActorNetworkRunner

    assert deepgrid.ActorNetworkRunner is ActorNetworkRunner
    assert deepgrid.fit is fit
    assert "ActorNetworkRunner" in dir(deepgrid)
    with pytest.raises(AttributeError):
        _ = deepgrid.no_such_name
    # A fresh interpreter: importing the configuration pulls in neither Ray nor torch.
    code = "import sys; from deepgrid import Conf; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- scikit-learn (optional at run time; the dev extra installs it, so CI runs these) ------------------

needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")


def small_classifier(**overrides):
    from deepgrid.sklearn import DeepgridClassifier

    settings = {"hidden_layer_sizes": (16,), "epochs": 4, "batch_size": 32, "finetune_lr": 0.01,
                "activation": "relu", "optimizer": "adam", **overrides}
    return DeepgridClassifier("mlp", **settings)


@needs_sklearn
def test_params_round_trip_and_clone():
    from sklearn.base import clone

    clf = small_classifier(seed=7)
    params = clf.get_params()
    assert params["model"] == "mlp" and params["hidden_layer_sizes"] == (16,) and params["seed"] == 7
    copy = clone(clf)
    assert copy is not clf and copy.get_params() == params
    copy.set_params(finetune_lr=0.05, batch_size=16)
    assert copy.finetune_lr == 0.05 and copy.batch_size == 16 and clf.finetune_lr == 0.01
    assert "hidden_layer_sizes=(16,)" in repr(clf)
    with pytest.raises(ConfigError, match="hidden_layer_sizes"):
        small_classifier(hiden_layer_sizes=(8,))
    with pytest.raises(ValueError):
        clf.set_params(no_such_setting=1)


@needs_sklearn
def test_fit_predict_score_with_any_labels(data):
    x, y = data
    names = np.array(["ankle boot", "bag", "coat", "dress"])[y]
    clf = small_classifier().fit(x[:200], names[:200], validation_data=(x[200:], names[200:]))
    assert list(clf.classes_) == ["ankle boot", "bag", "coat", "dress"] and clf.n_features_in_ == 32
    assert clf.model_.conf.n_in == 32 and clf.model_.conf.n_out == 4  # taken from the data
    assert len(clf.history_) == 4 and "validation_loss" in clf.history_[-1]
    assert set(clf.predict(x[200:])) <= set(clf.classes_)
    proba = clf.predict_proba(x[200:])
    assert proba.shape == (40, 4) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert clf.score(x[200:], names[200:]) > 0.9
    # The same settings train the same network: clone + fit is reproducible.
    from sklearn.base import clone

    again = clone(clf).fit(x[:200], names[:200], validation_data=(x[200:], names[200:]))
    np.testing.assert_array_equal(again.predict_proba(x[200:]), proba)


@needs_sklearn
def test_pipeline_and_grid_search(data):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = data
    pipeline = make_pipeline(StandardScaler(), small_classifier(epochs=3))
    search = GridSearchCV(pipeline, {"deepgridclassifier__hidden_layer_sizes": [(8,), (16,)],
                                     "deepgridclassifier__finetune_lr": [0.003, 0.01]}, cv=2)
    search.fit(x, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_estimator_[-1].hidden_layer_sizes in ((8,), (16,))
    assert search.score(x, y) > 0.8


@needs_sklearn
def test_validation_fraction_and_unknown_validation_labels(data):
    x, y = data
    clf = small_classifier(epochs=2, validation_fraction=0.25).fit(x, y)
    assert all("validation_loss" in h for h in clf.history_)
    with pytest.raises(DataError, match="not among the training labels"):
        small_classifier(epochs=1).fit(x, y, validation_data=(x[:2], [0, 7]))
