"""Training strategies: how the master turns the workers' results into the next parameters.

A new strategy is one module here, its name in ``deepgrid.config.conf.STRATEGIES`` (what the
Conf's ``strategy:`` accepts) and a line in ``make_strategy``.
"""

from __future__ import annotations

from deepgrid.config.conf import STRATEGIES, Conf
from deepgrid.distributed.strategies.allreduce import AllreduceStrategy
from deepgrid.distributed.strategies.asynchronous import AsyncStrategy
from deepgrid.distributed.strategies.average import AverageStrategy
from deepgrid.distributed.strategies.base import GroupBroken, JobResult, Strategy, WorkerPlugin
from deepgrid.distributed.strategies.sharing import SharingStrategy

__all__ = ["STRATEGIES", "AllreduceStrategy", "AsyncStrategy", "AverageStrategy", "GroupBroken", "JobResult",
           "SharingStrategy", "Strategy", "WorkerPlugin", "make_strategy"]


def make_strategy(conf: Conf) -> Strategy:
    """The strategy the Conf names, built from its settings."""
    if conf.strategy == "average":
        return AverageStrategy(conf.block_momentum, conf.reset_momentum)
    if conf.strategy == "async":
        return AsyncStrategy(conf.max_staleness)
    if conf.strategy == "sharing":
        return SharingStrategy(conf.sharing_sparsity, conf.block_momentum)
    if conf.strategy == "allreduce":
        return AllreduceStrategy(conf.allreduce_timeout_s)
    raise AssertionError(f"strategy {conf.strategy!r} passed the Conf's check but has no builder")
