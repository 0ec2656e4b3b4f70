"""The reference loop: every phase, sample counts, determinism, early stopping, jobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.data.dataset import ArrayDataset
from deepgrid.errors import DataError
from deepgrid.models import registry
from deepgrid.models.base import FINETUNE
from deepgrid.models.mlp import MLP
from deepgrid.train.loop import fit, jobs, phase_seed
from deepgrid.train.schedule import EarlyStopping

SMALL = {"n_in": 64, "hidden_layer_sizes": (16, 8)}


def layerwise_kinds() -> list[str]:
    """Registered kinds with pretraining phases (their phase list depends on pretrain_epochs)."""
    return [n for n in registry.names() if n in ("rbm", "dbn", "sda")]


def test_fit_runs_every_phase_and_counts_samples(small_dataset):
    names = [n for n in registry.names() if n != "cnn"]  # the CNN needs a 2-d input shape
    assert "mlp" in names
    for name in names:
        model = registry.get(name)(NeuralNetConfiguration(**SMALL, pretrain_epochs=2))
        phases = model.phases(3)
        calls: list[tuple[str, int]] = []
        result = fit(model, small_dataset, epochs=3, batch_size=32, job_size=4,
                     on_epoch=lambda phase, epoch, loss, calls=calls: calls.append((phase.name, epoch)))
        n_batches = len(small_dataset) // 32
        assert result.samples == sum(p.epochs for p in phases) * n_batches * 32, name
        expected = [(p.name, e) for p in phases for e in range(p.epochs)]
        assert calls == expected, name
        assert [(h["phase"], h["epoch"]) for h in result.history] == [(p, e + 1) for p, e in expected]
        assert all(np.isfinite(h["loss"]) for h in result.history)
        assert result.elapsed_s > 0 and result.samples_per_s > 0 and not result.stopped_early


def test_ragged_last_batch_is_dropped(make_class_data):
    x, y = make_class_data(100, 64)
    result = fit(MLP(**SMALL), ArrayDataset(x, y), epochs=2, batch_size=32)
    assert result.samples == 2 * 3 * 32  # 100 // 32 = 3 batches an epoch


def test_fit_learns(make_class_data):
    x, y = make_class_data(400, 64, seed=2)
    model = MLP(**SMALL, activation="relu", optimizer="adam", finetune_lr=0.01)
    before = model.score(x, y)
    result = fit(model, ArrayDataset(x, y), epochs=4, batch_size=32)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert model.score(x, y) > max(0.8, before)


@pytest.mark.parametrize("name", ["mlp", *layerwise_kinds()])
def test_same_seed_same_parameters(small_dataset, name):
    conf = NeuralNetConfiguration(**SMALL, dropout=0.2, seed=11)

    def train() -> np.ndarray:
        model = registry.get(name)(conf)
        fit(model, small_dataset, epochs=2, batch_size=32, job_size=3)
        return model.get_flat_params()

    first, second = train(), train()
    np.testing.assert_array_equal(first, second)
    other = registry.get(name)(conf.replace(seed=12))
    fit(other, small_dataset, epochs=2, batch_size=32, job_size=3)
    assert not np.array_equal(first, other.get_flat_params())


def test_job_size_does_not_change_the_result(small_dataset):
    """Jobs only group batches: one process computes the same whatever the job size."""
    results = []
    for job_size in (1, 3, 100):
        model = MLP(**SMALL, seed=4)
        fit(model, small_dataset, epochs=2, batch_size=32, job_size=job_size)
        results.append(model.get_flat_params())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_fit_uses_batch_order(small_dataset):
    """One epoch of fit equals train_step over batch_order's batches by hand."""
    model, by_hand = MLP(**SMALL, seed=3), MLP(**SMALL, seed=3)
    fit(model, small_dataset, epochs=1, batch_size=32)
    order = small_dataset.batch_order(32, phase_seed(3, 0), 0)
    by_hand.train_step(FINETUNE, [small_dataset.batch(idx) for idx in order])
    np.testing.assert_array_equal(model.get_flat_params(), by_hand.get_flat_params())


def test_early_stopping_stops_when_nothing_improves(small_dataset):
    train, validation = small_dataset.split(0.25, seed=0)
    model = MLP(**SMALL, finetune_lr=1e-12, momentum=0.0)
    result = fit(model, train, epochs=6, batch_size=32, validation=validation, patience=1)
    assert result.stopped_early
    # The first check sets the best loss; the second does not improve on it: stop.
    assert len(result.history) == 2
    assert all("validation_loss" in h for h in result.history)
    assert result.samples == 2 * (len(train) // 32) * 32


def test_no_early_stopping_without_patience(small_dataset):
    train, validation = small_dataset.split(0.25, seed=0)
    model = MLP(**SMALL, finetune_lr=1e-12, momentum=0.0)
    result = fit(model, train, epochs=4, batch_size=32, validation=validation, patience=0)
    assert not result.stopped_early and len(result.history) == 4


def test_early_stopping_goes_on_while_improving(make_class_data):
    x, y = make_class_data(400, 64, seed=1)
    train, validation = ArrayDataset(x, y).split(0.25, seed=0)
    model = MLP(**SMALL, activation="relu", optimizer="adam", finetune_lr=0.01)
    result = fit(model, train, epochs=3, batch_size=32, validation=validation, patience=1,
                 min_improvement=0.0)
    assert len(result.history) == 3 and not result.stopped_early
    losses = [h["validation_loss"] for h in result.history]
    assert losses == sorted(losses, reverse=True)


def test_early_stopping_rule():
    stopper = EarlyStopping(patience=2, min_improvement=0.1)
    assert not stopper.should_stop(1.0)  # first check: the best so far
    assert not stopper.should_stop(0.95)  # not better by 0.1: one bad check
    assert stopper.should_stop(0.95)  # two: stop
    stopper = EarlyStopping(patience=2, min_improvement=0.1)
    assert [stopper.should_stop(v) for v in (1.0, 0.95, 0.8, 0.79, 0.5)] == [False, False, False, False, False]
    assert not any(EarlyStopping(patience=0).should_stop(1.0) for _ in range(5))  # off


@pytest.mark.parametrize(("n_batches", "job_size"), [(10, 3), (10, 5), (10, 20), (1, 1), (7, 1)])
def test_jobs_cut_the_order(n_batches, job_size):
    order = torch.arange(n_batches * 4).view(n_batches, 4)
    cut = list(jobs(order, job_size))
    assert len(cut) == -(-n_batches // job_size)
    sizes = [len(job) for job in cut]
    assert max(sizes) <= job_size and max(sizes) - min(sizes) <= 1  # as even as can be
    assert all(job.shape[1] == 4 for job in cut)
    assert torch.equal(torch.cat(cut), order)


def test_phase_seeds_differ():
    assert len({phase_seed(123, i) for i in range(5)}) == 5
    assert phase_seed(123, 0) == 123


def test_batch_larger_than_data_raises(small_dataset):
    with pytest.raises(DataError, match="larger than"):
        fit(MLP(**SMALL), small_dataset, epochs=1, batch_size=len(small_dataset) + 1)


def test_fit_takes_numpy(make_class_data):
    """fit(model, x, y): what Model.fit did before training moved out of the models layer."""
    x, y = make_class_data(128, 64)
    assert fit(MLP(**SMALL), x.numpy(), y.numpy(), epochs=1, batch_size=32).samples == 128
    with pytest.raises(DataError, match="holds its labels"):
        fit(MLP(**SMALL), ArrayDataset(x, y), y.numpy(), epochs=1, batch_size=32)


def test_same_seed_same_parameters_when_built_together(small_dataset):
    conf = NeuralNetConfiguration(**SMALL, dropout=0.2, seed=11)
    first, second = MLP(conf), MLP(conf)
    fit(first, small_dataset, epochs=1, batch_size=32)
    fit(second, small_dataset, epochs=1, batch_size=32)
    np.testing.assert_array_equal(first.get_flat_params(), second.get_flat_params())
