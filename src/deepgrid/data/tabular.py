"""``dataset: csv`` and ``dataset: parquet``: one example a row, a label column, the rest features.

Both are read with pyarrow (a Ray dependency; ``pip install pyarrow`` where Ray is not
installed). A CSV file starts with a header row naming the columns. Every column other than
``label_column`` is a feature and must hold numbers; the label column holds class indices.

:func:`read_table` reads a file whole; :func:`table_batches` reads it a block of rows at a time
(CSV blocks of a quarter megabyte, Parquet batches within its row groups) for
:mod:`deepgrid.data.stream_cache`, with the same checks and the same one-line errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepgrid.errors import DataError

# Rows a Parquet batch holds (64k rows of 100 float64 columns: 50 MB at most); CSV blocks are bytes:
# converting a 187 MB CSV, 1 MB blocks grew the process by 40-70 MB, 256 KB ones by 8-20 MB, at
# the same speed (about 90 MB/s).
_PARQUET_BATCH_ROWS = 1 << 16
_CSV_BLOCK_BYTES = 1 << 18
# "In CSV column #3: CSV conversion error to int64: invalid value '0.5'"
_CSV_CONVERSION = re.compile(r"column #(\d+).*conversion error.*invalid value '(.*)'", re.DOTALL)


def read_table(path: Path, kind: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, n_features), labels (N,)) from a CSV or Parquet file."""
    table = _read_csv(path) if kind == "csv" else _read_parquet(path)
    names = list(table.column_names)
    feature_names = _feature_names(names, label_column, path)
    labels = _column(table, label_column, path)
    _check_labels_present(labels, label_column, path, 0)
    features = np.empty((table.num_rows, len(feature_names)), dtype=np.float32)
    for j, name in enumerate(feature_names):
        features[:, j] = _column(table, name, path)
    return features, labels


def table_columns(path: Path, kind: str, label_column: str) -> list[str]:
    """The feature columns of a CSV or Parquet file, from its header or schema alone (nothing else read)."""
    names, types = _csv_schema(path) if kind == "csv" else _parquet_schema(path)
    feature_names = _feature_names(names, label_column, path)
    for name in [label_column, *feature_names]:
        _check_numeric(types[name], name, path)
    return feature_names


class WiderColumn(Exception):
    """A CSV column needs a wider type than its first block showed (int64 then a fraction, say).

    The whole-file reader widens a column's type when a later block needs it and reads the
    whole column with the wider one ("-0" is 0 as int64 but -0.0 as double); the streaming
    reader cannot. The caller reads the file again from its first row with ``types``.
    """

    def __init__(self, path: Path, name: str, types: dict[str, Any]) -> None:
        super().__init__(f"{path}: column {name!r} holds {types[name]} further down; reading it as that")
        self.types = types


def table_batches(path: Path, kind: str, label_column: str,
                  types: dict[str, Any] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features (n, n_features) float32, labels (n,)) a block of rows at a time, in file order.

    The values are those :func:`read_table` gives for the same rows; the memory held is one block.
    ``types``: a CSV file's column types (default: pyarrow's guess from the first block); a
    block that does not fit them raises :class:`WiderColumn` with the types to read it with.
    """
    feature_names = table_columns(path, kind, label_column)
    blocks = _csv_blocks(path, types) if kind == "csv" else _parquet_blocks(path)
    row = 0
    for block in blocks:
        labels = _column(block, label_column, path)
        _check_labels_present(labels, label_column, path, row)
        features = np.empty((block.num_rows, len(feature_names)), dtype=np.float32)
        for j, name in enumerate(feature_names):
            features[:, j] = _column(block, name, path)
        row += block.num_rows
        yield features, labels


def _feature_names(names: list[str], label_column: str, path: Path) -> list[str]:
    if label_column not in names:
        raise DataError(f"{path}: no label column {label_column!r} (columns: {_listed(names)}); "
                        "set label_column to the column that holds the class indices.")
    feature_names = [n for n in names if n != label_column]
    if not feature_names:
        raise DataError(f"{path}: no feature columns besides the label column {label_column!r}.")
    return feature_names


def _check_labels_present(labels: np.ndarray, label_column: str, path: Path, first_row: int) -> None:
    if len(labels) and labels.dtype.kind == "f" and np.isnan(labels).any():
        bad = first_row + int(np.flatnonzero(np.isnan(labels))[0])
        raise DataError(f"{path}: row {bad + 1} has no label in column {label_column!r}.")


def _is_numeric(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                or pa.types.is_null(kind))


def _check_numeric(kind: Any, name: str, path: Path) -> None:
    if not _is_numeric(kind):
        raise DataError(f"{path}: column {name!r} holds {kind}, not numbers; every column but the label "
                        "column is a feature and must be numeric.")


def _column(table: Any, name: str, path: Path) -> np.ndarray:
    column = table.column(name)
    _check_numeric(column.type, name, path)
    # Missing values (empty CSV cells, Parquet nulls) become NaN here and are refused by the caller.
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64 if column.null_count else None)


def _read_csv(path: Path) -> Any:
    pa = _pyarrow("CSV")
    from pyarrow import csv

    try:
        return csv.read_csv(path, read_options=csv.ReadOptions(use_threads=False))
    except pa.ArrowInvalid as e:
        # pyarrow says e.g. "CSV parse error: Expected 4 columns, got 3: 1,2,3" for a ragged row.
        raise _csv_error(path, e) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e}).") from None


def _csv_error(path: Path, error: Exception) -> DataError:
    return DataError(f"{path}: {_first_line(error)}; every row needs one value per header column.")


def _csv_schema(path: Path) -> tuple[list[str], dict[str, Any]]:
    """The header's names and the types pyarrow infers from the first block."""
    pa = _pyarrow("CSV")
    from pyarrow import csv

    try:
        reader = csv.open_csv(path, read_options=csv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK_BYTES))
    except pa.ArrowInvalid as e:
        raise _csv_error(path, e) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e}).") from None
    with reader:
        schema = reader.schema
    return list(schema.names), {field.name: field.type for field in schema}


def _csv_blocks(path: Path, types: dict[str, Any] | None) -> Iterator[Any]:
    """The CSV file's record batches, its columns read as ``types``."""
    pa = _pyarrow("CSV")
    from pyarrow import csv

    names, first = _csv_schema(path)
    types = dict(types or first)
    try:
        reader = csv.open_csv(path, read_options=csv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK_BYTES),
                              convert_options=csv.ConvertOptions(column_types=types))
        with reader:
            yield from reader
    except pa.ArrowInvalid as e:
        found = _CSV_CONVERSION.search(str(e))
        if not found or int(found.group(1)) >= len(names):
            raise _csv_error(path, e) from None
        name = names[int(found.group(1))]
        wider = _wider(types[name], found.group(2))
        if wider is None:  # as the whole-file reader would: the column read as text
            raise DataError(f"{path}: column {name!r} holds string, not numbers; every column but the label "
                            "column is a feature and must be numeric.") from None
        raise WiderColumn(path, name, {**types, name: wider}) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e}).") from None


def _wider(current: Any, value: str) -> Any:
    """The type the whole-file reader would give a column of ``current`` values and ``value``
    (pyarrow's inference order: null, int64, bool, double, then text), or None for text."""
    import io

    pa = _pyarrow("CSV")
    from pyarrow import csv

    ladder = [pa.null(), pa.int64(), pa.bool_(), pa.float64()]
    try:
        alone = csv.read_csv(io.BytesIO(b"x\n" + value.encode() + b"\n")).schema.types[0]
    except pa.ArrowInvalid:
        return None
    if alone not in ladder:
        return None
    rank = max(ladder.index(alone), ladder.index(current) + 1 if current in ladder else len(ladder))
    return ladder[rank] if rank < len(ladder) else None


def _read_parquet(path: Path) -> Any:
    pa = _pyarrow("Parquet")
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)}).") from None


def _parquet_schema(path: Path) -> tuple[list[str], dict[str, Any]]:
    pa = _pyarrow("Parquet")
    import pyarrow.parquet as pq

    try:
        schema = pq.ParquetFile(path).schema_arrow
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)}).") from None
    return list(schema.names), {field.name: field.type for field in schema}


def _parquet_blocks(path: Path) -> Iterator[Any]:
    pa = _pyarrow("Parquet")
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as file:
            yield from file.iter_batches(batch_size=_PARQUET_BATCH_ROWS, use_threads=False)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)}).") from None


def _pyarrow(what: str) -> Any:
    try:
        import pyarrow
    except ImportError:
        raise DataError(f"Reading {what} files needs pyarrow, which is not installed; pip install pyarrow.") from None
    return pyarrow


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _listed(names: list[str]) -> str:
    return ", ".join(map(repr, names[:10])) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
