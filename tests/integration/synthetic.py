"""Small synthetic data for distributed tests: quick to train, easy to get right."""

from __future__ import annotations

import torch

from deepgrid import Conf
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


def mlp_network(**changes: object) -> dict[str, object]:
    """The network section of the small MLP the distributed tests train on the blobs."""
    return dict(n_in=N_IN, n_out=N_CLASSES, hidden_layer_sizes=[32], activation="relu", finetune_lr=0.05) | changes


def mlp_conf(**changes: object) -> Conf:
    """Two workers train that MLP, averaging every 4 mini-batches of 16, for 2 epochs; ``changes`` replace fields."""
    base = dict(model="mlp", workers=2, batch_size=16, averaging_frequency=4, epochs=2, network=mlp_network())
    base.update(changes)
    return Conf(**base)  # type: ignore[arg-type]
