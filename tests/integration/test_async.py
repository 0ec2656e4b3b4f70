"""The `async` strategy (a parameter server, no round barrier) on real Ray actors."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from deepgrid import Conf
from deepgrid.distributed.runner import ActorNetworkRunner
from deepgrid.distributed.strategies.asynchronous import AsyncStrategy, DeltaPlugin
from deepgrid.distributed.strategies.base import JobResult
from deepgrid.models.mlp import MLP
from deepgrid.state.base import Job
from tests.integration.local_engine import ray_local  # noqa: F401 (an autouse fixture)
from tests.integration.synthetic import TEST, TRAIN, mlp_conf


def conf(**changes: object) -> Conf:
    return mlp_conf(**{"strategy": "async", **changes})


def run(c: Conf, on_round=None, resume=None, model_factory=None) -> tuple[ActorNetworkRunner, MLP]:
    runner = ActorNetworkRunner("master", TRAIN, model_factory=model_factory)
    runner.on_round = on_round
    try:
        runner.setup(c, resume=resume)
        model = runner.train()
    finally:
        runner.shutdown()
    return runner, model


def ledger_is_complete(runner: ActorNetworkRunner, epochs: int) -> bool:
    n_batches = TRAIN.n_batches(16)
    return all(runner.ledger[("finetune", e)] == {i: 1 for i in range(n_batches)} for e in range(epochs))


def test_an_update_is_added_and_a_stale_one_counts_less() -> None:
    strategy = AsyncStrategy(max_staleness=1)
    job = Job("finetune", 0, 0, 0, 4)
    params = np.zeros(3, dtype=np.float32)
    delta = DeltaPlugin().encode(np.ones(3, dtype=np.float32), np.full(3, 3.0, dtype=np.float32))
    params = strategy.apply(params, JobResult("w1", job, delta, 16, 0.5, 0.1, version=0))  # fresh: all of it
    np.testing.assert_allclose(params, [2, 2, 2])
    strategy.version = 5
    strategy.n_workers = 2  # from now on each delta counts 1/2
    params = strategy.apply(params, JobResult("w2", job, delta, 16, 0.5, 0.1, version=2))  # staleness 3: 1/2 x 1/(1+2)
    np.testing.assert_allclose(params, [2 + 1 / 3] * 3, rtol=1e-6)
    assert strategy.staleness == [0, 3] and strategy.down_weighted == 1 and strategy.version == 6
    restored = AsyncStrategy(max_staleness=1)
    restored.load_state_dict(strategy.state_dict())
    assert restored.version == 6


def test_two_workers_converge_and_the_ledger_is_complete() -> None:
    runner, model = run(conf())
    assert model.score(TEST.x, TEST.y) > 0.95
    assert ledger_is_complete(runner, 2)
    assert max(runner.strategy.staleness) >= 1  # the workers really overlapped


class SlowMLP(MLP):
    def train_step(self, phase, batches):  # a worker on a slow machine: 3x a normal job
        time.sleep(0.03 * len(batches))
        return super().train_step(phase, batches)


def test_a_slow_worker_holds_nobody_up() -> None:
    import ray

    from deepgrid.distributed.worker import remote_worker_class

    c = conf(workers=1, epochs=3)
    runner = ActorNetworkRunner("master", TRAIN)
    try:
        runner.setup(c)
        fast_id = next(iter(runner.workers))
        slow = remote_worker_class().options(num_cpus=1).remote(
            "slow", lambda: SlowMLP(c.network), *runner.group.spec.data_args, batch_size=c.batch_size,
            plugin=runner.group.spec.plugin)
        runner.add_worker("slow", slow, ray.get(slow.info.remote()))
        model = runner.train()
    finally:
        runner.shutdown()
    done = {worker: sum(1 for h in runner.history if h["worker_id"] == worker) for worker in (fast_id, "slow")}
    assert done["slow"] >= 1 and done[fast_id] >= 3 * done["slow"]  # the fast one never waited
    assert ledger_is_complete(runner, 3)
    assert model.score(TEST.x, TEST.y) > 0.95


def test_a_worker_killed_mid_epoch_loses_no_batch() -> None:
    killed: list[str] = []

    def kill_one(runner: ActorNetworkRunner) -> None:
        if runner.round == 5 and not killed:
            worker_id = sorted(runner.workers)[0]
            os.kill(runner.tracker.workers()[worker_id].info["pid"], signal.SIGKILL)
            killed.append(worker_id)

    runner, model = run(conf(workers=3), on_round=kill_one)
    assert killed and killed[0] not in runner.tracker_snapshot["workers"]
    assert len(runner.tracker_snapshot["workers"]) == 2
    assert ledger_is_complete(runner, 2)
    assert model.score(TEST.x, TEST.y) > 0.95


def test_checkpoint_and_resume_keep_the_version(tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    c = conf(checkpoint_dir=str(ckpt), checkpoint_every=5)

    def crash(runner: ActorNetworkRunner) -> None:
        if runner.round == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(c, on_round=crash)
    from deepgrid.checkpoint import load_run_state

    version = int(load_run_state(ckpt)["version"][0])
    assert version > 0
    resumed = ActorNetworkRunner("master", TRAIN)
    try:
        resumed.setup(c, resume=ckpt)
        assert resumed.strategy.version == version
    finally:
        resumed.shutdown()
    runner, model = run(c, resume=ckpt)
    assert 0 < runner.samples_trained < 2 * TRAIN.n_batches(16) * 16  # it went on, it did not restart
    assert model.score(TEST.x, TEST.y) > 0.95
