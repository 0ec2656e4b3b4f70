"""``allreduce``: data-parallel SGD (PyTorch DDP's scheme) inside deepgrid's rounds.

The workers of a round form a torch.distributed process group (gloo on CPU, NCCL with
``device: cuda``), as Ray Train's Torch backend does: rank 0's actor opens the group's TCP store on
its node's address and a free port, then every actor joins it at once (``init_process_group``),
after leaving the old group. It is formed again when the round's workers change. Each worker
trains its own job (its own mini-batches); after every backward pass the gradient hook sums the
gradients times the batch's samples, and the samples, over all ranks (one flat bucket, one
all-reduce) and divides: every replica steps with the same sample-weighted mean gradient, so the
parameters stay identical across workers. Only whole parameters go back to the master, once per
round; between, each worker sends about 2(N-1)/N x 4 x n_params bytes per step (ring all-reduce).

Jobs of a round may differ by a mini-batch: the ranks first agree on the most steps any of them
takes, and a worker out of batches joins the remaining steps with a zero gradient and no samples,
stepping its optimizer with the mean like the others. A round with one worker forms no group and
calls no collective: one worker computes exactly what ``train.loop.fit`` computes.

A worker that dies mid-round fails its own call (the dispatcher drops it and re-queues its job);
the others' collectives fail (a closed connection, or ``allreduce_timeout_s`` for a hung peer) and
raise ``GroupBroken``: their jobs are re-queued, their optimizers go back to where the job began,
and the group is formed again among the survivors before the next round.
"""

from __future__ import annotations

import copy
import logging
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepgrid.distributed.strategies.average import weighted_mean
from deepgrid.distributed.strategies.base import GroupBroken, JobResult, Strategy, WorkerPlugin
from deepgrid.errors import ClusterError

if TYPE_CHECKING:
    from deepgrid.distributed.worker import Worker
    from deepgrid.distributed.workers import WorkerGroup

log = logging.getLogger("deepgrid")

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
MAX_FAILED_FORMS = 3  # forming the group failed this many times in a row: the run stops with one line
PING_TIMEOUT_S = 5.0  # a worker that does not answer this fast is left out of the group it would hold up


class AllreduceStrategy(Strategy):
    """The master's half: forms the process group before a round, keeps the round's parameters."""

    name = "allreduce"
    # Every rank takes every step of the round: a job pulled by a worker that is done (``pull_jobs``)
    # would wait for peers that have nothing left to train, time out and go back to the queue.
    lockstep = True

    def __init__(self, timeout_s: float = 4.0) -> None:
        self.timeout_s = timeout_s
        self.members: frozenset[str] | None = None  # the workers of the process group now formed
        self.last_trained: set[str] = set()  # workers whose jobs came back last round
        self.forms = 0  # how many times a group was formed (tests and reports read it)
        self._failed_forms = 0

    def worker_plugin(self) -> WorkerPlugin:
        return AllreducePlugin(self.timeout_s)

    def before_round(self, group: WorkerGroup) -> None:
        ranks = self.round_workers(group)
        if not ranks or (frozenset(ranks) == self.members and not group.broken):
            return
        self.form(group, ranks)
        group.broken = False

    def round_workers(self, group: WorkerGroup) -> list[str]:
        """The workers that will train this round, rank 0 first.

        The dispatcher hands one job to each free worker (not busy with an overrun call), in the
        group's order, until the queue is empty: the first min(free, pending) of them. Rank 0 is
        the one whose optimizer state the others take when the group forms: a worker that trained
        last round (after a short round, one that idled then is behind).
        """
        free = [worker_id for worker_id, handle in group.workers.items() if handle.overrun is None]
        taking = free[: group.tracker.pending_jobs()]
        return sorted(taking, key=lambda worker_id: worker_id not in self.last_trained)

    def form(self, group: WorkerGroup, ranks: list[str]) -> None:
        """(Re)form the process group among ``ranks``: each actor leaves its old group and joins."""
        import ray

        # A dead or hung worker would hold the others' rendezvous for the whole timeout: leave it
        # out. It still gets its job (the dispatcher does not know), fails, and is dropped.
        pings = {worker_id: group.workers[worker_id].actor.ping.remote() for worker_id in ranks}
        ray.wait(list(pings.values()), num_returns=len(pings), timeout=PING_TIMEOUT_S)
        ranks = [worker_id for worker_id in ranks if answered(pings[worker_id])]
        self.members = None
        if not ranks:
            return
        actors = [group.workers[worker_id].actor for worker_id in ranks]
        try:
            address = None
            if len(ranks) > 1:
                address = ray.get(actors[0].plugin_call.remote("rendezvous", len(ranks)), timeout=self.timeout_s)
            ray.get([actor.plugin_call.remote("join_group", address, rank, len(ranks))
                     for rank, actor in enumerate(actors)], timeout=self.timeout_s + 10)
        except ray.exceptions.RayError as e:
            # The round's jobs fail at once (GroupBroken, or the dead worker's own error) and the
            # next round forms the group again, without the workers the dispatcher dropped.
            self._failed_forms += 1
            reason = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
            if self._failed_forms >= MAX_FAILED_FORMS:
                raise ClusterError(
                    f"The workers could not form an allreduce process group {self._failed_forms} times in a row "
                    f"(last: {reason}); check that they reach each other on TCP ports, or use strategy: average."
                ) from None
            log.warning(f"deepgrid: the allreduce process group did not form ({reason}); trying again next round")
            return
        self.members, self._failed_forms = frozenset(ranks), 0
        self.forms += 1
        log.info(f"allreduce: process group of {len(ranks)} worker(s) formed: {', '.join(ranks)}")

    def combine(self, params: np.ndarray, results: list[JobResult]) -> np.ndarray:
        # The replicas took the same steps, so their parameters are the same; their sample-weighted
        # mean is then exactly those parameters (w1*v + w2*v is exact in float64), and if a
        # replica ever differed (it could not join a step) the mean still makes one model of them.
        self.last_trained = {result.worker_id for result in results}
        ordered = sorted(results, key=lambda result: result.job.index)  # float sums depend on order
        return weighted_mean([r.update for r in ordered], [r.n_samples for r in ordered])


def answered(ref: Any) -> bool:
    import ray

    if not ray.wait([ref], timeout=0)[0]:
        return False
    try:
        ray.get(ref)
    except ray.exceptions.RayError:
        return False
    return True


class AllreducePlugin(WorkerPlugin):
    """The worker's half: joins the process group and averages gradients after each backward.

    Pickled to each actor with no group: ``rank``/``world`` are set when the master forms one.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.rank, self.world = 0, 1
        self.formed = False  # a process group of ``world`` ranks is initialised in this process
        self._store: Any = None  # rank 0's store for the group being formed

    def __getstate__(self) -> dict[str, Any]:
        return {"timeout_s": self.timeout_s}  # a copy never carries another process's group

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.timeout_s = state["timeout_s"]
        self.rank, self.world, self.formed, self._store = 0, 1, False, None

    # -- forming the group (run in the actor through Worker.plugin_call) --------------------
    def rendezvous(self, worker: Worker, world: int) -> tuple[str, int]:
        """Rank 0: leave the old group and open the new one's store on this node's address and a
        free port (as Ray Train finds them). Open before the others join: a rank that finds no
        store yet backs off, and forming took 0.3-0.7 s instead of ~20 ms (3 workers, measured)."""
        import ray
        import torch.distributed as dist

        self.leave_group()
        address = ray.util.get_node_ip_address()
        # Port 0: the store binds a free port itself, so no other process can take it in between.
        self._store = dist.TCPStore(address, 0, world, is_master=True, wait_for_workers=False,
                                    timeout=timedelta(seconds=self.timeout_s))
        return address, self._store.port

    def join_group(self, worker: Worker, address: tuple[str, int] | None, rank: int, world: int) -> None:
        """Leave the old group, join the one at ``address`` as ``rank`` of ``world``, and take rank
        0's optimizer state."""
        import torch.distributed as dist

        self.leave_group()
        self.rank, self.world = rank, world
        if world == 1:
            return
        assert address is not None
        backend = BACKENDS[worker.device]
        if backend == "nccl":
            # Without it a collective that waits on a lost peer never returns to Python.
            os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
            torch.cuda.set_device(worker.model.device)
        timeout = timedelta(seconds=self.timeout_s)
        if rank == 0:
            store, self._store = self._store, None
        else:
            store = dist.TCPStore(*address, world, is_master=False, timeout=timeout)
        if store is None:
            raise GroupBroken(f"rank 0 ({worker.worker_id}) has no store open for the group")
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        self.formed = True
        self._take_rank0_optimizers(worker)

    def leave_group(self, worker: Worker | None = None) -> None:
        import torch.distributed as dist

        self.formed = False
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as e:  # its peers may be gone: nothing left to tell them
                log.debug(f"allreduce: destroying the old process group failed: {e}")

    def _take_rank0_optimizers(self, worker: Worker) -> None:
        """Every replica continues with rank 0's optimizer state (momentum, Adam's moments): a worker
        that joined later, or idled through a short round, would otherwise step differently."""
        import torch.distributed as dist

        model = worker.model
        phases = [phase.name for phase in model.phases()]
        box: list[Any] = [{phase: on_cpu(model.optimizer(phase).state_dict()) for phase in phases}
                          if self.rank == 0 else None]
        self.collective(dist.broadcast_object_list, box, src=0)
        if self.rank != 0:
            for phase, state in box[0].items():
                model.optimizer(phase).load_state_dict(state)

    def collective(self, operation: Any, *args: Any, **kwargs: Any) -> None:
        """Run a collective; a lost peer (error or timeout) leaves the group and raises GroupBroken."""
        try:
            operation(*args, **kwargs)
        except RuntimeError as e:  # torch.distributed's errors (DistBackendError, ...) are RuntimeErrors
            self.leave_group()
            lines = [line for line in str(e).splitlines() if line.strip()]
            raise GroupBroken(f"allreduce rank {self.rank} of {self.world} lost a peer: "
                              f"{(lines[-1] if lines else type(e).__name__)[:300]}") from None

    # -- training ---------------------------------------------------------------------------
    def gradient_hook(self, worker: Worker, phase: str) -> GradientSync | None:
        if self.world == 1:
            return None  # no collective at all: exactly the reference loop
        if not self.formed:
            raise GroupBroken(f"worker {worker.worker_id} is in no process group (it broke or did not form)")
        assert worker.job is not None
        return GradientSync(self, worker, phase, worker.job.n_batches)


class GradientSync:
    """One job's gradient averaging: called after each backward, ``finish`` after the last step."""

    def __init__(self, plugin: AllreducePlugin, worker: Worker, phase: str, n_batches: int) -> None:
        import torch.distributed as dist

        self.plugin = plugin
        self.parameters = worker.model.phase_parameters(phase)
        self.optimizer = worker.model.optimizer(phase)
        # Restored if the group breaks mid-job: the job is trained again later, from the round's
        # parameters, and the optimizer must not carry the steps of the half that was lost.
        self.saved = copy.deepcopy(self.optimizer.state_dict())
        device = self.parameters[0].device
        self.bucket = torch.empty(sum(p.numel() for p in self.parameters) + 1, device=device)
        steps = torch.tensor([float(n_batches)], device=device)
        self._reduce(steps, dist.ReduceOp.MAX)  # the most steps any rank takes in this round
        self.steps_left = int(steps.item())

    def __call__(self, n_samples: int) -> None:
        """After a backward pass on ``n_samples``: replace the gradients by the ranks' mean."""
        grads, offset = self.bucket[:-1], 0
        for p in self.parameters:
            n = p.numel()
            if p.grad is None:
                grads[offset : offset + n].zero_()
            else:
                grads[offset : offset + n].copy_(p.grad.reshape(-1))
            offset += n
        grads.mul_(n_samples)
        self.bucket[-1] = n_samples
        self._average()

    def finish(self) -> None:
        """Out of batches: join the steps the other ranks still take, contributing nothing."""
        while self.steps_left > 0:
            self.bucket.zero_()
            if self._average():
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def _average(self) -> bool:
        """Sum the bucket over the ranks and set each gradient to the sample-weighted mean;
        False when no rank had samples in this step (then nobody steps)."""
        import torch.distributed as dist

        self.steps_left -= 1
        self._reduce(self.bucket, dist.ReduceOp.SUM)
        total = self.bucket[-1]
        if float(total) == 0:
            return False
        grads, offset = self.bucket[:-1].div_(total), 0
        for p in self.parameters:
            n = p.numel()
            if p.grad is None:
                p.grad = grads[offset : offset + n].view_as(p).clone()
            else:
                p.grad.copy_(grads[offset : offset + n].view_as(p))
            offset += n
        return True

    def _reduce(self, tensor: torch.Tensor, op: Any) -> None:
        import torch.distributed as dist

        try:
            self.plugin.collective(dist.all_reduce, tensor, op=op)
        except GroupBroken:
            self.optimizer.load_state_dict(self.saved)
            raise


def on_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer's state_dict with its tensors on the CPU (to broadcast; loading moves them back)."""
    return {"state": {key: {name: value.cpu() if torch.is_tensor(value) else value for name, value in entry.items()}
                      for key, entry in state["state"].items()},
            "param_groups": state["param_groups"]}
