"""Checked inputs (as_features, as_labels) and ArrayDataset's batches, shards and splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepgrid.data.arrays import as_features, as_labels
from deepgrid.data.dataset import ArrayDataset, Batches
from deepgrid.errors import DataError


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# -- features ------------------------------------------------------------------------------------


@pytest.mark.parametrize("x", [np.zeros((5, 10)), np.zeros((5, 10), dtype=np.uint8), torch.zeros(5, 10),
                               np.zeros((5, 10), dtype=np.int64), [[0.0] * 10] * 5],
                         ids=["float64", "uint8", "tensor", "int64", "list"])
def test_features_become_float32(x):
    t = as_features(x, 10)
    assert t.shape == (5, 10) and t.dtype == torch.float32


def test_images_are_flattened_and_one_example_gets_a_row():
    assert as_features(np.zeros((3, 28, 28)), 784).shape == (3, 784)
    assert as_features(np.zeros((3, 1, 28, 28)), 784).shape == (3, 784)
    assert as_features(np.arange(4.0), 4).shape == (1, 4)


def test_n_in_mismatch_says_both_numbers():
    with pytest.raises(DataError) as error:
        as_features(np.zeros((5, 100)), 784)
    assert_one_line(error, "100", "784")


def test_nan_and_inf_are_rejected_with_the_example():
    x = np.zeros((6, 4), dtype=np.float32)
    x[3, 1] = np.nan
    with pytest.raises(DataError) as error:
        as_features(x, 4)
    assert_one_line(error, "NaN", "example 3")
    x[3, 1], x[5, 0] = 0, np.inf
    with pytest.raises(DataError) as error:
        as_features(x, 4)
    assert_one_line(error, "example 5")


@pytest.mark.parametrize("x", [np.array([["a", "b"]]), np.zeros((2, 2), dtype=bool), np.array([[1 + 2j, 0]])],
                         ids=["strings", "bool", "complex"])
def test_non_numbers_are_rejected(x):
    with pytest.raises(DataError):
        as_features(x, 2)


def test_ragged_lists_are_rejected():
    with pytest.raises(DataError) as error:
        as_features([[1.0, 2.0], [3.0]], 2)
    assert_one_line(error, "numeric array")


# -- labels --------------------------------------------------------------------------------------------


def test_labels_become_int64():
    t = as_labels(np.array([0, 3, 9], dtype=np.uint8), 10)
    assert t.dtype == torch.int64 and t.tolist() == [0, 3, 9]
    assert as_labels(np.array([1.0, 2.0]), 10).tolist() == [1, 2]  # whole floats are fine


def test_one_hot_labels_are_accepted():
    y = np.array([2, 0, 9, 4])
    one_hot = np.eye(10, dtype=np.float32)[y]
    assert as_labels(one_hot, 10).tolist() == y.tolist()
    ds = ArrayDataset.from_any(np.zeros((4, 5)), one_hot, n_in=5, n_classes=10)
    assert ds.y.tolist() == y.tolist()


@pytest.mark.parametrize(("y", "low", "high"), [([0, 10, 3], "0", "10"), ([-1, 2], "-1", "2")])
def test_labels_out_of_range(y, low, high):
    with pytest.raises(DataError) as error:
        as_labels(np.array(y), 10)
    assert_one_line(error, "[0, 9]", f"from {low} to {high}")


@pytest.mark.parametrize("y", [np.array([0.5, 1.0]), np.array([np.nan, 1.0]), np.zeros((2, 3, 4))],
                         ids=["fraction", "nan", "3-d"])
def test_bad_labels(y):
    with pytest.raises(DataError):
        as_labels(y, 10)


def test_from_any_checks_lengths_and_features():
    with pytest.raises(DataError) as error:
        ArrayDataset.from_any(np.zeros((5, 4)), np.zeros(4, dtype=int))
    assert_one_line(error, "5 examples", "4 labels")
    with pytest.raises(DataError):
        ArrayDataset.from_any(np.zeros((5, 4)), np.zeros(5, dtype=int), n_in=3)


def test_from_any_without_labels_and_from_a_torch_dataset():
    ds = ArrayDataset.from_any(np.ones((6, 3)))
    assert ds.n_in == 3 and ds.y.tolist() == [0] * 6
    pairs = torch.utils.data.TensorDataset(torch.rand(7, 2, 2), torch.arange(7) % 3)
    ds = ArrayDataset.from_any(pairs)
    assert ds.x.shape == (7, 4) and ds.y.tolist() == [i % 3 for i in range(7)]


# -- ArrayDataset --------------------------------------------------------------------------------------


def dataset(n: int) -> ArrayDataset:
    return ArrayDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n) % 10)


@pytest.mark.parametrize(("n", "count"), [(100, 3), (10, 10), (7, 1), (5, 8)])
def test_shards_are_disjoint_and_cover_everything(n, count):
    ds = dataset(n)
    shards = [ds.shard(i, count) for i in range(count)]
    ids = [s.x[:, 0].long().tolist() for s in shards]
    flat = [i for shard in ids for i in shard]
    assert sorted(flat) == list(range(n)) and len(flat) == len(set(flat))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    for shard in shards:  # labels travel with their examples
        assert torch.equal(shard.y, shard.x[:, 0].long() % 10)
    assert ids == [s.x[:, 0].long().tolist() for s in (ds.shard(i, count) for i in range(count))]


@pytest.mark.parametrize(("index", "count"), [(3, 3), (-1, 3), (0, 0)])
def test_shard_that_does_not_exist(index, count):
    with pytest.raises(DataError):
        dataset(10).shard(index, count)


def test_batch_order_is_deterministic_per_seed_and_epoch():
    ds = dataset(100)
    order = ds.batch_order(16, seed=5, epoch=0)
    assert order.shape == (6, 16) and order.dtype == torch.int64
    assert len(set(order.flatten().tolist())) == 96  # no example twice; the ragged rest is dropped
    assert torch.equal(order, dataset(100).batch_order(16, seed=5, epoch=0))
    assert not torch.equal(order, ds.batch_order(16, seed=5, epoch=1))
    assert not torch.equal(order, ds.batch_order(16, seed=6, epoch=0))
    torch.manual_seed(0)  # the global RNG plays no part
    again = ds.batch_order(16, seed=5, epoch=0)
    torch.rand(10)
    assert torch.equal(again, ds.batch_order(16, seed=5, epoch=0))


def test_batches_follow_batch_order():
    ds = dataset(50)
    order = ds.batch_order(10, seed=1, epoch=2)
    batches = list(ds.batches(10, seed=1, epoch=2))
    assert len(batches) == ds.n_batches(10) == 5
    for (x, y), idx in zip(batches, order, strict=True):
        assert x[:, 0].long().tolist() == idx.tolist() and torch.equal(y, idx % 10)


def test_batch_size_larger_than_the_data():
    with pytest.raises(DataError) as error:
        dataset(10).batch_order(11, seed=0, epoch=0)
    assert_one_line(error, "11", "10 examples")
    assert dataset(10).batch_order(10, seed=0, epoch=0).shape == (1, 10)


def test_split_is_disjoint_and_seeded():
    ds = dataset(100)
    rest, held = ds.split(0.2, seed=3)
    assert (len(rest), len(held)) == (80, 20)
    ids = rest.x[:, 0].long().tolist() + held.x[:, 0].long().tolist()
    assert sorted(ids) == list(range(100))
    assert torch.equal(held.x, ds.split(0.2, seed=3)[1].x)
    assert not torch.equal(held.x, ds.split(0.2, seed=4)[1].x)


def test_lengths_must_match():
    with pytest.raises(DataError):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64))


def test_batch_size_zero_is_a_data_error():
    with pytest.raises(DataError):
        dataset(10).batch_order(0, seed=0, epoch=0)


def test_a_batch_is_the_rows_that_plain_indexing_gives():
    data = ArrayDataset(torch.randn(50, 7), torch.arange(50))
    rows = torch.tensor([3, 41, 3, 0])
    x, y = data.batch(rows)
    assert torch.equal(x, data.x[rows]) and torch.equal(y, data.y[rows])


def test_a_jobs_batches_are_gathered_when_read_and_read_as_often_as_asked():
    data = ArrayDataset(torch.randn(40, 5), torch.arange(40))
    order = data.batch_order(4, seed=1, epoch=0)
    batches = Batches(data, order[2:7])
    eager = [data.batch(idx) for idx in order[2:7]]
    assert len(batches) == 5
    for _ in range(2):  # iterable again: a model may go over its batches twice (dbn.train_step)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, eager, strict=True))
    assert torch.equal(batches[-1][1], eager[-1][1])
    assert [torch.equal(b[1], e[1]) for b, e in zip(batches[1:3], eager[1:3], strict=True)] == [True, True]
    with pytest.raises(IndexError):
        batches[5]
