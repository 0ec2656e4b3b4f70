"""The master's training data as given by a user: whatever it is, one in-memory data set."""

from __future__ import annotations

from typing import Any

import torch

from deepgrid.data.dataset import ArrayDataset
from deepgrid.errors import DataError


def as_dataset(iterator: Any, n_in: int, n_out: int) -> ArrayDataset:
    """The master's iterator as an in-memory data set (the seed's DataSetIterator, materialised)."""
    if isinstance(iterator, ArrayDataset):
        return iterator
    if isinstance(iterator, tuple) and len(iterator) == 2:
        return ArrayDataset.from_any(iterator[0], iterator[1], n_in=n_in, n_classes=n_out)
    if isinstance(iterator, torch.utils.data.Dataset):
        return ArrayDataset.from_any(iterator, n_in=n_in, n_classes=n_out)
    xs, ys = [], []
    for x, y in iterator:
        batch = ArrayDataset.from_any(x, y, n_in=n_in, n_classes=n_out)
        xs.append(batch.x)
        ys.append(batch.y)
    if not xs:
        raise DataError("The master's iterator gave no data; pass an iterator of (x, y) batches.")
    return ArrayDataset(torch.cat(xs), torch.cat(ys))
