"""Model kinds by name: the seed's ``-a dbn``. ``get("dbn")`` gives the class."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from deepgrid.errors import ConfigError

if TYPE_CHECKING:
    from deepgrid.models.base import Model

_MODELS: dict[str, type[Model]] = {}


def register(cls: type[Model]) -> type[Model]:
    """Class decorator: make a model kind available by its ``name``."""
    _MODELS[cls.name] = cls
    return cls


def names() -> list[str]:
    _load_builtins()
    return sorted(_MODELS)


def check_model_name(name: str) -> str:
    """The canonical name, or a ConfigError listing the known ones."""
    known = names()
    key = str(name).lower()
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Received an invalid value for `model`, expected one of {', '.join(map(repr, known))}. "
            f"Received: model={name!r}.{hint}"
        )
    return key


def get(name: str) -> type[Model]:
    return _MODELS[check_model_name(name)]


def _load_builtins() -> None:
    # Importing the modules runs their @register decorators.
    from deepgrid.models import autoencoder, cnn, dbn, mlp, rbm  # noqa: F401
