"""Shard-blocked epochs (issue 12): the order, the jobs cut per shard, the home map
(``claim_job(worker_id, shards)`` on every tracker is in tests/unit/test_state_tracker.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.shards import ShardLayout, shard_batch_order, shard_blocks
from deepgrid.distributed.locality import STEAL_AFTER, ShardHomes, epoch_jobs, n_batches
from deepgrid.state import Job, MemoryStateTracker

COUNTS = (50, 35, 64, 20, 41)  # a shard smaller than a batch too (20 < 24)
B, JOB = 8, 3


def layout(counts: tuple[int, ...] = COUNTS) -> ShardLayout:
    return ShardLayout(tuple(f"train-{i:05d}.npz" for i in range(len(counts))), counts, counts,
                       ("d",) * len(counts), "all")


def test_blocks_cover_the_epoch_in_a_seeded_shard_order() -> None:
    blocks = shard_blocks(COUNTS, B, seed=3, epoch=0)
    assert [b[1] for b in blocks] == [0] + [b[2] for b in blocks[:-1]]  # end to end, from 0
    assert {b[0]: b[2] - b[1] for b in blocks} == {s: c // B for s, c in enumerate(COUNTS)}
    assert blocks == shard_blocks(COUNTS, B, seed=3, epoch=0)  # every host computes the same
    orders = {tuple(b[0] for b in shard_blocks(COUNTS, B, seed=3, epoch=e)) for e in range(8)}
    assert len(orders) > 1  # the shards come in another order in other epochs
    assert sorted(b[0] for b in shard_blocks((3, 30), B, 0, 0)) == [1]  # a shard under a batch: none


def test_examples_are_shuffled_within_their_shard_only() -> None:
    order = shard_batch_order(41, B, seed=3, epoch=1, shard=4)
    assert order.shape == (5, B)
    assert len(set(order.flatten().tolist())) == 40 and int(order.max()) < 41
    assert not torch.equal(order, shard_batch_order(41, B, seed=3, epoch=2, shard=4))
    assert torch.equal(order, shard_batch_order(41, B, seed=3, epoch=1, shard=4))


def test_jobs_never_straddle_shards_and_cover_every_batch_once() -> None:
    plan = layout()
    data = ArrayDataset(torch.zeros(sum(COUNTS), 2), torch.zeros(sum(COUNTS), dtype=torch.int64))
    cut = epoch_jobs(plan, data, "finetune", 2, 7, B, JOB, set())
    blocks = {s: (a, b) for s, a, b in shard_blocks(COUNTS, B, 7, 2)}
    covered = Counter()
    for job in cut:
        first, end = blocks[job.shard]
        assert first <= job.start < job.stop <= end and job.n_batches <= JOB
        covered.update(range(job.start, job.stop))
    assert covered == Counter(range(n_batches(plan, data, B)))
    assert [job.index for job in cut] == list(range(len(cut)))
    resumed = epoch_jobs(plan, data, "finetune", 2, 7, B, JOB, {0, 2})
    assert [job.index for job in resumed] == [i for i in range(len(cut)) if i not in (0, 2)]
    assert resumed == [job for job in cut if job.index not in (0, 2)]


def test_without_a_layout_the_jobs_are_todays() -> None:
    data = ArrayDataset(torch.zeros(100, 2), torch.zeros(100, dtype=torch.int64))
    cut = epoch_jobs(None, data, "finetune", 0, 7, 10, 4, {1})
    assert [(j.index, j.start, j.stop, j.shard) for j in cut] == [(0, 0, 4, None), (2, 7, 10, None)]
    assert "shard" not in cut[0].to_dict()  # stored exactly as before shards existed
    assert Job.from_dict(Job("f", 0, 0, 0, 2, shard=3).to_dict()).shard == 3


def test_layout_travels_as_json() -> None:
    import json

    plan = ShardLayout(("a", "b"), (3, 4), (2, 3), ("x", "y"), "z", (("k/a", 10, "e1"), ("k/b", 12, "e2")))
    assert ShardLayout.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan.n_batches(2) == 2


# -- the home map -------------------------------------------------------------------------------
def queue(tracker: object, shards: list[int], per_shard: int = 2) -> None:
    jobs, index = [], 0
    for shard in shards:
        for _ in range(per_shard):
            jobs.append(Job("finetune", 0, index, index, index + 1, shard=shard))
            index += 1
    tracker.enqueue_jobs(jobs)  # type: ignore[attr-defined]


def two_hosts() -> tuple[MemoryStateTracker, ShardHomes]:
    """Workers a1 (host A) and b1 (host B), four homeless shards, two jobs of each queued."""
    tracker = MemoryStateTracker()
    for worker in ("a1", "b1"):
        tracker.add_worker(worker, {})
    queue(tracker, [0, 1, 2, 3])
    return tracker, ShardHomes(range(4))


def test_home_map_keeps_shards_on_their_host_then_steals_and_adopts() -> None:
    tracker, homes = two_hosts()
    live = {"A", "B"}

    def take(worker: str, host: str) -> int | None:
        job = homes.claim(tracker, worker, host, live)
        if job is None:
            return None
        tracker.complete_job(worker, job.id, 1, 0.0)
        return job.shard

    assert take("a1", "A") == 0 and take("b1", "B") == 1  # homeless shards: each host its own
    assert take("a1", "A") == 0 and take("b1", "B") == 1  # then its own first
    assert take("a1", "A") == 2 and take("b1", "B") == 3
    assert take("a1", "A") == 2 and take("b1", "B") == 3
    assert homes.home == {0: "A", 1: "B", 2: "A", 3: "B"} and tracker.pending_jobs() == 0
    queue(tracker, [3, 3, 1, 0], per_shard=1)  # the next epoch: B's shards first in the queue
    assert take("a1", "A") == 0  # A skips B's jobs for its own
    assert homes.claim(tracker, "a1", "A", live, steal=False) is None  # a pulled job is never stolen
    for _ in range(STEAL_AFTER):  # nothing of A's left: B is about to be free, A lets chances pass ...
        assert take("a1", "A") is None
    assert take("a1", "A") == 3  # ... then steals (its host holds shard 3 from now on)
    assert homes.by_host()["A"] == [0, 2, 3] and homes.home[3] == "B"
    assert take("b1", "B") == 3 and take("b1", "B") == 1 and take("b1", "B") is None
    queue(tracker, [1, 3], per_shard=1)
    live = {"A"}  # host B is gone: A adopts its shards
    assert take("a1", "A") == 3  # the shards its host holds before the others
    assert take("a1", "A") == 1 and homes.home == dict.fromkeys(range(4), "A") and "B" not in homes.by_host()


def test_a_host_takes_no_more_than_its_share_of_homeless_shards_and_steals_at_once_when_forced() -> None:
    """A fast host does not make every shard its own in the first epoch: past its fair share it
    leaves the homeless shards to the others (a pulled job too). With nothing else to train it
    steals at once when told to (force: every worker would idle otherwise)."""
    tracker, homes = two_hosts()
    live = {"A", "B"}
    shards = []
    for _ in range(4):  # A alone asks (B is busy): its share is 2 of the 4 shards
        job = homes.claim(tracker, "a1", "A", live, steal=False)
        shards.append(job.shard if job else None)
        if job:
            tracker.complete_job("a1", job.id, 1, 0.0)
    assert shards == [0, 0, 1, 1] and homes.by_host() == {"A": [0, 1]}
    assert homes.claim(tracker, "a1", "A", live) is None  # a chance passed up, not a steal
    job = homes.claim(tracker, "a1", "A", live, force=True)
    assert job is not None and job.shard == 2 and homes.home[2] == "A"


# -- the master's layout and a worker's lazy shards (local files) ------------------------------
def sharded_dir(tmp_path, sizes=(30, 25, 40, 35)) -> dict:
    from tests.source_files import N_CLASSES, N_IN, blobs

    x, y = blobs(sum(sizes), 5)
    bounds = np.cumsum((0, *sizes))
    for index in range(len(sizes)):
        rows = slice(bounds[index], bounds[index + 1])
        np.savez(tmp_path / f"train-{index:05d}.npz", x=x[rows], y=y[rows])
    return dict(model="mlp", dataset="npz", data_dir=str(tmp_path), data_feed="files",
                network=dict(n_in=N_IN, n_out=N_CLASSES))


def test_master_layout_honours_train_limit_and_validation_and_workers_read_alike(tmp_path) -> None:
    from deepgrid.config.conf import Conf
    from deepgrid.data.shards import WorkerShards, master_shards

    conf = Conf(**sharded_dir(tmp_path), train_limit=80, validation_fraction=0.2)
    plan, train, validation = master_shards(conf)
    assert plan.names == ("train-00000.npz", "train-00001.npz", "train-00002.npz")  # the limit ends in the 3rd
    assert plan.keep == (30, 25, 25) and plan.counts == (24, 20, 20)  # 20% of each shard held out
    assert len(train) == 64 and len(validation) == 16 and plan.digest == train.digest()
    worker = WorkerShards(conf, ShardLayout.from_dict(plan.to_dict()))
    assert worker.held() == []
    assert worker.get(2).digest() == plan.digests[2] and worker.held() == [2]  # read at its first use only
    assert torch.equal(torch.cat([worker.get(s).x for s in range(3)]), train.x)
    assert master_shards(conf.replace(data_feed="object_store")) is None  # today's whole-split path


def test_a_shard_that_differs_from_the_masters_is_one_line(tmp_path) -> None:
    from deepgrid.config.conf import Conf
    from deepgrid.data.shards import WorkerShards, master_shards
    from deepgrid.errors import DataError

    conf = Conf(**sharded_dir(tmp_path))
    plan, _, _ = master_shards(conf)
    with np.load(tmp_path / "train-00001.npz") as arrays:
        np.savez(tmp_path / "train-00001.npz", x=arrays["x"] + 1, y=arrays["y"])
    with pytest.raises(DataError, match="train-00001.npz on host .* other examples than the master's"):
        WorkerShards(conf, plan).get(1)
