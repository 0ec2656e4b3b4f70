"""Model kinds by name: the seed's ``-a dbn``. ``get("dbn")`` gives the class.

A name that is no built-in or registered kind is a user's own network: ``pkg.module:ClassOrFactory``
or an entry point of the group ``deepgrid.models`` (deepgrid.models.user builds its class).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deepgrid.config.model_names import add_model_name, check_model_name

if TYPE_CHECKING:
    from deepgrid.models.base import Model

__all__ = ["check_model_name", "get", "names", "register"]

_MODELS: dict[str, type[Model]] = {}


def register(cls: type[Model]) -> type[Model]:
    """Class decorator: make a model kind available by its ``name`` (to ``get`` and to a Conf)."""
    _MODELS[cls.name] = cls
    add_model_name(cls.name)
    return cls


def names() -> list[str]:
    _load_builtins()
    return sorted(_MODELS)


def get(name: str) -> type[Model]:
    """The model class ``name`` names; for a user's network, a ConfigError when it cannot be imported."""
    _load_builtins()
    key = check_model_name(name)
    if key in _MODELS:
        return _MODELS[key]
    from deepgrid.models.user import user_model_class

    return user_model_class(key)


def _load_builtins() -> None:
    # Importing the modules runs their @register decorators.
    from deepgrid.models import autoencoder, cnn, dbn, mlp, rbm  # noqa: F401
