"""deepgrid's errors: one base class, a few kinds, one message template.

A user's mistake is reported as a single line that says what was wrong, what
was expected and how to fix it. The CLI prints ``str(error)`` and exits non-zero;
library callers catch :class:`DeepgridError`.
"""

from __future__ import annotations

from typing import Any


class DeepgridError(Exception):
    """Base class of every error deepgrid raises on purpose."""


class ConfigError(DeepgridError, ValueError):
    """A configuration value, file or key is not valid."""


class DataError(DeepgridError, ValueError):
    """Input data are missing, damaged or do not fit the model."""


class ModelError(DeepgridError):
    """A model cannot be built, loaded or used as asked."""


class ClusterError(DeepgridError):
    """The engine, a worker or a cluster service cannot do what was asked."""


def invalid(field: str, value: Any, expected: str, fix: str | None = None) -> str:
    """The one template for a bad value, in Keras' words.

    >>> invalid("epochs", -1, "a positive integer")
    'Received an invalid value for `epochs`, expected a positive integer. Received: epochs=-1'
    """
    msg = f"Received an invalid value for `{field}`, expected {expected}. Received: {field}={value!r}"
    return f"{msg}. {fix}" if fix else msg
