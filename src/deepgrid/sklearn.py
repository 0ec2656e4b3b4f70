"""scikit-learn's estimator interface over deepgrid's models: clone, Pipeline, GridSearchCV.

    from deepgrid.sklearn import DeepgridClassifier
    clf = DeepgridClassifier(model="mlp", hidden_layer_sizes=(64,), epochs=5)
    GridSearchCV(make_pipeline(StandardScaler(), clf), {"deepgridclassifier__finetune_lr": [0.05, 0.1]})

A wrapper, not ``get_params``/``set_params`` on ``Model`` itself: a Model builds its network in its
constructor and has no ``fit`` (training is ``deepgrid.train.loop.fit``, a layer above the models),
while scikit-learn's contract is the reverse: the constructor only stores settings, ``fit`` builds
and trains, and ``set_params`` may change any setting between fits. The estimator holds the settings
(the model kind, fit's settings and any NeuralNetConfiguration field); each ``fit`` builds a new
model (``model_``) from them. ``n_in`` and ``n_out`` default to the data's feature and class counts.

scikit-learn is optional (``pip install 'deepgrid[sklearn]'``); nothing else in deepgrid imports it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.config.validation import reject_unknown_keys
from deepgrid.errors import DataError

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_array, check_is_fitted, check_X_y
except ImportError as e:  # one clear line instead of a traceback into this module
    raise ImportError("deepgrid.sklearn needs scikit-learn: pip install 'deepgrid[sklearn]'") from e

# The network's settings an estimator accepts as keywords (as a Conf's `network:` section does).
NETWORK_FIELDS = tuple(f.name for f in dataclasses.fields(NeuralNetConfiguration))


class DeepgridClassifier(ClassifierMixin, BaseEstimator):
    """A deepgrid network as a scikit-learn classifier, trained in this process by ``fit``.

    ``model``: a registered kind ("mlp", "dbn", "cnn", "rbm", "autoencoder"). ``epochs``: fine-tuning
    passes (default: the network's ``finetune_epochs``). ``validation_fraction``: the share of the
    training data held out for validation each epoch (its loss in ``history_``; with ``patience``,
    early stopping). Every other keyword is a NeuralNetConfiguration field (``hidden_layer_sizes``,
    ``finetune_lr``, ``optimizer``, ``seed`` ...).

    After ``fit``: ``model_`` (the trained deepgrid Model), ``classes_``, ``n_features_in_`` and
    ``history_`` (a dict per epoch, as ``fit`` keeps on the model).
    """

    def __init__(self, model: str = "mlp", *, epochs: int | None = None, batch_size: int = 64,
                 job_size: int = 20, validation_fraction: float = 0.0, patience: int = 0,
                 min_improvement: float = 1e-3, **network: Any) -> None:
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.job_size = job_size
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.min_improvement = min_improvement
        reject_unknown_keys("DeepgridClassifier's network settings", network, NETWORK_FIELDS)
        for name, value in network.items():
            setattr(self, name, value)

    # -- parameters: the constructor's own, and the network fields given (a **kwargs scikit-learn
    # cannot see in the signature, so listed here for clone, repr and set_params) ---------------
    def _network(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in NETWORK_FIELDS if name in vars(self)}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {**super().get_params(deep=deep), **self._network()}

    def set_params(self, **params: Any) -> DeepgridClassifier:
        network = {name: params.pop(name) for name in list(params) if name in NETWORK_FIELDS}
        for name, value in network.items():
            setattr(self, name, value)
        if params:
            super().set_params(**params)
        return self

    # -- scikit-learn's methods -------------------------------------------------------------------
    def fit(self, X: Any, y: Any, validation_data: tuple[Any, Any] | None = None) -> DeepgridClassifier:
        """Build a new model from the settings and train it on (X, y); ``validation_data`` (x, y)
        is used instead of ``validation_fraction`` when given."""
        from deepgrid.data.dataset import ArrayDataset
        from deepgrid.models import registry
        from deepgrid.train.loop import fit

        x, labels = check_X_y(X, y, dtype=np.float32)
        check_classification_targets(labels)
        self.classes_, codes = np.unique(labels, return_inverse=True)
        self.n_features_in_ = x.shape[1]
        conf = NeuralNetConfiguration(**{"n_in": x.shape[1], "n_out": len(self.classes_), **self._network()})
        self.model_ = registry.get(self.model)(conf)
        train = ArrayDataset.from_any(x, codes, n_in=conf.n_in, n_classes=conf.n_out)
        validation = None
        if validation_data is not None:
            validation = ArrayDataset.from_any(check_array(validation_data[0], dtype=np.float32),
                                               self._codes(validation_data[1]), n_in=conf.n_in, n_classes=conf.n_out)
        elif self.validation_fraction > 0:
            train, validation = train.split(self.validation_fraction, seed=conf.seed)
        fit(self.model_, train, epochs=self.epochs, batch_size=self.batch_size, job_size=self.job_size,
            validation_data=validation, patience=self.patience, min_improvement=self.min_improvement)
        self.history_ = self.model_.history_  # type: ignore[attr-defined]
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (N, n_classes), columns in ``classes_`` order."""
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(check_array(X, dtype=np.float32))

    def predict(self, X: Any) -> np.ndarray:
        """The predicted class of each row (labels as given to ``fit``)."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def _codes(self, y: Any) -> np.ndarray:
        """Labels as indices into ``classes_``; a label fit never saw is a DataError."""
        labels = np.asarray(y)
        codes = np.searchsorted(self.classes_, labels).clip(0, len(self.classes_) - 1)
        unknown = labels[self.classes_[codes] != labels]
        if len(unknown):
            raise DataError(f"validation_data holds label {unknown[0]!r}, not among the training labels "
                            f"{self.classes_.tolist()}.")
        return codes
