"""The `allreduce` strategy (a torch.distributed process group among the worker actors) on real Ray actors."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepgrid import Conf, ConfigError
from deepgrid.distributed.runner import ActorNetworkRunner
from deepgrid.distributed.strategies import make_strategy
from deepgrid.distributed.strategies.allreduce import AllreduceStrategy
from deepgrid.models.mlp import MLP
from deepgrid.train.loop import fit, jobs
from tests.integration.local_engine import ray_local  # noqa: F401 (an autouse fixture)
from tests.integration.synthetic import TEST, TRAIN, mlp_conf, mlp_network

BATCH = 16
N_BATCHES = TRAIN.n_batches(BATCH)


def conf(**changes: object) -> Conf:
    return mlp_conf(**{"strategy": "allreduce", "batch_size": BATCH, "averaging_frequency": 5, "pull_jobs": False,
                       "network": mlp_network(momentum=0.9), **changes})


def run(c: Conf, on_round=None, model_factory=None) -> tuple[ActorNetworkRunner, MLP]:
    runner = ActorNetworkRunner("master", TRAIN, model_factory=model_factory)
    runner.on_round = on_round
    try:
        runner.setup(c)
        model = runner.train()
    finally:
        runner.shutdown()
    return runner, model


def ledger_is_complete(runner: ActorNetworkRunner, epochs: int) -> bool:
    return all(runner.ledger[("finetune", e)] == {i: 1 for i in range(N_BATCHES)} for e in range(epochs))


def replica_params(runner: ActorNetworkRunner) -> dict[str, np.ndarray]:
    """Each worker actor's own current parameters, asked of the actor itself."""
    import ray  # not at the top: Ray reads its token settings when first imported, after engine's set-up

    refs = {worker_id: handle.actor.__ray_call__.remote(lambda worker: worker.model.get_flat_params())
            for worker_id, handle in runner.workers.items()}
    return {worker_id: ray.get(ref, timeout=30) for worker_id, ref in refs.items()}


def test_the_conf_names_the_strategy_and_checks_its_timeout() -> None:
    assert isinstance(make_strategy(conf(allreduce_timeout_s=2.5)), AllreduceStrategy)
    assert make_strategy(conf(allreduce_timeout_s=2.5)).timeout_s == 2.5
    with pytest.raises(ConfigError, match="allreduce_timeout_s"):
        conf(allreduce_timeout_s=0)


def test_one_worker_computes_what_the_reference_loop_computes() -> None:
    c = conf(workers=1)
    _, model = run(c)
    reference = MLP(c.network)
    fit(reference, TRAIN, epochs=c.epochs, batch_size=c.batch_size, job_size=c.averaging_frequency)
    np.testing.assert_array_equal(model.get_flat_params(), reference.get_flat_params())


def test_two_workers_converge_with_identical_replicas_and_a_complete_ledger() -> None:
    c = conf()
    sizes = [len(job) for job in jobs(torch.arange(N_BATCHES), c.averaging_frequency)]
    # The cut has a round whose two jobs differ by a batch (one worker joins a step with no batch)
    # and, each epoch, whole rounds of equal jobs.
    assert any(len(set(sizes[i : i + 2])) == 2 for i in range(0, len(sizes) - 1, 2))
    checked: list[int] = []

    def compare(runner: ActorNetworkRunner) -> None:
        replicas = replica_params(runner)
        assert len(replicas) == 2
        for worker_id, params in replicas.items():  # bit for bit, and what the master holds
            np.testing.assert_array_equal(params, runner.params, err_msg=f"{worker_id}, round {runner.round}")
        checked.append(runner.round)

    runner, model = run(c, on_round=compare)
    assert len(checked) == runner.round == 2 * -(-len(sizes) // 2)
    assert model.score(TEST.x, TEST.y) > 0.95
    assert ledger_is_complete(runner, c.epochs)
    strategy = runner.strategy
    assert isinstance(strategy, AllreduceStrategy)
    # Formed once, then once per epoch around its last round of one job (which needs no group).
    assert strategy.forms <= 1 + 2 * c.epochs


class KillableMLP(MLP):
    """An MLP whose process signals itself inside a job once a marker file names its pid ("PID SIGNAL")."""

    def __init__(self, network: Any, marker: str) -> None:
        super().__init__(network)
        self._marker, self._steps_to_live, self._signal = marker, -1, 0

    @staticmethod
    def factory(c: Conf, marker: Path):
        network, where = c.network, str(marker)
        return lambda: KillableMLP(network, where)

    def batch_loss(self, phase: str, x: torch.Tensor, y: torch.Tensor):
        if self._steps_to_live < 0 and os.path.exists(self._marker):
            try:
                pid, sig = Path(self._marker).read_text().split()
            except (FileNotFoundError, ValueError):  # the marked worker removed it meanwhile, or is writing it
                pid, sig = "0", "0"
            if int(pid) == os.getpid():
                # At the third step of this job: the other workers are inside a collective then.
                self._steps_to_live, self._signal = 2, int(sig)
        if self._steps_to_live == 0:
            os.unlink(self._marker)
            os.kill(os.getpid(), self._signal)  # SIGSTOP: the process hangs here until it is killed
        if self._steps_to_live >= 0:
            self._steps_to_live -= 1
        return super().batch_loss(phase, x, y)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_worker_lost_mid_round_loses_no_batch_and_the_others_finish(tmp_path: Path, sig: int) -> None:
    """Killed: its connections close and the others' collectives fail at once. Hung (SIGSTOP): they
    fail after allreduce_timeout_s, before the round's deadline, so no healthy worker is blamed."""
    c = conf(workers=3, averaging_frequency=6)
    marker = tmp_path / "signal"
    hit: list[str] = []

    def hit_one(runner: ActorNetworkRunner) -> None:
        if runner.round == 5 and not hit:
            worker_id = sorted(runner.workers)[1]
            marker.write_text(f"{runner.tracker.workers()[worker_id].info['pid']} {int(sig)}")
            hit.append(worker_id)

    said: list[str] = []
    runner = ActorNetworkRunner("master", TRAIN, model_factory=KillableMLP.factory(c, marker), progress=said.append)
    runner.on_round = hit_one
    try:
        runner.setup(c)
        model = runner.train()
    finally:
        runner.shutdown()
    assert hit and not marker.exists()  # it was hit inside a job
    healthy = [w for w in runner.tracker_snapshot["workers"] if w != hit[0]]
    assert len(healthy) == 2
    if sig == signal.SIGKILL:
        assert hit[0] not in runner.tracker_snapshot["workers"]  # noticed and dropped
    for worker_id in healthy:  # their jobs went back to the queue, and nothing counts against them
        assert any(f"worker {worker_id} lost a peer" in line for line in said), "\n".join(said)
        assert not any(worker_id in line and "round deadline" in line for line in said), "\n".join(said)
    assert ledger_is_complete(runner, c.epochs)  # every batch, exactly once
    assert model.score(TEST.x, TEST.y) > 0.95
