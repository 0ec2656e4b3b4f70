"""MNIST and Fashion-MNIST from their IDX files on local disk.

Loading never touches the network: the files are found in, in order, the
directory the user gives, ``$DEEPGRID_DATA`` (holding the files or a
``<name>/`` folder of them), and Debian's ``/usr/share/datasets/<name>``
(``apt-get install dataset-fashion-mnist``). :func:`download_mnist` fetches
the files for users who ask for it, and nothing else calls it.

Pixels come back as float32 in [0, 1], one flattened 784-vector per image,
labels as int64 in 0..9. Nothing is cached on disk: parsing the gzipped 60,000
training images takes well under a second.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from deepgrid.config.conf import MNIST_DATASETS
from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.idx import read_idx
from deepgrid.errors import DataError, invalid
from deepgrid.storage import local_dir

if TYPE_CHECKING:
    from deepgrid.config.conf import Conf

ENV_VAR = "DEEPGRID_DATA"
DEBIAN_DATASETS = Path("/usr/share/datasets")  # a module constant so tests can point it elsewhere

N_CLASSES = 10
IMAGE_SHAPE = (28, 28)

# The four files by role: (stem, IDX kind). Mirrors spell them "train-images-idx3-ubyte"
# or "train-images.idx3-ubyte", gzipped or not.
_FILES = {
    ("train", "images"): ("train-images", "idx3"),
    ("train", "labels"): ("train-labels", "idx1"),
    ("test", "images"): ("t10k-images", "idx3"),
    ("test", "labels"): ("t10k-labels", "idx1"),
}
_SPLITS = ("train", "test")

# HTTPS mirrors and the published MD5 of each gzipped file (as torchvision checks them).
_MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
}
_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}


def _check_name(name: str) -> str:
    if name not in MNIST_DATASETS:
        raise DataError(invalid("dataset", name, f"one of {', '.join(map(repr, MNIST_DATASETS))}"))
    return name


def _spellings(stem: str, kind: str) -> list[str]:
    """Accepted file names, the uncompressed ones first (no need to inflate them)."""
    dash, dot = f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"
    return [dash, f"{dash}.gz", dot, f"{dot}.gz"]


def _find_file(directory: Path, split: str, part: str) -> Path | None:
    for file_name in _spellings(*_FILES[split, part]):
        if (directory / file_name).is_file():
            return directory / file_name
    return None


def _missing(directory: Path) -> list[str]:
    """The files ``directory`` lacks, as ``train-images-idx3-ubyte[.gz]``; empty when it has all four."""
    return [f"{stem}-{kind}-ubyte[.gz]" for (split, part), (stem, kind) in _FILES.items()
            if _find_file(directory, split, part) is None]


def _describe(directory: Path) -> str:
    if not directory.is_dir():
        return f"{directory} (does not exist)"
    return f"{directory} (missing {', '.join(_missing(directory))})"


def _fix_hint(name: str) -> str:
    get = ("run `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist"
           else f"fetch the files with deepgrid.data.mnist.download_mnist({name!r}, DIR)")
    return f"Pass --data-dir DIR, set {ENV_VAR}=DIR, or {get}."


def find_data_dir(name: str = "fashion-mnist", data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding all four IDX files of ``name`` ("fashion-mnist" or "mnist").

    Searches ``data_dir`` (and its ``<name>/`` folder) when given, and only
    there: an explicit choice is never silently replaced by another copy.
    Otherwise ``$DEEPGRID_DATA`` (and its ``<name>/`` folder), then
    ``/usr/share/datasets/<name>``. Raises :class:`DataError` listing every
    place it looked.
    """
    name = _check_name(name)
    if data_dir is not None:
        # s3://bucket/prefix: the files come to a local cache first (deepgrid.storage.cache)
        given = Path(local_dir(data_dir)).expanduser()
        if not given.is_dir():
            what = "is not a directory" if given.exists() else "does not exist"
            raise DataError(
                f"Data directory {str(given)!r} {what}; expected a directory holding the {name} IDX files. "
                "Check the path given to --data-dir (Conf.data_dir)."
            )
        places = [given, given / name]
        for place in places:
            if not _missing(place):
                return place
        raise DataError(
            f"Data directory {str(given)!r} does not hold the {name} files; looked in "
            f"{'; '.join(_describe(p) for p in places)}. Pass the directory that holds them to --data-dir."
        )

    looked = []
    places = [DEBIAN_DATASETS / name]
    env = os.environ.get(ENV_VAR)
    if not env:
        looked.append(f"${ENV_VAR} (not set)")
    elif not Path(env).expanduser().is_dir():
        looked.append(f"${ENV_VAR}={env} (does not exist)")  # a stale setting: say so, then go on looking
    else:
        places[:0] = [Path(env).expanduser(), Path(env).expanduser() / name]
    for place in places:
        if not _missing(place):
            return place
        looked.append(_describe(place))
    raise DataError(f"Cannot find the {name} data files; looked in {'; '.join(looked)}. {_fix_hint(name)}")


def load_mnist(
    name: str = "fashion-mnist",
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    binarize: bool = False,
    limit: int | None = None,
) -> ArrayDataset:
    """One split of MNIST or Fashion-MNIST: x (N, 784) float32 in [0, 1], y (N,) int64 in 0..9.

    ``binarize`` maps pixels above 0.5 to 1.0 and the rest to 0.0 (for RBMs);
    ``limit`` keeps at most the first ``limit`` examples.
    """
    if split not in _SPLITS:
        raise DataError(invalid("split", split, "'train' or 'test'"))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(invalid("limit", limit, "a positive integer or None", "Use None to load every example."))
    directory = find_data_dir(name, data_dir)
    images_path = _find_file(directory, split, "images")
    labels_path = _find_file(directory, split, "labels")
    assert images_path is not None and labels_path is not None  # find_data_dir saw all four

    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), found {images.dtype} of shape "
            f"{images.shape}. Check that this is the {name} images file."
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{labels_path}: expected a vector of integer labels, found {labels.dtype} of shape {labels.shape}. "
            f"Check that this is the {name} labels file."
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path.name} holds {len(images)} images but {labels_path.name} holds {len(labels)} labels; "
            f"they must match. Check that both files in {directory} belong to the same {split} split."
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= N_CLASSES):
        raise DataError(
            f"{labels_path}: labels must lie in 0..{N_CLASSES - 1}, found values from {int(labels.min())} "
            f"to {int(labels.max())}. The file is damaged or not a {name} labels file."
        )

    n = len(images) if limit is None else min(limit, len(images))
    pixels = images[:n].reshape(n, -1)
    if binarize:
        # p / 255 > 0.5 exactly when p >= 128: compare the bytes, convert once.
        x = (pixels >= 128).astype(np.float32)
    else:
        x = pixels.astype(np.float32)
        x /= 255.0
    y = labels[:n].astype(np.int64)
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y))


def load_splits(conf: Conf) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of ``conf.dataset``, honouring data_dir, binarize, train_limit and test_limit.

    Every path (master, workers reading files, single process, evaluate) loads through here:
    a user's own data set kinds (npz, npy, csv, parquet, images, callable) go to
    :mod:`deepgrid.data.sources`."""
    if conf.dataset not in MNIST_DATASETS:
        from deepgrid.data.sources import load_source_splits

        return load_source_splits(conf)
    directory = find_data_dir(conf.dataset, conf.data_dir)
    train = load_mnist(conf.dataset, "train", directory, binarize=conf.binarize, limit=conf.train_limit)
    test = load_mnist(conf.dataset, "test", directory, binarize=conf.binarize, limit=conf.test_limit)
    return train, test


def training_split(data: ArrayDataset, conf: Conf) -> tuple[ArrayDataset, ArrayDataset | None]:
    """(examples to train on, validation split or None) as the Conf asks.

    Every path (the reference loop, the master, a worker reading the files itself) splits
    alike, so no path trains on another's validation data.
    """
    if data.n_in != conf.network.n_in:
        raise DataError(f"The data have {data.n_in} features per example but network.n_in is "
                        f"{conf.network.n_in}; set network.n_in to {data.n_in}.")
    if conf.validation_fraction > 0:
        return data.split(conf.validation_fraction, seed=conf.network.seed)
    return data, None


def download_mnist(name: str, target_dir: str | os.PathLike[str], *, timeout_s: float = 60.0) -> Path:
    """Fetch the four gzipped IDX files of ``name`` over HTTPS into ``target_dir``; return it.

    Only for users who ask for it: no loader calls this. Files already present
    with the right checksum are kept; each download is checked against the
    published MD5 and only then moved into place, so a failed run leaves no
    half-written file behind.
    """
    name = _check_name(name)
    target = Path(target_dir).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    for file_name, md5 in _MD5[name].items():
        final = target / file_name
        if final.is_file() and _md5(final) == md5:
            continue
        errors = []
        for mirror in _MIRRORS[name]:
            part = target / (file_name + ".part")
            try:
                with urllib.request.urlopen(mirror + file_name, timeout=timeout_s) as response, part.open("wb") as out:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
            except OSError as e:  # URLError, HTTPError and timeouts are all OSErrors
                part.unlink(missing_ok=True)
                errors.append(f"{mirror}: {e}")
                continue
            if _md5(part) != md5:
                part.unlink()
                errors.append(f"{mirror}: checksum mismatch")
                continue
            part.replace(final)
            break
        else:
            raise DataError(
                f"Could not download {file_name} for {name} ({'; '.join(errors)}); "
                f"check the network, or copy the files into {target} by hand."
            )
    return target


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # integrity against the published sums, not security
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
