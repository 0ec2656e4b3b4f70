"""deepgrid: distributed deep-learning training on Ray."""

from deepgrid.config.conf import Conf
from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.errors import ClusterError, ConfigError, DataError, DeepgridError, ModelError

__version__ = "0.1.0"

__all__ = [
    "ClusterError",
    "Conf",
    "ConfigError",
    "DataError",
    "DeepgridError",
    "ModelError",
    "NeuralNetConfiguration",
    "__version__",
]
