"""Argparse value types shared by every ``deepgrid`` command.

They live in config, the lowest layer that knows the command line, so that cli and the commands
it adds (cloud's ``cluster``, among others) can use one definition: cli imports them, so they
cannot import cli.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argument that must be a whole number above zero; argparse turns the error into one line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
