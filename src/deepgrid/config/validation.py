"""One constraint table per configuration class, checked in one place.

Each field names what it accepts; :func:`check` renders every failure with the
same template (``errors.invalid``), so all configuration errors read alike.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from deepgrid.errors import ConfigError, invalid


@dataclass(frozen=True)
class Rule:
    """What one field accepts."""

    kind: str  # "int", "float", "bool", "str", "choice", "sizes", "opt_str", "opt_int", "opt_float"
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # inclusive upper bound
    low_open: bool = False  # True: the lower bound itself is not allowed
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "sizes":
            return "a list of positive integers"
        if self.kind == "bool":
            return "true or false"
        if self.kind in ("str", "opt_str"):
            return "a string" + (" or null" if self.kind == "opt_str" else "")
        integer = self.kind in ("int", "opt_int")
        if self.low == 0 and self.low_open and self.high is None:
            noun, bound = ("a positive integer" if integer else "a positive number"), ""
        else:
            noun = "an integer" if integer else "a number"
            if self.low is not None and self.high is not None:
                bound = f" in {'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}]"
            elif self.low is not None:
                bound = f" >= {_fmt(self.low)}"
            else:
                bound = ""
        return noun + bound + (" or null" if self.kind in ("opt_int", "opt_float") else "")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE_INT = Rule("int", low=0, low_open=True)
NON_NEGATIVE_INT = Rule("int", low=0)
POSITIVE_FLOAT = Rule("float", low=0, low_open=True)
NON_NEGATIVE_FLOAT = Rule("float", low=0)
FRACTION = Rule("float", low=0, high=1)


def check(name: str, value: Any, rule: Rule) -> Any:
    """Return ``value`` normalised for ``rule``, or raise ConfigError."""
    bad = ConfigError(invalid(name, value, rule.describe()))
    if rule.kind in ("opt_str", "opt_int", "opt_float") and value is None:
        return None
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if rule.kind in ("str", "opt_str"):
        if not isinstance(value, str) or not value:
            raise bad
        return value
    if rule.kind == "choice":
        if not isinstance(value, str) or value.lower() not in rule.choices:
            hint = _did_you_mean(str(value), rule.choices)
            raise ConfigError(invalid(name, value, rule.describe(), hint))
        return value.lower()
    if rule.kind == "sizes":
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, Iterable) or isinstance(value, str | bytes):
            raise bad
        sizes = tuple(value)
        if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise bad
        return sizes
    # numbers
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    if rule.kind in ("int", "opt_int"):
        if isinstance(value, float):
            if not value.is_integer():
                raise bad
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise bad
    if rule.low is not None and (value < rule.low or (rule.low_open and value == rule.low)):
        raise bad
    if rule.high is not None and value > rule.high:
        raise bad
    return value


# s3://bucket[/prefix] (deepgrid.storage reads them): S3's bucket naming rules, their common subset.
S3_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?")


def check_location(name: str, value: str | None) -> str | None:
    """A local path, or an ``s3://`` URL that names a bucket S3 could hold: one line otherwise."""
    if value is not None and value[:3].lower() == "s3:" and (not S3_URL.fullmatch(value) or ".." in value.split("/")[2]):
        raise ConfigError(invalid(name, value, "a local path or s3://BUCKET/PREFIX",
                                  "A bucket name is 3 to 63 lowercase letters, digits, dots or hyphens."))
    return value


def _did_you_mean(word: str, options: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word.lower(), list(options), n=1, cutoff=0.6)
    return f"Did you mean {close[0]!r}?" if close else None


def reject_unknown_keys(where: str, given: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise a ConfigError naming the first unknown key, with a suggestion."""
    known = list(known)
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            tail = f" Did you mean `{close[0]}`?" if close else ""
            raise ConfigError(
                f"Unknown key `{key}` in {where}.{tail} Allowed keys: {', '.join(sorted(known))}"
            )
