"""Shard locality for the master (issue 12): jobs cut per shard, and which host trains which shard.

With a sharded training split read by the workers themselves (:mod:`deepgrid.data.shards`), each
epoch's jobs are cut within shard blocks (``Job.shard``), and the dispatcher hands them out
Hadoop-style through a :class:`ShardHomes` map. A worker first takes jobs of its host's home
shards, then a shard no host holds yet while its host has fewer than its fair share of homes (the
shard becomes its host's), and only then, with delay scheduling, another host's job: a host lets
``STEAL_AFTER`` chances pass without a job of its own before it steals one (its host downloads that
shard too, and steals shards it already holds first). A shard's own host is usually about to be
free, and a few batches gained are not worth a shard moved; under a lasting imbalance (a slow
host) stealing still evens the work out. A job pulled beside a round (a worker done while another
is still busy) is never stolen, and a round in which no worker would train otherwise steals at
once. A host whose workers are all gone loses its shards, and the others adopt them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from deepgrid.config.conf import Conf
from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.iterators import as_dataset
from deepgrid.data.mnist import load_splits, training_split
from deepgrid.data.shards import ShardLayout, master_shards, shard_blocks
from deepgrid.state.base import Job, StateTracker
from deepgrid.train.loop import jobs


def training_data(conf: Conf, iterator: Any) -> tuple[ShardLayout | None, ArrayDataset, ArrayDataset,
                                                     ArrayDataset | None]:
    """The master's (shard layout or None, data, training examples, validation examples or None):
    a sharded split the workers read themselves, else the fed or loaded data split as always."""
    sharded = master_shards(conf) if iterator is None else None
    if sharded is not None:
        layout, train, validation = sharded
        return layout, train, train, validation
    data = as_dataset(iterator, conf.network.n_in, conf.network.n_out) if iterator is not None else load_splits(conf)[0]
    return (None, data, *training_split(data, conf))


def epoch_jobs(layout: ShardLayout | None, data: ArrayDataset, phase: str, epoch: int, seed: int,
               batch_size: int, job_size: int, skip: set[int]) -> list[Job]:
    """The epoch's jobs, those in ``skip`` (trained before a resume) left out. Without a layout:
    even slices of the epoch's batch positions (the order itself the workers know). With one:
    the same even cut within each shard's block, so that no job straddles two shards."""
    if layout is None:
        order = np.arange(data.n_batches(batch_size))
        return [Job(phase, epoch, i, int(chunk[0]), int(chunk[-1]) + 1)
                for i, chunk in enumerate(jobs(order, job_size)) if i not in skip]
    cut: list[Job] = []
    index = 0
    for shard, start, stop in shard_blocks(layout.counts, batch_size, seed, epoch):
        for chunk in jobs(np.arange(start, stop), job_size):
            if index not in skip:
                cut.append(Job(phase, epoch, index, int(chunk[0]), int(chunk[-1]) + 1, shard=shard))
            index += 1
    return cut


def n_batches(layout: ShardLayout | None, data: ArrayDataset, batch_size: int) -> int:
    """Mini-batches per epoch (the ledger's length)."""
    return layout.n_batches(batch_size) if layout is not None else data.n_batches(batch_size)


def epoch_size(layout: ShardLayout | None, data: ArrayDataset, batch_size: int, job_size: int) -> tuple[int, int]:
    """(mini-batches, jobs) of an epoch as ``epoch_jobs`` cuts it: with shards, each shard's block
    is cut apart, so an epoch may have a few more jobs than its batches over ``job_size``."""
    if layout is None:
        batches = data.n_batches(batch_size)
        return batches, -(-batches // job_size)
    blocks = [count // batch_size for count in layout.counts]
    return sum(blocks), sum(-(-n // job_size) for n in blocks)


STEAL_AFTER = 2  # chances a host passes up for want of a job of its own before it steals


class ShardHomes:
    """shard -> its home host (the first to take it), every shard each host holds (downloaded), and
    how many chances in a row each host has passed up for want of a job of its own."""

    def __init__(self, shards: Iterable[int]) -> None:
        self.shards = sorted(shards)
        self.home: dict[int, str] = {}
        self.held: dict[str, set[int]] = {}
        self.passed: dict[str, int] = {}

    def claim(self, tracker: StateTracker, worker_id: str, host: str, live_hosts: Iterable[str],
              steal: bool = True, force: bool = False) -> Job | None:
        """A job for ``worker_id`` on ``host``: its host's home shards first, then a homeless shard
        (now its host's) while the host has fewer homes than its fair share, then (``steal``, once
        the host has passed up ``STEAL_AFTER`` chances, or at once with ``force``) any other: the
        shards its host holds already first. ``live_hosts``: the hosts that still have workers."""
        live = set(live_hosts) | {host}
        self.forget_others(live)
        held = self.held.get(host, set())
        own = sorted(shard for shard, home in self.home.items() if home == host)
        job = self._first(tracker, worker_id, own)
        homeless = [s for s in self.shards if s not in self.home]
        if job is None and homeless and len(own) < -(-len(self.shards) // len(live)):
            job = self._first(tracker, worker_id, [s for s in homeless if s in held], homeless)
        if job is not None:
            self.passed.pop(host, None)
            return self._took(job, host)
        if not steal:
            return None
        if not force and self.passed.get(host, 0) < STEAL_AFTER:
            if tracker.pending_jobs():  # a chance passed up: another host's job was there to take
                self.passed[host] = self.passed.get(host, 0) + 1
            return None
        return self._took(self._first(tracker, worker_id, sorted(held - set(own))) or tracker.claim_job(worker_id),
                          host)

    @staticmethod
    def _first(tracker: StateTracker, worker_id: str, *choices: list[int]) -> Job | None:
        """A job of the first of ``choices`` (lists of shards) that has one pending."""
        for shards in choices:
            if shards and (job := tracker.claim_job(worker_id, shards)) is not None:
                return job
        return None

    def _took(self, job: Job | None, host: str) -> Job | None:
        if job is not None and job.shard is not None:
            self.home.setdefault(job.shard, host)
            self.held.setdefault(host, set()).add(job.shard)
        return job

    def forget_others(self, live_hosts: Iterable[str]) -> None:
        """Hosts not in ``live_hosts`` (dropped) hold nothing any more: their shards are homeless."""
        live = set(live_hosts)
        for host in [h for h in self.held if h not in live]:
            del self.held[host]
            self.passed.pop(host, None)
        self.home = {shard: host for shard, host in self.home.items() if host in live}

    def by_host(self) -> dict[str, list[int]]:
        return {host: sorted(shards) for host, shards in self.held.items()}


def worker_host(hosts: Mapping[str, str], worker_id: str) -> str:
    """A worker's machine (its address as the group recorded it), or the worker itself if unknown."""
    return hosts.get(worker_id) or worker_id


def attach_shards(layout: ShardLayout | None, group: Any, dispatcher: Any) -> None:
    """Give the workers the layout (they read their shards themselves, lazily) and the dispatcher
    its home map. Called before the mailbox opens: hosts that join get the same worker spec."""
    if layout is None:
        return
    conf_dict, _ = group.spec.data_args
    group.spec = dataclasses.replace(group.spec, data_args=(conf_dict, layout.to_dict()))
    dispatcher.homes = ShardHomes(range(len(layout.counts)))
