"""Shared fixtures: a tiny synthetic Fashion-MNIST-shaped data set, and no real data unless asked.

``make_fashion_dir`` writes the four IDX files (28x28 uint8 images, labels 0..9)
with a learnable pattern: each class is a fixed random template plus noise, so a
small network trained for an epoch or two is well above chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import deepgrid.data.mnist as mnist
from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.idx import write_idx

N_TRAIN = 600
N_TEST = 200
N_CLASSES = 10


def make_fashion_dir(directory: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, *, seed: int = 0,
                     gz: bool = False) -> Path:
    """Write train/t10k images and labels into ``directory`` (created); return it."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(N_CLASSES, 28, 28))
    suffix = ".gz" if gz else ""
    for stem, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % N_CLASSES
        rng.shuffle(labels)
        noise = rng.integers(-60, 61, size=(n, 28, 28))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        write_idx(directory / f"{stem}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{stem}-labels-idx1-ubyte{suffix}", labels.astype(np.uint8))
    return directory


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests train tiny networks: one thread is fastest, and on a busy 2-core machine two threads
    can spin against each other and run 10-40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    """A read-only synthetic Fashion-MNIST directory shared by the session (copy it before damaging it)."""
    return make_fashion_dir(tmp_path_factory.mktemp("fashion"))


@pytest.fixture
def fresh_fashion_dir(tmp_path) -> Path:
    """A synthetic Fashion-MNIST directory of this test's own, free to damage."""
    return make_fashion_dir(tmp_path / "fashion")


@pytest.fixture
def no_default_data(tmp_path, monkeypatch):
    """No test finds the machine's real data by accident: $DEEPGRID_DATA unset, Debian's folder moved."""
    monkeypatch.delenv(mnist.ENV_VAR, raising=False)
    monkeypatch.setattr(mnist, "DEBIAN_DATASETS", tmp_path / "no-debian-datasets")
    return tmp_path / "no-debian-datasets"


def class_data(n: int, n_in: int, n_classes: int = N_CLASSES, *, seed: int = 0,
               noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): x in [0, 1] of shape (n, n_in), near one of n_classes binary templates; y its class."""
    g = torch.Generator().manual_seed(seed)
    templates = (torch.rand(n_classes, n_in, generator=g) > 0.5).float()
    y = torch.arange(n) % n_classes
    y = y[torch.randperm(n, generator=g)]
    x = (templates[y] + noise * torch.randn(n, n_in, generator=g)).clamp_(0, 1)
    return x, y


@pytest.fixture(scope="session")
def make_class_data():
    """The ``class_data`` function, for tests that need data of their own sizes."""
    return class_data


@pytest.fixture(scope="session")
def make_fashion():
    """The ``make_fashion_dir`` function, for tests that need a data set of their own."""
    return make_fashion_dir


@pytest.fixture
def small_dataset() -> ArrayDataset:
    """320 examples of 64 features in 10 learnable classes."""
    x, y = class_data(320, 64)
    return ArrayDataset(x, y)
