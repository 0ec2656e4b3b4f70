"""deepgrid: distributed deep-learning training on Ray.

``from deepgrid import Conf`` stays light (no torch, no Ray): the configurations and errors are
imported here; the master and the training loop are imported on first use
(``deepgrid.ActorNetworkRunner`` imports Ray then, not before). scikit-learn's estimator is
``deepgrid.sklearn.DeepgridClassifier`` (scikit-learn is optional).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from deepgrid.config.conf import Conf
from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.errors import ClusterError, ConfigError, DataError, DeepgridError, ModelError

# The one version source: pyproject.toml reads it (dynamic version), `deepgrid --version` prints it.
__version__ = "0.1.0"

# Name -> the module it comes from, imported when the name is first asked for (PEP 562).
_LAZY = {
    "ActorNetworkRunner": "deepgrid.distributed.runner",
    "fit": "deepgrid.train.loop",
    "FitResult": "deepgrid.train.loop",
}

if TYPE_CHECKING:  # for type checkers and editors; never imported at run time
    from deepgrid.distributed.runner import ActorNetworkRunner
    from deepgrid.train.loop import FitResult, fit

__all__ = [
    "ActorNetworkRunner",
    "ClusterError",
    "Conf",
    "ConfigError",
    "DataError",
    "DeepgridError",
    "FitResult",
    "ModelError",
    "NeuralNetConfiguration",
    "__version__",
    "fit",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'deepgrid' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # the next lookup finds it without coming here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
