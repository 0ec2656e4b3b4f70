"""The model kinds a configuration may name, known without importing the models (and torch).

A Conf checks its ``model`` when it is built; the model classes live a layer above (deepgrid.models,
which imports torch), so the built-in names are listed here as data and ``models.registry.register``
adds any other kind a user registers. tests/unit/test_layers.py checks that this list and the
registered built-in kinds agree.

Beside them a Conf may name a user's own network (deepgrid.models.user): an import path
``pkg.module:ClassOrFactory``, or the name an installed package gives one in the entry-point group
``deepgrid.models``. Only the spelling is checked here; the import happens when the model is built.
"""

from __future__ import annotations

import difflib
import re
from importlib.metadata import entry_points

from deepgrid.errors import ConfigError

# One per model kind under deepgrid/models/ registered with @register (its class's `name`).
BUILTIN_MODELS = ("cnn", "dbn", "mlp", "rbm", "sda")
# An installed package registers `name = pkg.module:ClassOrFactory` in this group.
ENTRY_POINT_GROUP = "deepgrid.models"
# pkg.module:Attribute (dotted on both sides: a class inside a class, a module inside a package).
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
IMPORT_PATH = re.compile(rf"{_DOTTED}:{_DOTTED}")

_names: set[str] = set(BUILTIN_MODELS)


def add_model_name(name: str) -> None:
    """Make ``name`` a kind a Conf may name (``models.registry.register`` calls this)."""
    _names.add(name)


def model_names() -> list[str]:
    return sorted(_names)


def entry_point_names() -> list[str]:
    """The model names installed packages register (group ``deepgrid.models``); nothing is imported."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def is_import_path(name: str) -> bool:
    return IMPORT_PATH.fullmatch(name) is not None


def check_model_name(name: str) -> str:
    """The canonical name, or a ConfigError listing the known ones.

    Built-in and registered kinds are case-insensitive (``MLP`` is ``mlp``); an import path and an
    entry point's name are kept as written, since Python's names are case-sensitive.
    """
    known = model_names()
    text = str(name).strip()
    key = text.lower()
    if key in known:
        return key
    if is_import_path(text):
        return text
    installed = entry_point_names()
    if text in installed:
        return text
    if ":" in text:
        raise ConfigError(
            f"Received an invalid value for `model`, expected a built-in kind or an import path "
            f"'pkg.module:ClassOrFactory' (Python names separated by dots, one colon). Received: model={name!r}.")
    everything = known + [n for n in installed if n not in known]
    close = difflib.get_close_matches(key, everything, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"Received an invalid value for `model`, expected one of {', '.join(map(repr, everything))}, or "
        f"'pkg.module:ClassOrFactory' for your own torch.nn.Module. Received: model={name!r}.{hint}"
    )
