"""Small synthetic data for distributed tests: quick to train, easy to get right."""

from __future__ import annotations

import torch

from deepgrid.data.dataset import ArrayDataset

N_IN, N_CLASSES = 20, 4


def blobs(n: int, seed: int) -> ArrayDataset:
    """Four well-separated Gaussian clusters: any working trainer gets them right."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(N_CLASSES, N_IN, generator=torch.Generator().manual_seed(99)) * 2
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = centers[y] + torch.randn(n, N_IN, generator=g)
    return ArrayDataset(x, y)


TRAIN, TEST = blobs(3000, seed=1), blobs(1000, seed=2)
