"""Finding and loading MNIST-style data: small fake sets in tmp_path, and the real files when installed."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import deepgrid.data.mnist as mnist
from deepgrid import Conf
from deepgrid.data.idx import write_idx
from deepgrid.data.mnist import find_data_dir, load_mnist, load_splits
from deepgrid.errors import DataError

REAL = Path("/usr/share/datasets/fashion-mnist")


def make_set(directory: Path, n_train: int = 12, n_test: int = 5, *, spelling: str = "-", gz: bool = True) -> Path:
    """Write a tiny MNIST-shaped set: pixel values i % 256, label i % 10."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = (np.arange(n * 784) % 256).astype(np.uint8).reshape(n, 28, 28)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(directory / f"{stem}-images{spelling}idx3-ubyte{suffix}", images)
        write_idx(directory / f"{stem}-labels{spelling}idx1-ubyte{suffix}", labels)
    return directory


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the machine's real data or network unless it asks."""
    monkeypatch.delenv(mnist.ENV_VAR, raising=False)
    monkeypatch.setattr(mnist, "DEBIAN_DATASETS", tmp_path / "debian-datasets")

    def no_network(*args, **kwargs):
        raise AssertionError("loading data must never use the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(mnist, "download_mnist", no_network)


def test_loads_scaled_flattened_set(tmp_path):
    ds = load_mnist("fashion-mnist", "train", make_set(tmp_path / "d"))
    assert ds.x.shape == (12, 784) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == [i % 10 for i in range(12)]
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert float(ds.x[0, 128]) == pytest.approx(128 / 255)
    test = load_mnist("fashion-mnist", "test", tmp_path / "d")
    assert test.x.shape == (5, 784)


def test_binarize_and_limit(tmp_path):
    ds = load_mnist("mnist", "train", make_set(tmp_path / "d", gz=False), binarize=True, limit=3)
    assert len(ds) == 3
    assert set(ds.x.unique().tolist()) == {0.0, 1.0}
    # pixel values are i % 256: 127/255 < 0.5 < 128/255
    assert float(ds.x[0, 127]) == 0.0 and float(ds.x[0, 128]) == 1.0
    assert len(load_mnist("mnist", "train", tmp_path / "d", limit=1000)) == 12


def test_bad_arguments(tmp_path):
    make_set(tmp_path / "d")
    with pytest.raises(DataError, match="`split`.*'train' or 'test'"):
        load_mnist("mnist", "valid", tmp_path / "d")
    with pytest.raises(DataError, match="`limit`"):
        load_mnist("mnist", "train", tmp_path / "d", limit=0)
    with pytest.raises(DataError, match="`dataset`.*'fashion-mnist', 'mnist'"):
        find_data_dir("cifar10", tmp_path / "d")


def test_mnist_dot_spelling_in_named_subfolder(tmp_path, monkeypatch):
    make_set(tmp_path / "data" / "mnist", spelling=".", gz=False)
    monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path / "data"))
    assert find_data_dir("mnist") == tmp_path / "data" / "mnist"
    assert load_mnist("mnist", "test").x.shape == (5, 784)


def test_deepgrid_data_holding_files_directly(tmp_path, monkeypatch):
    make_set(tmp_path / "flat")
    monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path / "flat"))
    assert find_data_dir("fashion-mnist") == tmp_path / "flat"


def test_search_order(tmp_path, monkeypatch):
    debian = make_set(tmp_path / "debian-datasets" / "fashion-mnist")
    assert find_data_dir() == debian
    env = make_set(tmp_path / "env")
    monkeypatch.setenv(mnist.ENV_VAR, str(env))
    assert find_data_dir() == env
    explicit = make_set(tmp_path / "explicit")
    assert find_data_dir(data_dir=explicit) == explicit


def test_missing_data_reports_every_place(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DataError) as e:
        find_data_dir("fashion-mnist")
    msg = str(e.value)
    assert "\n" not in msg
    for place in (tmp_path / "env", tmp_path / "env" / "fashion-mnist", tmp_path / "debian-datasets" / "fashion-mnist"):
        assert str(place) in msg
    assert "train-images-idx3-ubyte[.gz]" in msg
    assert "--data-dir" in msg and "DEEPGRID_DATA" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_unset_or_stale_env_is_reported(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"\$DEEPGRID_DATA \(not set\)"):
        find_data_dir("mnist")
    monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"DEEPGRID_DATA=.*gone \(does not exist\).*download_mnist"):
        find_data_dir("mnist")


def test_explicit_data_dir_that_does_not_exist(tmp_path):
    make_set(tmp_path / "debian-datasets" / "fashion-mnist")  # must not be used instead
    with pytest.raises(DataError, match=r"Data directory '.*typo' does not exist.*--data-dir"):
        find_data_dir("fashion-mnist", tmp_path / "typo")


def test_explicit_data_dir_without_files(tmp_path):
    make_set(tmp_path / "debian-datasets" / "fashion-mnist")  # must not be used instead
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="does not hold the fashion-mnist files.*missing train-images"):
        find_data_dir("fashion-mnist", tmp_path / "empty")


def test_labels_out_of_range(tmp_path):
    d = make_set(tmp_path / "d")
    write_idx(d / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3], dtype=np.uint8))
    with pytest.raises(DataError, match=r"labels must lie in 0..9, found values from 0 to 10"):
        load_mnist("fashion-mnist", "train", d)


def test_mismatched_counts(tmp_path):
    d = make_set(tmp_path / "d")
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match="holds 5 images but t10k-labels-idx1-ubyte.gz holds 4 labels"):
        load_mnist("fashion-mnist", "test", d)


def test_wrong_image_dims(tmp_path):
    d = make_set(tmp_path / "d")
    write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((12, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 images of shape \(N, 28, 28\), found uint8 of shape \(12, 32, 32\)"):
        load_mnist("fashion-mnist", "train", d)


def test_damaged_file_names_the_file(tmp_path):
    d = make_set(tmp_path / "d", gz=False)
    path = d / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: IDX file is truncated"):
        load_mnist("fashion-mnist", "train", d)


def test_load_splits_applies_conf(tmp_path):
    conf = Conf(model="mlp", dataset="mnist", data_dir=str(make_set(tmp_path / "d")), binarize=True, train_limit=7, test_limit=2)
    train, test = load_splits(conf)
    assert (len(train), len(test)) == (7, 2)
    assert set(train.x.unique().tolist()) == {0.0, 1.0}


@pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(mnist, "DEBIAN_DATASETS", REAL.parent)
    train, test = load_splits(Conf(model="mlp"))  # the default "dbn" may not be registered yet
    assert train.x.shape == (60000, 784) and test.x.shape == (10000, 784)
    assert train.y.shape == (60000,) and len(test.y) == 10000
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert torch.bincount(train.y).tolist() == [6000] * 10  # Fashion-MNIST is balanced
