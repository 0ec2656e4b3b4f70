"""The user's own data set kinds (deepgrid.data.sources): every kind loads, every bad file says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepgrid import Conf
from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.mapped import MappedDataset
from deepgrid.data.mnist import load_splits, training_split
from deepgrid.errors import ConfigError, DataError
from tests.source_files import (
    IMAGE_SIDE,
    KINDS,
    N_CLASSES,
    N_IN,
    splits,
    write_images,
    write_source,
    write_table,
)


def conf_for(fields: dict[str, Any], **changes: Any) -> Conf:
    fields = dict(fields)
    network = {"hidden_layer_sizes": [8], **fields.pop("network")}
    network.update(changes.pop("network", {}))
    return Conf(model="mlp", network=network, **fields, **changes)


def load(kind: str, directory: Path, **changes: Any) -> tuple[ArrayDataset, ArrayDataset]:
    return load_splits(conf_for(write_source(kind, directory), **changes))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_loads_train_and_test(kind: str, tmp_path: Path) -> None:
    train, test = load(kind, tmp_path)
    n_in = IMAGE_SIDE * IMAGE_SIDE if kind == "images" else N_IN
    assert (len(train), len(test)) == (600, 200)
    assert train.x.shape == (600, n_in) and train.x.dtype == torch.float32
    assert train.y.dtype == torch.int64 and set(train.y.tolist()) == set(range(N_CLASSES))
    if kind == "images":
        assert 0 <= float(train.x.min()) and float(train.x.max()) <= 1  # bytes scaled as MNIST's
    else:  # the numbers as written (CSV with 6 significant digits)
        x, y = splits()["train"]
        assert torch.allclose(train.x, torch.from_numpy(x), atol=1e-4) and torch.equal(train.y, torch.from_numpy(y))
    assert isinstance(train, MappedDataset) == (kind == "npy")


@pytest.mark.parametrize("kind", ["npz", "npy", "images"])
def test_limits_and_binarize(kind: str, tmp_path: Path) -> None:
    train, test = load(kind, tmp_path, train_limit=50, test_limit=7, binarize=True)
    assert (len(train), len(test)) == (50, 7)
    assert set(torch.unique(train.x).tolist()) <= {0.0, 1.0}


def test_named_npz_arrays_and_label_column(tmp_path: Path) -> None:
    x, y = splits()["train"]
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", pixels=(x * 10).astype(np.uint8), classes=y)
        write_table(tmp_path / f"{split}.csv", x, y, label_column="target")
    train, _ = load_splits(Conf(dataset="npz", data_dir=str(tmp_path), x_key="pixels", y_key="classes",
                                network={"n_in": N_IN, "n_out": N_CLASSES}))
    assert torch.allclose(train.x, torch.from_numpy((x * 10).astype(np.uint8) / 255).float())  # uint8 scaled
    train, _ = load_splits(Conf(dataset="csv", data_dir=str(tmp_path), label_column="target",
                                network={"n_in": N_IN, "n_out": N_CLASSES}))
    assert torch.equal(train.y, torch.from_numpy(y))


def test_mapped_dataset_trains_the_same_batches_as_in_memory(tmp_path: Path) -> None:
    mapped, _ = load("npy", tmp_path / "a")
    memory = ArrayDataset(mapped.x, mapped.y)
    assert mapped.digest() == memory.digest()
    for data in (mapped, memory):
        assert data.n_in == N_IN and len(data) == 600
    order = mapped.batch_order(16, seed=3, epoch=1)
    assert torch.equal(order, memory.batch_order(16, seed=3, epoch=1))
    for idx in order[:5]:
        for a, b in zip(mapped.batch(idx), memory.batch(idx), strict=True):
            assert torch.equal(a, b)
    conf = conf_for(write_source("npy", tmp_path / "a"), validation_fraction=0.2)
    (m_train, m_val), (a_train, a_val) = training_split(mapped, conf), training_split(memory, conf)
    assert isinstance(m_train, MappedDataset) and m_train.digest() == a_train.digest()
    assert torch.equal(m_val.x, a_val.x) and torch.equal(m_train.shard(1, 3).y, a_train.shard(1, 3).y)


def test_callable_returning_a_torch_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "my_data.py"
    module.write_text(
        "import torch\n"
        "class Pairs(torch.utils.data.Dataset):\n"
        "    def __init__(self, n): self.n = n\n"
        "    def __len__(self): return self.n\n"
        "    def __getitem__(self, i): return torch.full((4,), float(i % 3)), i % 3\n"
        "def data(split): return Pairs(30 if split == 'train' else 9)\n"
        "def broken(split): raise RuntimeError('no such bucket')\n"
        "not_callable = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    network = {"n_in": 4, "n_out": 3}
    train, test = load_splits(Conf(dataset="callable", data_source="my_data:data", network=network))
    assert (len(train), len(test)) == (30, 9) and torch.equal(train.x[:, 0].long(), train.y)
    for source, fragment in [("my_data:broken", "my_data:broken('train') raised RuntimeError: no such bucket"),
                             ("my_data:not_callable", "is a int, not a function"),
                             ("my_data:missing", "has no 'missing'"),
                             ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
                             (None, "expected 'pkg.module:function'")]:
        with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            load_splits(Conf(dataset="callable", data_source=source, network=network))


def test_an_unknown_kind_and_missing_data_dir_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dataset"):
        Conf(dataset="hdf5")
    with pytest.raises(DataError, match="data_dir, which is not set"):
        load_splits(Conf(dataset="csv"))
    with pytest.raises(DataError, match=r"train\.csv: no such file"):
        load_splits(Conf(dataset="csv", data_dir=str(tmp_path)))


def one_line(error: pytest.ExceptionInfo[DataError], path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_missing_label_column_names_the_file(kind: str, tmp_path: Path) -> None:
    fields = write_source(kind, tmp_path)
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields, label_column="class"))
    assert "no label column 'class'" in one_line(error, tmp_path / f"train.{kind}")


def test_a_ragged_csv_row_names_the_file(tmp_path: Path) -> None:
    fields = write_source("csv", tmp_path)
    path = tmp_path / "test.csv"
    path.write_text(path.read_text() + "1,2,3\n")
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields))
    assert "Expected 17 columns, got 3" in one_line(error, path)


def test_a_missing_value_and_a_text_column_name_the_file(tmp_path: Path) -> None:
    fields = write_source("csv", tmp_path)
    path = tmp_path / "train.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "," + lines[1].split(",", 1)[1], *lines[2:]]) + "\n")
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields))
    assert "example 0 has a missing" in one_line(error, path)
    path.write_text("\n".join([lines[0], "abc," + lines[1].split(",", 1)[1], *lines[2:]]) + "\n")
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields))
    assert "column 'f0'" in one_line(error, path)


def test_an_unreadable_image_names_the_file(tmp_path: Path) -> None:
    fields = write_source("images", tmp_path)
    bad = tmp_path / "train" / "class2" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields))
    assert "not a readable image" in one_line(error, bad)


def test_image_layout_errors(tmp_path: Path) -> None:
    fields = write_source("images", tmp_path)
    with pytest.raises(DataError, match="n_in = 3 x side x side"):
        load_splits(conf_for(fields, image_mode="rgb"))
    write_images(tmp_path / "test" / "extra", 4, 3)  # test/extra/class0..: a class train lacks
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields))
    assert "class folder the training split does not have" in one_line(error, tmp_path / "test" / "extra")


def test_rgb_images(tmp_path: Path) -> None:
    fields = write_source("images", tmp_path)
    train, _ = load_splits(conf_for(fields, image_mode="rgb", network={"n_in": 3 * 4 * 4}))
    assert train.x.shape == (600, 48)


@pytest.mark.parametrize("kind", ["npz", "npy", "csv", "parquet"])
@pytest.mark.parametrize("bad_label", [-1, N_CLASSES])
def test_labels_out_of_range_name_the_file(kind: str, bad_label: int, tmp_path: Path) -> None:
    x, y = splits()["train"]
    y = y.copy()
    y[5] = bad_label
    fields = write_source(kind, tmp_path)
    path = {"npz": "train.npz", "npy": "train_y.npy"}.get(kind, f"train.{kind}")
    if kind == "npz":
        np.savez(tmp_path / path, x=x, y=y)
    elif kind == "npy":
        np.save(tmp_path / path, y)
    else:
        write_table(tmp_path / path, x, y)
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields))
    assert f"label {bad_label} (example 5) is out of range" in one_line(error, tmp_path / path)


@pytest.mark.parametrize("kind", ["npz", "npy", "csv", "parquet", "callable"])
def test_a_feature_count_other_than_n_in_names_the_file(kind: str, tmp_path: Path) -> None:
    fields = write_source(kind, tmp_path)
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields, network={"n_in": N_IN + 1}))
    where = "callable_split('train')" if kind == "callable" else str(tmp_path / "train")
    assert f"{N_IN} features per example but network.n_in is {N_IN + 1}" in str(error.value)
    assert where in str(error.value) and "\n" not in str(error.value)


def test_damaged_array_files_name_the_file(tmp_path: Path) -> None:
    fields = write_source("npz", tmp_path / "z")
    (tmp_path / "z" / "train.npz").write_bytes(b"garbage")
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields))
    assert "not a readable .npz file" in one_line(error, tmp_path / "z" / "train.npz")
    fields = write_source("npz", tmp_path / "k")
    with pytest.raises(DataError, match="no array named 'features'"):
        load_splits(conf_for(fields, x_key="features"))
    fields = write_source("npy", tmp_path / "m")
    np.save(tmp_path / "m" / "train_x.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError) as error:  # an object array is a pickle: never loaded
        load_splits(conf_for(fields))
    assert "not a readable .npy file" in one_line(error, tmp_path / "m" / "train_x.npy")
    fields = write_source("npy", tmp_path / "n")
    np.save(tmp_path / "n" / "test_y.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields))
    assert "3 labels for the 200 examples" in one_line(error, tmp_path / "n" / "test_y.npy")
