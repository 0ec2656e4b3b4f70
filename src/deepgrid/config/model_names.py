"""The model kinds a configuration may name, known without importing the models (and torch).

A Conf checks its ``model`` when it is built; the model classes live a layer above (deepgrid.models,
which imports torch), so the built-in names are listed here as data and ``models.registry.register``
adds any other kind a user registers. tests/unit/test_layers.py checks that this list and the
registered built-in kinds agree.
"""

from __future__ import annotations

import difflib

from deepgrid.errors import ConfigError

# One per model kind under deepgrid/models/ registered with @register (its class's `name`).
BUILTIN_MODELS = ("cnn", "dbn", "mlp", "rbm", "sda")

_names: set[str] = set(BUILTIN_MODELS)


def add_model_name(name: str) -> None:
    """Make ``name`` a kind a Conf may name (``models.registry.register`` calls this)."""
    _names.add(name)


def model_names() -> list[str]:
    return sorted(_names)


def check_model_name(name: str) -> str:
    """The canonical name, or a ConfigError listing the known ones."""
    known = model_names()
    key = str(name).lower()
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Received an invalid value for `model`, expected one of {', '.join(map(repr, known))}. "
            f"Received: model={name!r}.{hint}"
        )
    return key
