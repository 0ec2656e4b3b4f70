"""``dataset: csv`` and ``dataset: parquet``: one example a row, a label column, the rest features.

Both are read with pyarrow (a Ray dependency; ``pip install pyarrow`` where Ray is not
installed). A CSV file starts with a header row naming the columns. Every column other than
``label_column`` is a feature and must hold numbers; the label column holds class indices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepgrid.errors import DataError


def read_table(path: Path, kind: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, n_features), labels (N,)) from a CSV or Parquet file."""
    table = _read_csv(path) if kind == "csv" else _read_parquet(path)
    names = list(table.column_names)
    if label_column not in names:
        raise DataError(f"{path}: no label column {label_column!r} (columns: {_listed(names)}); "
                        "set label_column to the column that holds the class indices.")
    feature_names = [n for n in names if n != label_column]
    if not feature_names:
        raise DataError(f"{path}: no feature columns besides the label column {label_column!r}.")
    labels = _column(table, label_column, path)
    if len(labels) and labels.dtype.kind == "f" and np.isnan(labels).any():
        bad = int(np.flatnonzero(np.isnan(labels))[0])
        raise DataError(f"{path}: row {bad + 1} has no label in column {label_column!r}.")
    features = np.empty((table.num_rows, len(feature_names)), dtype=np.float32)
    for j, name in enumerate(feature_names):
        features[:, j] = _column(table, name, path)
    return features, labels


def _column(table: Any, name: str, path: Path) -> np.ndarray:
    import pyarrow as pa

    column = table.column(name)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
            or pa.types.is_boolean(column.type) or pa.types.is_null(column.type)):
        raise DataError(f"{path}: column {name!r} holds {column.type}, not numbers; every column but the label "
                        "column is a feature and must be numeric.")
    # Missing values (empty CSV cells, Parquet nulls) become NaN here and are refused by the caller.
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64 if column.null_count else None)


def _read_csv(path: Path) -> Any:
    pa = _pyarrow("CSV")
    from pyarrow import csv

    try:
        return csv.read_csv(path, read_options=csv.ReadOptions(use_threads=False))
    except pa.ArrowInvalid as e:
        # pyarrow says e.g. "CSV parse error: Expected 4 columns, got 3: 1,2,3" for a ragged row.
        raise DataError(f"{path}: {_first_line(e)}; every row needs one value per header column.") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e}).") from None


def _read_parquet(path: Path) -> Any:
    pa = _pyarrow("Parquet")
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
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
