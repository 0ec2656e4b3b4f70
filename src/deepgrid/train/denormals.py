"""Denormal floats flushed to zero while deepgrid trains (FTZ and DAZ on x86, as TensorFlow sets
them in its CPU threads).

Why: an SGD momentum buffer entry whose gradient is zero (the weight of a pixel that is 0 in
every image, a unit that never fires) shrinks by the momentum every step, down through the
denormal range, where the CPU takes a slow path for every operation on it. In the bench's MLP
on Fashion-MNIST, a plain loop's buffers held 2,573, 4,589 and 5,097 denormal entries after
epochs 1-3, and those epochs took 0.96, 1.06 and 1.10 s; flushed, 0.98, 0.97 and 0.99 s. A
value that small (below 1.2e-38) moves no float32 parameter.

The setting is per thread; threads started afterwards inherit it (torch's intra-op pool too, if
it is made later), so a worker sets it before anything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_DENORMAL = 1e-39  # below float32's smallest normal number (1.18e-38)


def flushing() -> bool:
    """Whether this thread flushes denormal floats to zero now (torch has no getter for it)."""
    return float(torch.tensor([_DENORMAL], dtype=torch.float32) * 1.0) == 0.0


def flush_denormals() -> None:
    """Flush denormals to zero in this thread from now on (a process deepgrid owns: a worker)."""
    torch.set_flush_denormal(True)


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormals to zero in this thread for the block, then put the setting back as it was
    (the single-process loop runs in the user's own process)."""
    before = flushing()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
