"""Nodes joining and leaving mid-training: several Ray nodes on one machine."""

from __future__ import annotations

import os

import pytest
import ray
from ray.cluster_utils import Cluster

from deepgrid import Conf
from deepgrid.distributed import engine
from deepgrid.distributed.runner import ActorNetworkRunner
from tests.integration.synthetic import N_CLASSES, N_IN, TEST, TRAIN


@pytest.fixture()
def cluster(tmp_path):
    os.environ["DEEPGRID_HOME"] = str(tmp_path)
    os.environ[engine.LOOPBACK_ENV] = "0"  # every node on 127.0.0.1
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    ray.init(address=c.address, namespace=engine.NAMESPACE)
    yield c
    ray.shutdown()
    c.shutdown()


def conf() -> Conf:
    return Conf(model="mlp", workers=2, batch_size=16, averaging_frequency=2, epochs=3,
                engine_address=None,
                network=dict(n_in=N_IN, n_out=N_CLASSES, hidden_layer_sizes=[32], activation="relu"))


def test_a_node_added_mid_training_gets_jobs_and_a_removed_one_is_dropped(cluster: Cluster) -> None:
    added: list = []
    removed: list = []
    new_workers: list[str] = []

    def grow_then_shrink(runner: ActorNetworkRunner) -> None:
        if runner.round == 5:
            before = set(runner.workers)
            added.append(cluster.add_node(num_cpus=1))
            runner.group.check_new_nodes()  # what the next round does anyway
            new_workers.extend(set(runner.workers) - before)
        if runner.round == 60 and added and not removed:
            cluster.remove_node(added[0], allow_graceful=False)
            removed.append(True)

    runner = ActorNetworkRunner("master", TRAIN)
    runner.node_check_every_s = 0.0
    runner.on_round = grow_then_shrink
    try:
        runner.setup(conf())
        model = runner.train()
    finally:
        runner.shutdown()
    assert len(new_workers) == 1
    metrics = runner.tracker_snapshot
    assert removed
    assert new_workers[0] not in metrics["workers"]  # dropped when its node went away
    jobs_by_new = [m for m in runner.history if m["worker_id"] == new_workers[0]]
    assert jobs_by_new, "the new node's worker was given jobs"
    for epoch in range(3):
        assert runner.ledger[("finetune", epoch)] == {i: 1 for i in range(TRAIN.n_batches(16))}
    assert model.score(TEST.x, TEST.y) > 0.95
