"""Data larger than memory: ``dataset: npy``, features memory-mapped from disk.

``data_dir`` holds ``train_x.npy`` (N, n_in) or (N, H, W[, C]), ``train_y.npy`` (N,) integer
labels, and the same for ``test``. The features are opened with ``np.load(mmap_mode="r")``
and stay on disk: a :class:`MappedDataset` reads the rows of a batch when the batch is
asked for, so a worker holds its current job's batches and the labels (8 bytes an example),
never the whole array. The operating system's page cache keeps what is read while there is
room and drops it when there is not.

The training order is the in-memory one to the example: ``batch_order`` is the same
permutation, ``batch(idx)`` gives the same tensors (uint8 features scaled by 1/255 as
:mod:`deepgrid.data.sources` scales them in memory), and ``digest`` the same checksum, so a
job means the same batches whether its worker holds the data in memory or maps it.
Each worker reads only the rows of the jobs it trains.

The mapping is advised ``MADV_RANDOM``: a batch's rows are scattered over the file, and the
kernel's read-around on a fault (up to the disk's ``read_ahead_kb``, 8 MB on some virtual
disks) would read megabytes for each 1 KB row; under a memory cap those pages also evict the
ones just read, and an epoch took minutes instead of seconds. Reads of dense runs of rows (a
whole pass, a split's rows in file order) ask for their span with ``MADV_WILLNEED`` instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deepgrid.data.dataset import ArrayDataset, Batch
from deepgrid.errors import DataError

# Rows read at a time when a whole pass is needed (digest, materialising): 4096 rows of 784
# float32 are 12.8 MB, small beside any worker.
_CHUNK_ROWS = 4096

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except (OSError, TypeError):  # no C library to load by that name (not a POSIX system): no advice given
    _LIBC = None


def _madvise(array: np.ndarray, advice_name: str, start: int = 0, length: int | None = None) -> None:
    """Advise the kernel about bytes ``start:start+length`` of ``array``'s memory (a mapping).

    Only advice: where the platform has no ``madvise`` or the call fails, nothing changes but
    speed. By address (``ctypes``) rather than through numpy's private ``np.memmap._mmap``.
    """
    advice = getattr(mmap, advice_name, None)
    madvise = getattr(_LIBC, "madvise", None) if _LIBC is not None else None
    if advice is None or madvise is None:
        return
    length = array.nbytes - start if length is None else length
    begin = array.ctypes.data + start
    aligned = begin - begin % mmap.PAGESIZE  # madvise takes a page-aligned address
    madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(length + begin - aligned), ctypes.c_int(advice))


class MappedDataset(ArrayDataset):
    """An :class:`ArrayDataset` whose features stay on disk (a read-only ``np.memmap``).

    ``rows``: which rows of the file, in order, make this data set (None: all); subsets,
    splits and shards only compose index arrays. ``x`` reads every row into memory: the paths
    that need the whole data set at once (the object-store feed, evaluation) still work, and
    the training paths use ``batch`` instead.
    """

    def __init__(self, features: np.ndarray, labels: Tensor, rows: np.ndarray | None = None, *,
                 scale: float | None = None, binarize: bool = False, device: str = "cpu") -> None:
        # Frozen like its parent: set through object.__setattr__, never changed afterwards.
        for name, value in (("_features", features), ("_labels", labels), ("_rows", rows), ("_scale", scale),
                            ("_binarize", binarize), ("_device", device)):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"MappedDataset({len(self)} examples of {self.n_in} features, {self._features.dtype} on disk)"

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    # -- what ArrayDataset holds as tensors, read on demand ----------------------------------
    @property
    def x(self) -> Tensor:  # type: ignore[override]
        return self._read(self._row_numbers(slice(None)))

    @property
    def y(self) -> Tensor:  # type: ignore[override]
        return self._labels if self._rows is None else self._labels[torch.from_numpy(self._rows)]

    def __len__(self) -> int:
        return len(self._features) if self._rows is None else len(self._rows)

    @property
    def n_in(self) -> int:
        return int(self._features.shape[1])

    def _row_numbers(self, index: Tensor | slice | np.ndarray) -> np.ndarray:
        """Rows of the file for positions ``index`` of this data set."""
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        if self._rows is None:
            return np.arange(len(self._features), dtype=np.int64)[index]
        return self._rows[index]

    def _read(self, rows: np.ndarray) -> Tensor:
        """The features of ``rows`` as float32, read in file order (pages close together) and put
        back in the order asked for."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        order = np.argsort(rows, kind="stable")
        block = np.empty((len(rows), self.n_in), dtype=np.float32)
        for start in range(0, len(rows), _CHUNK_ROWS):
            part = order[start : start + _CHUNK_ROWS]
            self._prefetch(rows[part[0]], rows[part[-1]], len(part))
            block[part] = self._features[rows[part]]
        if self._scale is not None:
            block *= self._scale
        if self._binarize:
            block = (block > 0.5).astype(np.float32)
        t = torch.from_numpy(block)
        return t if self._device == "cpu" else t.to(self._device)

    def _prefetch(self, first: int, last: int, count: int) -> None:
        """Ask for rows ``first..last`` at once when ``count`` of them are wanted and they are dense:
        under ``MADV_RANDOM`` each page would otherwise be its own 4 KB read."""
        if not isinstance(self._features, np.memmap) or not self._features.flags.c_contiguous:
            return
        if count * 2 >= last - first + 1 and count > 1:  # at least half the rows of the span
            stride = self._features.strides[0]
            _madvise(self._features, "MADV_WILLNEED", int(first) * stride, (int(last) - int(first) + 1) * stride)

    # -- the ArrayDataset interface --------------------------------------------------------
    def subset(self, index: Tensor | slice) -> MappedDataset:
        return MappedDataset(self._features, self._labels, self._row_numbers(index), scale=self._scale,
                             binarize=self._binarize, device=self._device)

    def to_device(self, device: str) -> MappedDataset:
        """The same rows, each batch moved to ``device`` as it is read."""
        return MappedDataset(self._features, self._labels, self._rows, scale=self._scale,
                             binarize=self._binarize, device=device)

    def batch(self, indices: Tensor) -> Batch:
        rows = self._row_numbers(indices)
        y = self._labels[torch.from_numpy(np.asarray(rows))]
        return self._read(rows), (y if self._device == "cpu" else y.to(self._device))

    def digest(self) -> str:
        """The checksum ``ArrayDataset.digest`` gives for the same examples, read a chunk at a time."""
        h = hashlib.sha256()
        h.update(str(((len(self), self.n_in), str(torch.float32))).encode())
        rows = self._row_numbers(slice(None))
        for start in range(0, len(rows), _CHUNK_ROWS):
            h.update(np.ascontiguousarray(self._read(rows[start : start + _CHUNK_ROWS]).cpu().numpy()).data)
        y = self.y
        h.update(str((tuple(y.shape), str(y.dtype))).encode())
        h.update(np.ascontiguousarray(y.cpu().numpy()).data)
        return h.hexdigest()


def open_npy(features_path: Path, labels_path: Path, *, n_in: int, n_out: int, binarize: bool,
             limit: int | None) -> MappedDataset:
    """``features_path`` memory-mapped and ``labels_path`` read whole, both checked: one clear line
    naming the file for each way they can be wrong."""
    from deepgrid.data.sources import check_labels, uint8_scale

    for path in (features_path, labels_path):
        if not path.is_file():
            raise DataError(f"{path}: no such file; dataset npy reads <split>_x.npy and <split>_y.npy from data_dir.")
    features = _load(features_path, mmap=True)
    if features.ndim < 2:
        raise DataError(f"{features_path}: expected features of shape (N, n_in), found shape {features.shape}.")
    if features.ndim > 2:  # images: a view of the same mapping, nothing read
        features = features.reshape(len(features), -1)
    if features.dtype.kind not in "fiu" or features.dtype == np.bool_:
        raise DataError(f"{features_path}: features have dtype {features.dtype}; expected numbers.")
    if features.shape[1] != n_in:
        raise DataError(f"{features_path}: {features.shape[1]} features per example but network.n_in is {n_in}; "
                        f"set network.n_in to {features.shape[1]}.")
    labels = check_labels(_load(labels_path, mmap=False), n_out, str(labels_path))
    if len(labels) != len(features):
        raise DataError(f"{labels_path}: {len(labels)} labels for the {len(features)} examples of "
                        f"{features_path.name}; they must match.")
    _madvise(features, "MADV_RANDOM")  # training reads scattered rows: no read-around (module docstring)
    data = MappedDataset(features, labels, scale=uint8_scale(features.dtype), binarize=binarize)
    return data.subset(slice(0, limit)) if limit is not None and limit < len(data) else data


def _load(path: Path, *, mmap: bool) -> Any:
    try:
        # allow_pickle=False: an object array would be a pickle from disk, never loaded.
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e}).") from None
