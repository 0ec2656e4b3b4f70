"""What ``deepgrid predict`` reads: INPUT's kind, its examples a chunk at a time, prepared as the
model's training data were.

INPUT is one file or folder; its kind comes from ``--dataset KIND`` or else from its name:

==========  ===================================================================================
``npz``     ``*.npz``: the features under the model's ``x_key`` (or the file's only array);
            labels under ``y_key`` when present
``npy``     ``*.npy``, memory-mapped (read a chunk at a time); labels from ``NAME_y.npy`` beside
            ``NAME_x.npy`` when present
``csv``     ``*.csv`` with a header row, streamed; the model's ``label_column`` (or
            ``--label-column``) holds labels when present, every other column is a feature
``parquet`` ``*.parquet``, streamed a record batch at a time; columns as for CSV
``images``  an image file, or a folder: its images (unlabelled), or class folders (the
            ImageFolder layout of ``dataset: images``, labelled as training labelled them)
``idx``     an IDX file (``*-images-idx3-ubyte[.gz]``); labels from the ``-labels-idx1`` beside it
==========  ===================================================================================

Preparation follows model.json's ``conf``: bytes scaled to [0, 1] (divided by 255 for a model
trained on MNIST, as its loader does, else multiplied by 1/255, as :mod:`deepgrid.data.sources`
does: the same float32 either way), thresholded at 0.5 with ``binarize``; images read in the
model's ``image_mode`` and resized to its n_in. Every way INPUT can be wrong is one DataError line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepgrid.data.sources import feature_rows
from deepgrid.errors import DataError
from deepgrid.predict import INPUT_KINDS, KIND_ALIASES

CHUNK_ROWS = 8192


@dataclass(frozen=True)
class Settings:
    """How the model's training data were read and prepared: the same rules apply to INPUT."""

    n_in: int
    n_out: int
    label_column: str = "label"
    x_key: str = "x"
    y_key: str = "y"
    image_mode: str = "grayscale"
    binarize: bool = False
    divide: bool = False  # MNIST's loader divides bytes by 255, the other kinds multiply by 1/255


@dataclass
class Chunk:
    x: Any  # (rows, n_features) or (rows, H, W[, C]) numbers, as read
    y: Any = None  # (rows,) labels, when the input has them
    files: list[str] | None = None  # the image file of each row


def input_kind(path: Path, dataset: str | None = None) -> str:
    """INPUT's kind: ``--dataset`` when given, else what its name says; a DataError for neither."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; INPUT is the file or folder of examples to predict.")
    if dataset:
        return KIND_ALIASES.get(dataset, dataset)
    if path.is_dir():
        return "images"
    from deepgrid.data.images import IMAGE_SUFFIXES

    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    if suffix in (".npz", ".npy", ".csv", ".parquet"):
        return suffix[1:]
    if suffix == ".pq":
        return "parquet"
    if suffix in IMAGE_SUFFIXES:
        return "images"
    if "idx" in name or "ubyte" in name:
        return "idx"
    raise DataError(f"{path}: unknown input format {path.suffix or 'with no suffix'!r}; expected .npz, .npy, .csv, "
                    ".parquet, an image (.png, .jpg, ...) or a folder of them, or an IDX file (*-idx3-ubyte[.gz]). "
                    f"Name the kind with --dataset ({', '.join(INPUT_KINDS)}).")


def prepare(x: Any, settings: Settings, *, where: str, first: int) -> Any:
    """Features as float32 (rows, n_in), prepared as training prepared them; ``first``: the index of
    the chunk's first example in the input, for the error lines."""
    x = feature_rows(x, where)  # the same rules as training's readers
    if x.shape[1] != settings.n_in:
        raise DataError(f"{where}: {x.shape[1]} features per example, but the model takes {settings.n_in} "
                        f"(its network.n_in); predict with data shaped like its training data.")
    features = x.astype(np.float32)
    if x.dtype == np.uint8:  # bytes (pixels) to [0, 1], in the same float32 arithmetic as training
        if settings.divide:
            features /= 255.0
        else:
            features *= 1.0 / 255.0
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        bad = first + int(np.flatnonzero(~finite)[0])
        raise DataError(f"{where}: example {bad} has a missing, NaN or infinite feature; clean or drop it.")
    if settings.binarize:
        features = (features > 0.5).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(features))


def open_input(path: Path, kind: str, settings: Settings) -> tuple[int | None, Iterator[Chunk]]:
    """(the number of examples when known before reading, the chunks of INPUT in order)."""
    if kind in ("npz", "npy", "idx"):
        x, y = {"npz": _read_npz, "npy": _read_npy, "idx": _read_idx}[kind](path, settings)
        if x.ndim < 2:
            raise DataError(f"{path}: features have shape {x.shape}; expected one row of features per example.")
        if y is not None and (y.ndim != 1 or len(y) != len(x)):
            raise DataError(f"{path}: {len(x)} examples but labels of shape {y.shape}; they must match "
                            "(or leave the labels out).")
        return len(x), _slices(x, y)
    if kind in ("csv", "parquet"):
        return _table_chunks(path, kind, settings)
    if kind == "images":
        return _image_chunks(path, settings)
    raise DataError(f"--dataset {kind!r} is not an input kind; expected one of {', '.join(INPUT_KINDS)}.")


def _slices(x: Any, y: Any) -> Iterator[Chunk]:
    for start in range(0, len(x), CHUNK_ROWS):  # a memory-mapped x is read here, a chunk at a time
        yield Chunk(x[start : start + CHUNK_ROWS], None if y is None else y[start : start + CHUNK_ROWS])


def _load_array(path: Path, what: str, mmap: bool = False) -> Any:
    import zipfile

    try:
        # allow_pickle=False: an object array would be a pickle from disk, never loaded.
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable {what} file ({e}).") from None


def _read_npz(path: Path, s: Settings) -> tuple[Any, Any]:
    arrays = _load_array(path, ".npz")
    if not hasattr(arrays, "files"):  # np.load gives an array for a .npy file named .npz
        raise DataError(f"{path}: not a readable .npz file (it holds one array, as a .npy file does).")
    with arrays:
        names = list(arrays.files)
        key = s.x_key if s.x_key in names else (names[0] if len(names) == 1 else None)
        if key is None:
            raise DataError(f"{path}: no array named {s.x_key!r} (it holds {', '.join(names) or 'none'}); save "
                            f"the features as {s.x_key!r}, the name the model was trained with.")
        try:
            return arrays[key], (arrays[s.y_key] if s.y_key in names and s.y_key != key else None)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npz file ({e}).") from None


def _read_npy(path: Path, s: Settings) -> tuple[Any, Any]:
    x = _load_array(path, ".npy", mmap=True)
    labels = path.with_name(path.name[: -len("_x.npy")] + "_y.npy") if path.name.endswith("_x.npy") else None
    return x, (_load_array(labels, ".npy") if labels is not None and labels.is_file() else None)


def _read_idx(path: Path, s: Settings) -> tuple[Any, Any]:
    from deepgrid.data.idx import read_idx

    x = read_idx(path)
    name = path.name.replace("images", "labels").replace("idx3", "idx1")
    labels = path.with_name(name) if name != path.name else None
    y = read_idx(labels) if labels is not None and labels.is_file() else None
    return x, (y if y is not None and y.shape == (len(x),) else None)


def _table_chunks(path: Path, kind: str, s: Settings) -> tuple[int | None, Iterator[Chunk]]:
    """A CSV or Parquet file, a record batch at a time (never whole in memory)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise DataError(f"Reading {kind} files needs pyarrow, which is not installed; pip install pyarrow.") from None

    numbers = f"features must be numbers, and labels (column {s.label_column!r}) class indices"

    def failed(e: Exception) -> DataError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "conversion" in first.lower():
            return DataError(f"{path}: {first}; {numbers}.")
        if "parse" in first.lower():
            return DataError(f"{path}: {first}; every row needs one value per header column.")
        return DataError(f"{path}: not a readable {kind} file ({first.rstrip('.')}).")

    try:
        if kind == "csv":
            from pyarrow import csv as pa_csv

            options = pa_csv.ReadOptions(use_threads=False)
            header = pa_csv.open_csv(path, read_options=options)  # reads the first block: the column names
            names = list(header.schema.names)
            header.close()
            if _all_numbers(names):
                raise DataError(f"{path}: its first row ({', '.join(names[:3])}, ...) is numbers, not a header; "
                                "add a header row naming the columns.")
            # Every column read as float64: types guessed from the first block could refuse a later one.
            convert = pa_csv.ConvertOptions(column_types=dict.fromkeys(names, pa.float64()))
            batches: Any = pa_csv.open_csv(path, read_options=options, convert_options=convert)
            rows = None
        else:
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path)
            names, rows = list(parquet.schema_arrow.names), parquet.metadata.num_rows
            for field in parquet.schema_arrow:
                if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
                        or pa.types.is_boolean(field.type) or pa.types.is_null(field.type)):
                    raise DataError(f"{path}: column {field.name!r} holds {field.type}, not numbers; {numbers}.")
            batches = parquet.iter_batches(batch_size=CHUNK_ROWS)
    except (pa.ArrowInvalid, OSError) as e:
        raise failed(e) from None
    features = [n for n in names if n != s.label_column]
    if not features:
        raise DataError(f"{path}: no feature columns besides the label column {s.label_column!r}.")

    def chunks() -> Iterator[Chunk]:
        iterator = iter(batches)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError) as e:
                raise failed(e) from None
            columns = {n: np.asarray(batch.column(n).to_numpy(zero_copy_only=False), dtype=np.float64)
                       for n in batch.schema.names}
            x = np.empty((batch.num_rows, len(features)), dtype=np.float32)
            for j, name in enumerate(features):
                x[:, j] = columns[name]
            yield Chunk(x, columns.get(s.label_column))

    return rows, chunks()


def _all_numbers(names: list[str]) -> bool:
    try:
        [float(n) for n in names]
    except ValueError:
        return False
    return True


def _image_chunks(path: Path, s: Settings) -> tuple[int, Iterator[Chunk]]:
    """One image, a folder of images, or class folders of them (labelled as ``dataset: images`` labels)."""
    from deepgrid.data.images import IMAGE_SUFFIXES, class_names, image_side

    side = image_side(s.n_in, s.image_mode)
    files: list[tuple[Path, int | None]]
    if path.is_file():
        files = [(path, None)]
    elif own := sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        files = [(p, None) for p in own]
    else:
        # The training split's classes give the labels, as `deepgrid evaluate` labels a test folder.
        train = path.parent / "train"
        classes = class_names(train if path.name != "train" and train.is_dir() else path)
        files = [(p, label) for label, name in enumerate(classes) if (path / name).is_dir()
                 for p in sorted((path / name).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or in its class folders.")
    labelled = files[0][1] is not None

    def chunks() -> Iterator[Chunk]:
        for start in range(0, len(files), CHUNK_ROWS):
            part = files[start : start + CHUNK_ROWS]
            pixels = np.stack([_read_image(p, side, s.image_mode) for p, _ in part])
            names = [p.name if p == path else str(p.relative_to(path)) for p, _ in part]
            yield Chunk(pixels, np.array([label for _, label in part]) if labelled else None, names)

    return len(files), chunks()


def _read_image(path: Path, side: int, mode: str) -> Any:
    """One image as ``dataset: images`` reads it: grayscale or RGB, resized, bytes (H*W*C,)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("Reading images needs Pillow, which is not installed; pip install pillow.") from None
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if mode == "rgb" else "L").resize((side, side), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8).reshape(-1)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e}).") from None

