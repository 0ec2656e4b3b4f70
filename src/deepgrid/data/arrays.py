"""Turning what a user hands us (NumPy, lists, tensors) into checked tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from deepgrid.errors import DataError


def as_features(x: Any, n_in: int) -> Tensor:
    """A float32 tensor of shape (N, n_in), or a DataError saying what is wrong.

    Images of shape (N, H, W) or (N, C, H, W) are flattened when their size
    matches ``n_in``.
    """
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as e:
            raise DataError(f"Input is not a numeric array ({e}); pass a NumPy array or tensor of shape (N, {n_in}).") from None
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim > 2:
        t = t.reshape(len(t), -1)
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise DataError(f"Input has dtype {t.dtype}; expected numbers of shape (N, {n_in}).")
    if t.shape[1] != n_in:
        raise DataError(
            f"Input has {t.shape[1]} features per example but the network's n_in is {n_in}; "
            f"set n_in to {t.shape[1]} or pass data of shape (N, {n_in})."
        )
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).nonzero()[0, 0])
        raise DataError(f"Input contains NaN or infinite values (first at example {bad}); clean or drop those examples.")
    return t


def as_labels(y: Any, n_classes: int) -> Tensor:
    """An int64 tensor of class indices in [0, n_classes), or a DataError."""
    t = y.detach() if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
    if t.ndim == 2 and t.shape[1] == n_classes:  # one-hot rows
        t = t.argmax(dim=1)
    if t.ndim != 1:
        raise DataError(f"Labels have shape {tuple(t.shape)}; expected a vector of class indices.")
    if t.is_floating_point():
        if not torch.isfinite(t).all() or not torch.equal(t, t.round()):
            raise DataError("Labels must be whole class indices; found non-integer or NaN values.")
    t = t.to(torch.int64)
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise DataError(
            f"Labels must lie in [0, {n_classes - 1}] for n_out={n_classes}; "
            f"found values from {int(t.min())} to {int(t.max())}. Set n_out or fix the labels."
        )
    return t
