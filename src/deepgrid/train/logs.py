"""Where deepgrid's lines go: the "deepgrid" logger, set up once by the command line or on first use.

Everything deepgrid says while it trains (the effective configuration, workers joining, epochs,
progress) is an INFO record of the ``deepgrid`` logger; warnings and errors are WARNING and up.

- The command line (``configure_cli_logging``) puts one timestamped stderr handler on the root
  logger, as ``logging.basicConfig`` would, and sets the ``deepgrid`` logger's level from
  ``-v`` (DEBUG) and ``-q`` (WARNING); other libraries stay at WARNING.
- The Python API (``install_default_handler``, called by ``ActorNetworkRunner``) shows progress
  by default, as a user running a training script expects: when nobody configured logging, the
  ``deepgrid`` logger gets a stderr handler at INFO. A program that configures logging itself is
  left alone (the handler stands aside as soon as the root logger has handlers of its own);
  ``logging.getLogger("deepgrid").setLevel(logging.WARNING)`` silences deepgrid.

Lines go through ``tqdm.write``, so that a progress bar on the same terminal is redrawn below
them instead of being cut in two.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from deepgrid.errors import ConfigError

LOGGER = "deepgrid"
FORMAT = "%(asctime)s %(message)s"
VERBOSE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

_cli_handler: logging.Handler | None = None
_default_handler: logging.Handler | None = None
_default_tried = False


class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest and notebooks swap it), through
    ``tqdm.write`` so that progress bars stay whole."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def configure_cli_logging(level: int = logging.INFO) -> None:
    """The command line's logging: one stderr handler with timestamps on the root logger, and
    the ``deepgrid`` logger at ``level``. Called again (``main`` run twice in one process), it
    replaces its handler rather than adding a second."""
    global _cli_handler
    root = logging.getLogger()
    if _cli_handler is not None:
        root.removeHandler(_cli_handler)
    if _default_handler is not None:  # the API's handler would print every line a second time
        logging.getLogger(LOGGER).removeHandler(_default_handler)
    _cli_handler = StderrHandler()
    verbose = level <= logging.DEBUG
    _cli_handler.setFormatter(logging.Formatter(VERBOSE_FORMAT if verbose else FORMAT, DATE_FORMAT))
    root.addHandler(_cli_handler)
    logging.getLogger(LOGGER).setLevel(level)


def install_default_handler() -> None:
    """For the Python API: show deepgrid's INFO lines on stderr unless logging was configured.

    Done once per process. If the program configures logging later, the handler stands aside
    (its filter sees the root logger's handlers) and the program's configuration prints the lines.
    """
    global _default_handler, _default_tried
    if _default_tried:
        return
    _default_tried = True
    logger = logging.getLogger(LOGGER)
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(lambda record: not logging.getLogger().handlers)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    _default_handler = handler


def shows_progress() -> bool:
    """Whether progress is wanted: the ``deepgrid`` logger passes INFO (not ``-q``)."""
    return logging.getLogger(LOGGER).isEnabledFor(logging.INFO)


def verbose() -> bool:
    """``-v``: the ``deepgrid`` logger passes DEBUG."""
    return logging.getLogger(LOGGER).isEnabledFor(logging.DEBUG)


def add_verbosity_flags(parser: argparse.ArgumentParser, commands: Iterable[argparse.ArgumentParser]) -> None:
    """``-v/--verbose`` and ``-q/--quiet`` before the command (``deepgrid -q train``) and after it
    (``deepgrid train -q``)."""
    for where in (parser, *commands):
        # Under a command the flags default to "not given", so that they do not undo the global ones.
        default: Any = False if where is parser else argparse.SUPPRESS
        group = where.add_mutually_exclusive_group()
        group.add_argument("-v", "--verbose", action="store_true", default=default,
                           help="say more: debug lines, and the effective configuration before anything is checked")
        group.add_argument("-q", "--quiet", action="store_true", default=default,
                           help="print nothing but warnings and errors (and the --json line)")


def level_of(args: argparse.Namespace) -> int:
    """The ``deepgrid`` logger's level for parsed ``-v``/``-q`` (both given: a ConfigError)."""
    if args.verbose and args.quiet:
        raise ConfigError("-v/--verbose and -q/--quiet exclude each other; give one of them.")
    return logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO


def show_configuration(describe: str, *, checked: bool) -> None:
    """The effective configuration, printed once: by default after the Conf, its data files and the
    servers it names were checked (``checked``), so that an error is the last thing on the screen
    and not 70 lines below the configuration; with ``-v`` first, before any check."""
    if verbose() != checked:
        logging.getLogger(LOGGER).info("deepgrid: effective configuration\n" + describe)
