"""A user's own data: the data set kinds the Conf's ``dataset:`` names beside MNIST.

``data_dir`` holds a ``train`` and a ``test`` file (or folder) of the kind:

============  ==========================================================================
``npz``       ``train.npz``/``test.npz`` with arrays ``x_key`` (default ``x``) and ``y_key`` (``y``)
``npy``       ``train_x.npy``, ``train_y.npy``, ``test_x.npy``, ``test_y.npy``, memory-mapped
              (:mod:`deepgrid.data.mapped`: for data larger than memory)
``csv``       ``train.csv``/``test.csv`` with a header; ``label_column`` (``label``), the rest features
``parquet``   ``train.parquet``/``test.parquet``, columns as for CSV (:mod:`deepgrid.data.tabular`)
``images``    ``train/<class>/*.png|jpg``, ``test/<class>/...`` (:mod:`deepgrid.data.images`)
``callable``  ``data_source: pkg.module:function``, called as ``function("train")`` and
              ``function("test")``, returning a torch ``Dataset`` of (x, y) pairs, an (x, y)
              pair of arrays or an ``ArrayDataset``; no ``data_dir``
============  ==========================================================================

``memory_map: true`` reads csv, parquet and images once into an on-disk .npy cache and maps it
as ``npy`` is mapped (:mod:`deepgrid.data.stream_cache`): for data larger than memory.

Every kind gives what MNIST gives: features float32 of shape (N, network.n_in), labels int64
in 0..network.n_out - 1. uint8 features (images, uint8 arrays) are scaled to [0, 1] by 1/255;
other numbers are taken as they are. ``binarize`` thresholds features at 0.5;
``train_limit``/``test_limit`` keep the first examples. A file that does not fit gives one
line naming it (a ``DataError``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepgrid.data.dataset import ArrayDataset
from deepgrid.errors import DataError
from deepgrid.storage import local_dir

if TYPE_CHECKING:
    from deepgrid.config.conf import Conf

SPLITS = ("train", "test")


def load_source_splits(conf: Conf) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of a user's data set kind (``conf.dataset`` other than the MNISTs)."""
    return (load_source(conf, "train", conf.train_limit), load_source(conf, "test", conf.test_limit))


def load_source(conf: Conf, split: str, limit: int | None = None) -> ArrayDataset:
    """One split of ``conf.dataset``, checked against ``conf.network``'s n_in and n_out."""
    n_in, n_out = conf.network.n_in, conf.network.n_out
    kind = conf.dataset
    if kind == "callable":
        return finish(*_from_callable(conf.data_source, split, n_in), n_in=n_in, n_out=n_out,
                      binarize=conf.binarize, limit=limit, where=f"{conf.data_source}({split!r})")
    directory = _data_dir(conf)
    if kind == "npy":
        from deepgrid.data.mapped import open_npy

        return open_npy(directory / f"{split}_x.npy", directory / f"{split}_y.npy", n_in=n_in, n_out=n_out,
                        binarize=conf.binarize, limit=limit)
    if kind == "images":
        from deepgrid.data.images import read_image_folder

        path = directory / split
        if conf.memory_map:
            from deepgrid.data.stream_cache import open_images

            return open_images(path, mode=conf.image_mode, n_in=n_in, n_out=n_out, binarize=conf.binarize,
                               limit=limit)
        x, y = read_image_folder(path, n_in=n_in, mode=conf.image_mode, limit=limit)
        return finish(x, y, n_in=n_in, n_out=n_out, binarize=conf.binarize, limit=limit, where=str(path))
    path = directory / f"{split}.{kind}"
    files = split_files(directory, split, kind)
    if not files:
        raise DataError(f"{path}: no such file; dataset {kind} reads train.{kind} and test.{kind} (or shards "
                        f"train-*.{kind}, test-*.{kind}) from data_dir ({directory}).")
    where = str(path) if files == [path] else f"{directory}/{split}-*.{kind}"
    if conf.memory_map and kind in ("csv", "parquet"):
        from deepgrid.data.stream_cache import open_tables

        return open_tables(files, kind, label_column=conf.label_column, n_in=n_in, n_out=n_out,
                           binarize=conf.binarize, limit=limit, where=where)
    parts = [_read_file(file, kind, conf) for file in files]
    x, y = parts[0] if len(parts) == 1 else _join(parts, files)
    return finish(x, y, n_in=n_in, n_out=n_out, binarize=conf.binarize, limit=limit, where=where)


def split_files(directory: Path, split: str, kind: str) -> list[Path]:
    """The files of a split: ``train.npz`` itself, else its shards (train-00000.npz, train-00001.npz,
    ...) in name order, which joined give the example order; [] when there are none."""
    path = directory / f"{split}.{kind}"
    return [path] if path.is_file() else sorted(p for p in directory.glob(f"{split}-*.{kind}") if p.is_file())


def _read_file(path: Path, kind: str, conf: Conf) -> tuple[Any, Any]:
    if kind == "npz":
        return _read_npz(path, conf.x_key, conf.y_key)
    if kind in ("csv", "parquet"):
        from deepgrid.data.tabular import read_table

        return read_table(path, kind, conf.label_column)
    # the Conf's choice rule keeps this out: a kind added there and not here
    raise DataError(f"dataset {kind!r} has no reader; expected one of npz, npy, csv, parquet, images, callable.")


def _join(parts: list[tuple[Any, Any]], files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Shards' features and labels end to end; shards whose features differ in width are one line."""
    xs = [np.asarray(x) for x, _ in parts]
    for x, file in zip(xs, files, strict=True):
        if x.shape[1:] != xs[0].shape[1:]:
            raise DataError(f"{file}: features of shape {x.shape[1:]} per example, but {files[0].name} has "
                            f"{xs[0].shape[1:]}; every shard of a split must have the same columns.")
    return np.concatenate(xs), np.concatenate([np.asarray(y) for _, y in parts])


def _data_dir(conf: Conf) -> Path:
    if conf.data_dir is None:
        raise DataError(f"dataset {conf.dataset} reads its train and test files from data_dir, which is not set; "
                        "set data_dir (or --data-dir) to the directory that holds them.")
    # s3://bucket/prefix: read from a local copy in the cache (deepgrid.storage.cache)
    directory = Path(local_dir(conf.data_dir)).expanduser()
    if not directory.is_dir():
        raise DataError(f"data_dir {str(directory)!r} is not a directory; set data_dir to the directory that "
                        f"holds the {conf.dataset} train and test files.")
    return directory


def uint8_scale(dtype: np.dtype[Any]) -> float | None:
    """Pixels stored as bytes come to [0, 1] as MNIST's do; other numbers are taken as they are."""
    return 1.0 / 255.0 if dtype == np.uint8 else None


def check_labels(labels: Any, n_out: int, where: str) -> torch.Tensor:
    """Labels as an int64 vector in 0..n_out - 1, or a DataError naming ``where``."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"{where}: labels have shape {y.shape}; expected a vector of class indices.")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise DataError(f"{where}: labels must be whole class indices; found non-integer or missing values.")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{where}: labels have dtype {y.dtype}; expected whole class indices 0..{n_out - 1}.")
    y = y.astype(np.int64)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_out):
        bad = int(np.flatnonzero((y < 0) | (y >= n_out))[0])
        raise DataError(f"{where}: label {int(y[bad])} (example {bad}) is out of range; labels must lie in "
                        f"0..{n_out - 1} for network.n_out {n_out}. Fix the labels or set network.n_out.")
    return torch.from_numpy(y)


def feature_rows(x: Any, where: str) -> np.ndarray:
    """Features as one numeric row per example (images (N, H, W[, C]) flattened), or one line on why not."""
    x = np.asarray(x)
    if x.ndim == 1:
        raise DataError(f"{where}: features have shape {x.shape}; expected one row of features per example.")
    if x.ndim > 2:  # images given as (N, H, W[, C])
        x = x.reshape(len(x), -1)
    if x.dtype.kind not in "fiub":
        raise DataError(f"{where}: features have dtype {x.dtype}; expected numbers.")
    return x


def finish(x: Any, y: Any, *, n_in: int, n_out: int, binarize: bool, limit: int | None, where: str) -> ArrayDataset:
    """Checked features and labels as an in-memory data set: the same rules for every kind."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = feature_rows(x, where)
    if x.shape[1] != n_in:
        raise DataError(f"{where}: {x.shape[1]} features per example but network.n_in is {n_in}; "
                        f"set network.n_in to {x.shape[1]}.")
    labels = check_labels(y, n_out, where)
    if len(labels) != len(x):
        raise DataError(f"{where}: {len(x)} examples but {len(labels)} labels; they must match.")
    if limit is not None:
        x, labels = x[:limit], labels[:limit]
    scale = uint8_scale(x.dtype)
    features = x.astype(np.float32)
    if scale is not None:
        features *= scale
    if not np.isfinite(features).all():
        bad = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
        raise DataError(f"{where}: example {bad} has a missing, NaN or infinite feature; clean or drop it.")
    if binarize:
        features = (features > 0.5).astype(np.float32)
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(features)), labels)


def _read_npz(path: Path, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        # allow_pickle=False: an object array would be a pickle from disk, never loaded.
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in (x_key, y_key) if k not in arrays.files]
            if missing:
                raise DataError(f"{path}: no array named {missing[0]!r} (it holds {', '.join(arrays.files) or 'none'}); "
                                "set x_key and y_key to the names of the features and labels.")
            return arrays[x_key], arrays[y_key]
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e}).") from None


def _from_callable(spec: str | None, split: str, n_in: int) -> tuple[Any, Any]:
    """(x, y) from the user's ``pkg.module:function``; a Dataset's pairs are stacked into memory."""
    function = import_callable(spec, "data_source")
    where = f"{spec}({split!r})"
    try:
        result = function(split)
    except DataError:
        raise
    except Exception as e:  # the user's code: whatever it raises, say where
        raise DataError(f"{where} raised {type(e).__name__}: {e}") from e
    if isinstance(result, ArrayDataset):
        return result.x, result.y
    if isinstance(result, tuple) and len(result) == 2:
        return tuple(np.asarray(part.detach().cpu() if isinstance(part, torch.Tensor) else part) for part in result)
    if isinstance(result, torch.utils.data.Dataset):
        try:
            pairs = [result[i] for i in range(len(result))]  # type: ignore[arg-type]
        except Exception as e:
            raise DataError(f"{where}: reading its Dataset failed ({type(e).__name__}: {e}); it must have "
                            "__len__ and __getitem__ giving (x, y) pairs.") from e
        if not pairs or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise DataError(f"{where}: its Dataset must give (x, y) pairs, one per example, and at least one.")
        x = np.stack([np.asarray(torch.as_tensor(p[0]), dtype=np.float32).reshape(-1) for p in pairs])
        return x, np.asarray([int(p[1]) for p in pairs])
    raise DataError(f"{where} returned {type(result).__name__}; expected a torch Dataset of (x, y) pairs, "
                    f"an (x, y) pair of arrays (x of shape (N, {n_in})) or an ArrayDataset.")


def import_callable(spec: str | None, field: str) -> Any:
    """The object a ``pkg.module:name`` string names, or a DataError saying what is wrong."""
    if not spec or ":" not in spec:
        raise DataError(f"{field} is {spec!r}; expected 'pkg.module:function' (a module on the Python path "
                        "and a function in it).")
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DataError(f"{field} {spec!r}: cannot import {module_name!r} ({e}); is it on the Python path?") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise DataError(f"{field} {spec!r}: module {module_name!r} has no {attribute!r}.")
    if not callable(target):
        raise DataError(f"{field} {spec!r}: {attribute!r} is a {type(target).__name__}, not a function.")
    return target
