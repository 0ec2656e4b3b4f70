"""Files that reach the disk whole: written to a temporary name, flushed (fsync), renamed into place.

A crash (or a power cut) mid-write leaves the previous file intact, and a file that counts as
written is on the disk: the directory is flushed after the rename too. Every layer that stores
something (model files, run checkpoints, the file registry) writes through here, so this module
imports nothing of deepgrid.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # A few file systems cannot fsync a directory (EINVAL): nothing more can be done there.
        if not (path.is_dir() and e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def synced_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(path)`` and fsync the file: for a file inside a directory that is itself made
    whole by a rename (a checkpoint's staging directory), where a rename per file would add nothing."""
    write(path)
    fsync_path(path)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)``, fsync it, rename it onto ``path`` (atomic on POSIX), fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_path(Path(tmp))  # the data first: a rename that reaches the disk before it leaves an empty file
        os.replace(tmp, path)
        fsync_path(path.parent)  # the rename itself
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
