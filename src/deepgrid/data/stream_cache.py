"""CSV, Parquet and image folders larger than memory (``memory_map: true``): an on-disk .npy cache.

Jobs are ranges of one epoch-wide shuffle that any worker may train, so a worker cannot own a
fixed shard of the files. Instead each host streams a split once, in bounded memory, into a
features ``x.npy`` and a labels ``y.npy`` and then trains from them as ``dataset: npy`` does
(:class:`deepgrid.data.mapped.MappedDataset`: a worker reads only its jobs' rows). CSV is read
a block of a quarter megabyte at a time, Parquet a batch of rows at a time, images one by one
(:func:`deepgrid.data.tabular.table_batches`, :func:`deepgrid.data.images.read_image`); what
is held is one block and the labels (8 bytes an example).

The features are stored as the in-memory readers produce them before scaling (CSV and Parquet
as float32, images as uint8 bytes), so ``batch`` gives the same tensors, ``digest`` the same
checksum and a run the same parameters as without ``memory_map``. The checks are the in-memory
ones with the same one-line errors naming the source file; a missing or infinite feature is
recorded at conversion and refused at opening only when it lies within ``train_limit``, as in memory.

Where: ``$DEEPGRID_HOME/cache/data`` (else ``~/.cache/deepgrid/data``), beside the S3 cache
(:mod:`deepgrid.storage.cache`), never beside the data (often read-only, or shared by hosts).
One folder per split and reading, named by a hash of the source files' paths, sizes and
modification times and of the reading options (``label_column``, ``image_mode``,
``network.n_in``): a changed file is converted again, never read stale. A conversion writes
into a temporary folder and renames it into place, holding a lock file, so a crash leaves no
half cache (the next conversion of the same key removes the leftover) and processes on one
host (a master and its workers) convert once between them. An entry whose files do not have
the sizes its ``meta.json`` records is converted again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepgrid.data.mapped import MappedDataset, open_npy
from deepgrid.data.sources import check_labels
from deepgrid.errors import DataError

log = logging.getLogger("deepgrid")

# Bumped whenever what a cache entry holds changes: older entries are then ignored.
CACHE_VERSION = 1
# The .npy header is written before the row count is known and rewritten after, in the same
# 128 bytes (a version 1.0 header; numpy's own padding depends on its version).
_HEADER_BYTES = 128
_UNSAFE = re.compile(r"[^0-9A-Za-z._-]+")
Blocks = Iterator[tuple[np.ndarray, np.ndarray]]


class Restart(Exception):
    """Raised by a source's blocks: what was written is wrong, convert again from the first block."""


def cache_root() -> Path:
    """``$DEEPGRID_HOME/cache/data`` when DEEPGRID_HOME is set, else ``~/.cache/deepgrid/data``."""
    home = os.environ.get("DEEPGRID_HOME")
    return Path(home) / "cache" / "data" if home else Path.home() / ".cache" / "deepgrid" / "data"


def open_tables(files: list[Path], kind: str, *, label_column: str, n_in: int, n_out: int, binarize: bool,
                limit: int | None, where: str) -> MappedDataset:
    """CSV or Parquet ``files`` (a split's shards, in order) as one mapped data set."""
    from deepgrid.data.tabular import WiderColumn, table_batches, table_columns

    types: dict[Path, dict[str, Any]] = {}  # a CSV file's column types once a block has widened them

    def blocks() -> Blocks:
        # Every shard's header first: shards of different widths, then a width other than n_in,
        # are refused before anything is converted, in the order the in-memory reader refuses them.
        widths = [len(table_columns(file, kind, label_column)) for file in files]
        for file, width in zip(files, widths, strict=True):
            if width != widths[0]:
                raise DataError(f"{file}: features of shape {(width,)} per example, but {files[0].name} has "
                                f"{(widths[0],)}; every shard of a split must have the same columns.")
        _check_width(widths[0], n_in, where)
        yield np.empty((0, widths[0]), np.float32), np.empty(0, np.int64)  # the shape, should no rows follow
        for file in files:
            try:
                yield from table_batches(file, kind, label_column, types.get(file))
            except WiderColumn as e:
                types[file] = e.types
                raise Restart(str(e)) from None

    key = {"kind": kind, "files": [_stat(file) for file in files], "label_column": label_column, "n_in": n_in}
    return _open(key, where, blocks, n_in=n_in, n_out=n_out, binarize=binarize, limit=limit)


def open_images(folder: Path, *, mode: str, n_in: int, n_out: int, binarize: bool,
                limit: int | None) -> MappedDataset:
    """An image folder (``train``/``test`` of class folders) as one mapped data set of uint8 pixels."""
    from deepgrid.data.images import image_files, read_image

    # The limit picks which files (spread over the classes), as in memory: it is part of the list.
    files = image_files(folder, n_in=n_in, mode=mode, limit=limit)

    def blocks() -> Blocks:
        for path, label in files:
            yield read_image(path, n_in=n_in, mode=mode)[None, :], np.array([label], dtype=np.int64)

    key = {"kind": "images", "files": [[*_stat(path), label] for path, label in files], "image_mode": mode,
           "n_in": n_in}
    return _open(key, str(folder), blocks, n_in=n_in, n_out=n_out, binarize=binarize, limit=None)


def _stat(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _check_width(width: int, n_in: int, where: str) -> None:
    if width != n_in:
        raise DataError(f"{where}: {width} features per example but network.n_in is {n_in}; "
                        f"set network.n_in to {width}.")


def _open(key: dict[str, Any], where: str, blocks: Callable[[], Blocks], *, n_in: int, n_out: int,
          binarize: bool, limit: int | None) -> MappedDataset:
    folder = cached(key, where, blocks, n_out=n_out)
    meta = json.loads((folder / "meta.json").read_text())
    # The in-memory checks in finish()'s order, naming the source rather than the cache.
    _check_width(meta["n_features"], n_in, where)
    labels = np.load(folder / "y.npy", allow_pickle=False)
    check_labels(labels, n_out, where)
    bad = meta["first_nonfinite"]
    if bad is not None and (limit is None or bad < limit):
        raise DataError(f"{where}: example {bad} has a missing, NaN or infinite feature; clean or drop it.")
    return open_npy(folder / "x.npy", folder / "y.npy", n_in=n_in, n_out=n_out, binarize=binarize, limit=limit)


def cached(key: dict[str, Any], where: str, blocks: Callable[[], Blocks], *, n_out: int,
           root: Path | None = None) -> Path:
    """The cache folder for ``key`` (``x.npy``, ``y.npy``, ``meta.json``), converted from ``blocks``
    unless a complete one is there already."""
    root = root if root is not None else cache_root()
    name = f"{key['kind']}-{_UNSAFE.sub('_', Path(where).name)[:40]}-{_key_hash(key)}"
    folder = root / name
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        # One converter per entry on this host; the others wait here and then find it done.
        fcntl.flock(lock, fcntl.LOCK_EX)
        problem = _incomplete(folder)
        if problem is None:
            log.info("%s: reusing its converted copy %s", where, folder)
            return folder
        for leftover in root.glob(f".{name}.tmp-*"):  # a conversion that crashed: nobody else holds the lock
            shutil.rmtree(leftover, ignore_errors=True)
        if folder.exists():
            log.warning("%s: its converted copy %s is incomplete (%s); converting again", where, folder, problem)
            aside = root / f".{name}.tmp-stale-{os.getpid()}"
            folder.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        started = time.perf_counter()
        tmp = root / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            while True:
                try:
                    meta = _convert(blocks(), tmp, where, n_out)
                    break
                except Restart as e:  # rare (a CSV column typed wider far down): read once more
                    log.info("%s; converting again from the first row", e)
            # What it was made from, for whoever looks (an image folder's first files only).
            meta["source"] = {**key, "files": key["files"][:1000], "n_files": len(key["files"])}
            _write_synced(tmp / "meta.json", json.dumps(meta, indent=1).encode())
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("%s: converted to %s (%d examples, %.1f MB) in %.1f s; later runs reuse it", where, folder,
                 meta["rows"], meta["x_bytes"] / 1e6, time.perf_counter() - started)
        return folder


def _key_hash(key: dict[str, Any]) -> str:
    """A hash of the key, its file list fed a file at a time (an image folder may list millions)."""
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **key, "files": None}, sort_keys=True).encode())
    for entry in key["files"]:
        h.update(json.dumps(entry).encode() + b"\n")
    return h.hexdigest()[:20]


def _incomplete(folder: Path) -> str | None:
    """Why ``folder`` is not a complete cache entry, or None when it is."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return "no meta.json" if folder.exists() else "absent"
    except (OSError, ValueError) as e:
        return f"meta.json unreadable: {e}"
    if meta.get("version") != CACHE_VERSION:
        return f"cache version {meta.get('version')}, not {CACHE_VERSION}"
    for name in ("x", "y"):
        path = folder / f"{name}.npy"
        size = path.stat().st_size if path.is_file() else None
        if size != meta.get(f"{name}_bytes"):
            return f"{path.name} has {size} bytes, not {meta.get(f'{name}_bytes')}"
    return None


def _convert(blocks: Blocks, folder: Path, where: str, n_out: int) -> dict[str, Any]:
    """Write ``blocks`` into ``folder``/x.npy and y.npy; the facts the opening checks need."""
    rows, width, dtype, first_nonfinite = 0, None, None, None
    labels: list[np.ndarray] = []
    with open(folder / "x.npy", "wb") as out:
        out.write(b"\0" * _HEADER_BYTES)  # the header, once the shape is known
        for x, y in blocks:
            if width is None:
                width, dtype = x.shape[1], x.dtype
            if first_nonfinite is None and x.dtype.kind == "f" and not np.isfinite(x).all():
                first_nonfinite = rows + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            out.write(np.ascontiguousarray(x, dtype=dtype).data)
            labels.append(y)
            rows += len(x)
        if width is None:
            raise DataError(f"{where}: no examples.")
        out.seek(0)
        out.write(_npy_header(np.dtype(dtype), rows, width))
        out.flush()
        os.fsync(out.fileno())
    # Whole class indices in range, or the in-memory reader's line; stored as int64.
    y = check_labels(np.concatenate(labels) if labels else np.zeros(0, np.int64), n_out, where).numpy()
    with open(folder / "y.npy", "wb") as out:
        np.save(out, y)
        out.flush()
        os.fsync(out.fileno())
    return {"version": CACHE_VERSION, "rows": rows, "n_features": width, "dtype": np.dtype(dtype).str,
            "first_nonfinite": first_nonfinite, "x_bytes": (folder / "x.npy").stat().st_size,
            "y_bytes": (folder / "y.npy").stat().st_size}


def _npy_header(dtype: np.dtype[Any], rows: int, width: int) -> bytes:
    """A .npy version 1.0 header of exactly ``_HEADER_BYTES`` for a C-ordered (rows, width) array."""
    text = f"{{'descr': {np.lib.format.dtype_to_descr(dtype)!r}, 'fortran_order': False, 'shape': ({rows}, {width}), }}"
    text = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
