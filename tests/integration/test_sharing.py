"""The ``sharing`` strategy: the encoding and its residual (plain calls), and runs on real Ray actors."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from deepgrid import Conf, ConfigError
from deepgrid.distributed.runner import ActorNetworkRunner
from deepgrid.distributed.strategies import make_strategy
from deepgrid.distributed.strategies.average import AverageStrategy
from deepgrid.distributed.strategies.base import JobResult
from deepgrid.distributed.strategies.sharing import SharingPlugin, SharingStrategy, decode, wire_bytes
from deepgrid.models.mlp import MLP
from deepgrid.state.base import Job
from tests.integration.local_engine import ray_local  # noqa: F401 (an autouse fixture)
from tests.integration.synthetic import TEST, TRAIN, mlp_conf, mlp_network

N = 10_000


def dense(encoding: dict[str, np.ndarray], n: int = N) -> np.ndarray:
    out = np.zeros(n, dtype=np.float64)
    index, values = decode(encoding, n)
    out[index] = values
    return out


def job_result(worker_id: str, index: int, update: dict[str, np.ndarray], n_samples: int) -> JobResult:
    return JobResult(worker_id, Job("finetune", 0, index, 0, 1), update, n_samples, 0.0, 0.0)


# -- the encoding, without Ray ---------------------------------------------------------------------


def test_an_update_is_what_was_sent_plus_what_stays_behind() -> None:
    rng = np.random.default_rng(0)
    start = rng.normal(size=N).astype(np.float32)
    delta = rng.normal(size=N).astype(np.float32)
    plugin = SharingPlugin(sparsity=0.01)
    encoding = plugin.encode(start, start + delta)
    assert set(encoding) == {"signed_index", "tau"} and encoding["signed_index"].dtype == np.int32
    sent = dense(encoding)
    assert np.count_nonzero(sent) == plugin.last_sent == 100  # 1/100 of the entries
    chosen = sent != 0
    np.testing.assert_array_equal(np.abs(sent[chosen]), np.float32(plugin.tau))  # each +-tau ...
    update = (start + delta) - start  # what the worker changed, as float32 computes it
    assert np.all(np.sign(sent[chosen]) == np.sign(update[chosen]))  # ... with the update's sign
    assert np.all(np.abs(update[chosen]) >= plugin.tau)  # the largest entries
    assert np.all(np.abs(update[~chosen]) <= plugin.tau)
    np.testing.assert_allclose(sent + plugin.residual, update, atol=1e-6)
    # A sent entry keeps its sign in the residual: +-tau never overshoots.
    assert np.all(plugin.residual[chosen] * update[chosen] >= 0)
    assert wire_bytes(encoding) <= 4 * N / 50


def test_the_residual_is_sent_by_later_jobs() -> None:
    rng = np.random.default_rng(1)
    plugin = SharingPlugin(sparsity=0.02)
    params = np.zeros(N, dtype=np.float32)
    received = np.zeros(N, dtype=np.float64)
    changed = np.zeros(N, dtype=np.float64)
    for _ in range(30):
        delta = (rng.normal(size=N) * 1e-3).astype(np.float32)
        delta[:50] += 0.01  # a steady direction: small steps that add up
        received += dense(plugin.encode(params, params + delta))
        changed += delta
    np.testing.assert_allclose(received + plugin.residual, changed, atol=1e-5)  # nothing lost
    assert np.all(received[:50] > 0)  # the steady entries were sent, a little at a time


def test_exact_values_and_the_dense_fallback() -> None:
    rng = np.random.default_rng(2)
    start = np.zeros(N, dtype=np.float32)
    delta = rng.normal(size=N).astype(np.float32)
    values = SharingPlugin(sparsity=0.01, quantise=False)
    encoding = values.encode(start, delta)
    assert set(encoding) == {"index", "value"}
    sent = dense(encoding)
    np.testing.assert_array_equal(sent[sent != 0], delta[sent != 0])  # the values themselves
    np.testing.assert_array_equal(values.residual[sent != 0], 0)
    whole = SharingPlugin(sparsity=1.0)  # every entry: +-tau is no smaller than the dense vector
    encoding = whole.encode(start, delta)
    assert set(encoding) == {"dense"} and whole.residual is None
    np.testing.assert_array_equal(encoding["dense"], delta)


def test_a_new_phase_drops_the_residual() -> None:
    plugin = SharingPlugin(sparsity=0.01)
    assert plugin.gradient_hook(None, "pretrain-1") is None  # type: ignore[arg-type]
    plugin.encode(np.zeros(N, np.float32), np.ones(N, np.float32))
    assert plugin.residual is not None
    plugin.gradient_hook(None, "pretrain-1")  # type: ignore[arg-type]
    assert plugin.residual is not None
    plugin.gradient_hook(None, "finetune")  # type: ignore[arg-type]
    assert plugin.residual is None


def test_the_master_applies_the_sample_weighted_mean_of_the_updates() -> None:
    params = np.full(4, 10.0, dtype=np.float32)
    a1 = {"dense": np.array([1, 0, 0, 0], np.float32)}
    a2 = {"signed_index": np.array([-3], np.int32), "tau": np.array(2.0, np.float32)}  # entry 2: -2
    b = {"index": np.array([1], np.int32), "value": np.array([4.0], np.float32)}
    strategy = SharingStrategy(sparsity=0.01)
    # Worker a trained two jobs (the second continued from its own parameters): 30 samples in all.
    results = [job_result("a", 0, a1, 10), job_result("b", 1, b, 10), job_result("a", 2, a2, 20)]
    new = strategy.combine(params, results)
    # a changed [1, 0, -2, 0] with 30 samples, b changed [0, 4, 0, 0] with 10.
    np.testing.assert_allclose(new, params + np.array([30 * 1, 10 * 4, 30 * -2, 0]) / 40)
    assert strategy.round_bytes_dense == 3 * 4 * 4
    assert strategy.round_bytes_sent == sum(wire_bytes(r.update) for r in results)
    assert strategy.round_metrics == {"bytes_sent": strategy.round_bytes_sent, "bytes_dense": 48}
    assert strategy.block_step is None  # block momentum is off unless asked for


def test_dense_updates_give_what_average_gives() -> None:
    """The scale of ``average``: the mean of the workers' parameters is params + the mean delta."""
    rng = np.random.default_rng(3)
    params = rng.normal(size=N).astype(np.float32)
    ends = [params + rng.normal(size=N).astype(np.float32) * 0.1 for _ in range(2)]
    average = AverageStrategy(block_momentum=0.0).combine(
        params, [job_result(w, i, end, 16 * (i + 1)) for i, (w, end) in enumerate(zip("ab", ends, strict=True))])
    plugin = SharingPlugin(sparsity=1.0)
    sharing = SharingStrategy(sparsity=1.0).combine(
        params, [job_result(w, i, plugin.encode(params, end), 16 * (i + 1))
                 for i, (w, end) in enumerate(zip("ab", ends, strict=True))])
    np.testing.assert_allclose(sharing, average, atol=1e-6)


def test_the_byte_counts_and_block_momentum_survive_a_checkpoint() -> None:
    strategy = SharingStrategy(sparsity=0.01, block_momentum=0.5)
    params = np.zeros(4, dtype=np.float32)
    for _ in range(2):
        params = strategy.combine(params, [job_result("a", 0, {"dense": np.ones(4, np.float32)}, 8)])
    np.testing.assert_allclose(params, [2.5] * 4)  # 1, then 1 + 0.5 x 1
    state = strategy.state_dict()
    again = SharingStrategy(sparsity=0.01, block_momentum=0.5)
    again.load_state_dict(state)
    assert (again.bytes_sent, again.bytes_dense) == (strategy.bytes_sent, strategy.bytes_dense) != (0, 0)
    np.testing.assert_array_equal(again.block_step, strategy.block_step)
    again.begin_phase()
    assert again.block_step is None


def test_the_conf_names_the_strategy_and_checks_the_sparsity() -> None:
    strategy = make_strategy(Conf(model="mlp", strategy="sharing", sharing_sparsity=0.05))
    assert isinstance(strategy, SharingStrategy) and strategy.worker_plugin().sparsity == 0.05
    for bad in (0, 1.5, -0.1, "a lot"):
        with pytest.raises(ConfigError, match="sharing_sparsity"):
            Conf(model="mlp", sharing_sparsity=bad)  # type: ignore[arg-type]


# -- runs on real Ray actors -----------------------------------------------------------------------


def conf(**changes: object) -> Conf:
    # 256 hidden units: 6,404 parameters, so that 1/100 of them (64 int32) plus the serialised
    # dict's ~200 bytes of framing stay under 1/50 of a dense vector (512 bytes).
    return mlp_conf(**{"strategy": "sharing", "network": mlp_network(hidden_layer_sizes=[256]), **changes})


def run(c: Conf, on_round=None, resume=None) -> tuple[ActorNetworkRunner, MLP]:
    runner = ActorNetworkRunner("master", TRAIN)
    runner.on_round = on_round
    try:
        runner.setup(c, resume=resume)
        model = runner.train()
    finally:
        runner.shutdown()
    return runner, model


def complete_ledger(runner: ActorNetworkRunner, epochs: int = 2) -> bool:
    n_batches = TRAIN.n_batches(16)
    return all(runner.ledger[("finetune", e)] == {i: 1 for i in range(n_batches)} for e in range(epochs))


def test_two_workers_converge_sending_at_most_a_fiftieth_of_the_bytes() -> None:
    metrics: list[dict] = []
    runner, model = run(conf(), on_round=lambda r: metrics.extend(r.tracker.metrics(last=1)))
    assert model.score(TEST.x, TEST.y) > 0.95
    assert complete_ledger(runner)  # every batch trained exactly once
    assert len(metrics) == runner.round
    for entry in metrics:  # the tracker's line for every round carries its bytes
        assert 0 < entry["bytes_sent"] <= entry["bytes_dense"] / 50
        assert entry["bytes_dense"] == 4 * model.get_flat_params().size * entry["workers"]
    strategy = runner.strategy
    assert strategy.bytes_sent == sum(m["bytes_sent"] for m in metrics)
    assert strategy.bytes_dense == sum(m["bytes_dense"] for m in metrics)


def test_a_worker_killed_mid_epoch_loses_no_batch() -> None:
    killed: list[str] = []

    def kill_one(runner: ActorNetworkRunner) -> None:
        if runner.round == 5 and not killed:
            worker_id = sorted(runner.workers)[0]
            pid = runner.tracker.workers()[worker_id].info["pid"]
            os.kill(pid, signal.SIGKILL)  # its residual dies with it
            killed.append(worker_id)

    runner, model = run(conf(workers=3), on_round=kill_one)
    survivors = runner.tracker_snapshot["workers"]
    assert killed and killed[0] not in survivors and len(survivors) == 2
    assert complete_ledger(runner)
    assert model.score(TEST.x, TEST.y) > 0.95


def test_checkpoint_and_resume_after_a_crash(tmp_path) -> None:
    from deepgrid.checkpoint import load_run_state

    ckpt = tmp_path / "ckpt"
    c = conf(checkpoint_dir=str(ckpt), checkpoint_every=10)

    def crash(runner: ActorNetworkRunner) -> None:
        if runner.round == 30:
            raise KeyboardInterrupt  # the master dies mid-epoch

    with pytest.raises(KeyboardInterrupt):
        run(c, on_round=crash)
    sent, dense_bytes = (int(b) for b in load_run_state(ckpt)["bytes"])
    assert 0 < sent <= dense_bytes / 50
    runner, model = run(c, resume=ckpt)
    assert runner.resumed_from_round == 30
    assert 0 < runner.samples_trained < 2 * TRAIN.n_batches(16) * 16  # it continued, it did not restart
    assert runner.strategy.bytes_sent > sent  # the counts go on from the checkpoint's
    assert model.score(TEST.x, TEST.y) > 0.95
