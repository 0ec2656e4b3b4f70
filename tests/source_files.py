"""Learnable data sets written in each data source format (deepgrid.data.sources), for tests.

Features: four Gaussian blobs in 16 dimensions (any working trainer separates them). Images:
four 8 x 8 grayscale class templates plus noise, saved as PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

N_IN, N_CLASSES = 16, 4
IMAGE_SIDE = 8
KINDS = ("npz", "npy", "csv", "parquet", "images", "callable")


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(N_CLASSES, N_IN)) * 2
    y = rng.integers(0, N_CLASSES, n)
    return (centers[y] + rng.normal(size=(n, N_IN))).astype(np.float32), y.astype(np.int64)


def splits(n_train: int = 600, n_test: int = 200) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": blobs(n_train, 1), "test": blobs(n_test, 2)}


def callable_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """A data_source for ``dataset: callable`` (tests.source_files:callable_split)."""
    return splits()[split]


def write_table(path: Path, x: np.ndarray, y: np.ndarray, label_column: str = "label") -> None:
    columns = {f"f{j}": x[:, j] for j in range(x.shape[1])}
    columns[label_column] = y
    if path.suffix == ".csv":
        lines = [",".join(columns)]
        lines += [",".join(f"{v:.6g}" for v in row) + f",{int(label)}" for row, label in zip(x, y, strict=True)]
        path.write_text("\n".join(lines) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), path, row_group_size=256)


def write_images(folder: Path, n: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(98).integers(0, 256, size=(N_CLASSES, IMAGE_SIDE, IMAGE_SIDE))
    for i in range(n):
        label = i % N_CLASSES
        pixels = np.clip(templates[label] + rng.integers(-40, 41, size=(IMAGE_SIDE, IMAGE_SIDE)), 0, 255)
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(folder / f"class{label}" / f"{i}.png")


def write_source(kind: str, directory: Path, n_train: int = 600, n_test: int = 200) -> dict[str, Any]:
    """Write ``kind``'s train and test files into ``directory``; return the Conf fields that read them."""
    directory.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = {"dataset": kind, "data_dir": str(directory)}
    network: dict[str, Any] = {"n_in": N_IN, "n_out": N_CLASSES}
    if kind == "images":
        write_images(directory / "train", n_train, 1)
        write_images(directory / "test", n_test, 2)
        return fields | {"network": network | {"n_in": IMAGE_SIDE * IMAGE_SIDE}}
    for split, (x, y) in splits(n_train, n_test).items():
        if kind == "npz":
            np.savez(directory / f"{split}.npz", x=x, y=y)
        elif kind == "npy":
            np.save(directory / f"{split}_x.npy", x)
            np.save(directory / f"{split}_y.npy", y)
        elif kind in ("csv", "parquet"):
            write_table(directory / f"{split}.{kind}", x, y)
    if kind == "callable":
        fields = {"dataset": kind, "data_source": "tests.source_files:callable_split"}
    return fields | {"network": network}
