"""The worker actor: it executes what it is sent (as Ray Train v1's workers).

A worker holds a model and the training data. For each job it takes the
current parameters, trains the job's mini-batches through the model's
``train_step`` (the reference loop's inner loop) with its own optimizer
state, and returns the new parameters, the samples it trained and their loss.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deepgrid.data.dataset import ArrayDataset, Batches
from deepgrid.data.mapped import MappedDataset
from deepgrid.data.shards import ShardLayout, WorkerShards, shard_batch_order, shard_blocks
from deepgrid.distributed.strategies.base import WorkerPlugin
from deepgrid.models.base import Model
from deepgrid.state.base import Job
from deepgrid.train.denormals import flush_denormals
from deepgrid.train.loop import phase_seed, seed_job_noise

ModelFactory = Callable[[], Model]


def check_started(infos: list[dict[str, Any]]) -> None:
    """Raise, as one line, why a worker could not start (``Worker.info``'s ``error``): a user's
    mistake keeps its class (ConfigError, DataError), anything else is a ClusterError."""
    from deepgrid.errors import ClusterError, ConfigError, DataError

    for info in infos:
        if "error" in info:
            kind, line = info["error"]
            cls = {"ConfigError": ConfigError, "DataError": DataError}.get(kind, ClusterError)
            text = line if cls is not ClusterError else f"{kind}: {line}"
            raise cls(f"a worker on host {info.get('host', '?')} ({info.get('ip', '?')}) could not start: {text}")


def build_named_model(name: str, network: dict[str, Any]) -> Model:
    """A registry model from JSON-friendly parts (what travels to a worker)."""
    from deepgrid.config.network import NeuralNetConfiguration
    from deepgrid.models.registry import get

    return get(name)(NeuralNetConfiguration.from_dict(network))


def load_worker_data(conf: dict[str, Any]) -> ArrayDataset:
    """The "files" data feed: a worker reads the training files from its own disk."""
    from deepgrid.config.conf import Conf
    from deepgrid.data.mnist import load_splits, training_split

    run = Conf.from_dict(conf)
    train, _ = load_splits(run)
    return training_split(train, run)[0]  # the master's split: never train on validation data


class Worker:
    """Plain class; ``remote_worker_class()`` wraps it as a Ray actor."""

    def __init__(self, worker_id: str, model_factory: ModelFactory, data: Any, labels: Any = None,
                 *, batch_size: int, threads: int = 1, device: str = "cpu", plugin: WorkerPlugin | None = None) -> None:
        self.worker_id = worker_id
        self.failed: tuple[str, str] | None = None  # (error class, its line): why this worker could not start
        try:
            self._build(model_factory, data, labels, batch_size, threads, device, plugin)
        except Exception as e:
            # Kept for info() to report: an actor whose constructor raises dies with a multi-line
            # traceback on the driver's console (Ray prints it), where a user's mistake (a model the
            # worker's host cannot import, say) deserves one line.
            self.failed = (type(e).__name__, str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)

    def _build(self, model_factory: ModelFactory, data: Any, labels: Any, batch_size: int, threads: int,
               device: str, plugin: WorkerPlugin | None) -> None:
        flush_denormals()  # first: threads torch starts later inherit it (deepgrid.train.denormals)
        torch.set_num_threads(threads)
        self.device = device
        self.model = model_factory().to(device)
        self.batch_size = batch_size
        self.data_digest: str | None = None
        self.shards: WorkerShards | None = None
        if isinstance(data, dict) and isinstance(labels, dict):  # a Conf and a shard layout (data.shards)
            from deepgrid.config.conf import Conf

            self.shards = WorkerShards(Conf.from_dict(data), ShardLayout.from_dict(labels), device)
            # Each shard is read at its first job and checked then against the master's digest of it.
            self.data, self.data_digest = None, self.shards.layout.digest
        elif isinstance(data, dict):  # a Conf to read the files with
            self.data = load_worker_data(data)
            # The master compares it with its own: every host must train on the same examples.
            self.data_digest = self.data.digest()
        else:
            with warnings.catch_warnings():
                # Arrays from the object store are zero-copy, read-only views of shared
                # memory; torch warns about read-only memory, and we only ever read it.
                warnings.simplefilter("ignore", UserWarning)
                self.data = ArrayDataset(torch.from_numpy(np.asarray(data)), torch.from_numpy(np.asarray(labels)))
        if self.data is None:
            pass  # shards: nothing read yet
        elif isinstance(self.data, MappedDataset):
            # Data larger than memory (dataset: npy) stay on disk: each job reads its own batches' rows.
            self.data = self.data.to_device(device)
        else:
            self.data = ArrayDataset(self.data.x.to(device), self.data.y.to(device)) if device != "cpu" else self.data
            # Touch every page of the (memory-mapped) data now, during set-up: the first job would
            # otherwise pay for mapping them in, and its round with it.
            float(self.data.x.sum())
        self._phase_index = {p.name: i for i, p in enumerate(self.model.phases())}
        self._orders: dict[tuple[str, int], torch.Tensor] = {}
        self._blocks: dict[tuple[str, int, int], tuple[int, torch.Tensor]] = {}  # shard -> (first, order)
        self.job: Job | None = None  # the job being trained: the strategy plugin's hooks may read it
        self.plugin = plugin or WorkerPlugin()  # the training strategy's half in this worker
        self.plugin.setup(self)

    def info(self) -> dict[str, Any]:
        import ray

        where = {"host": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                 "node_id": ray.get_runtime_context().get_node_id()}
        if self.failed is not None:
            return {**where, "error": self.failed}
        shards = {} if self.shards is None else {"shards": self.shards.held()}  # what its host holds
        return {**where, "threads": torch.get_num_threads(), "algorithm": self.model.name,
                "examples": len(self.data) if self.data is not None else self.shards.examples,
                "data_digest": self.data_digest, **shards}

    def _order(self, phase: str, epoch: int) -> torch.Tensor:
        key = (phase, epoch)
        if key not in self._orders:
            self._orders = {key: self.data.batch_order(self.batch_size,
                                                       phase_seed(self.model.conf.seed, self._phase_index[phase]),
                                                       epoch)}
        return self._orders[key]

    def train(self, params: np.ndarray | None, job: dict[str, Any]) -> dict[str, Any]:
        """Train one job from ``params`` (None: from this worker's own current parameters, a
        second job in the same round); return the new parameters and what was trained."""
        started = time.perf_counter()
        task = Job.from_dict(job)
        if params is not None:
            self.plugin.take_params(self, params)
        start = self.model.get_flat_params() if self.plugin.wants_start else None
        if task.shard is None:
            order = self._order(task.phase, task.epoch)
            batches = Batches(self.data, order[task.start : task.stop])
        else:
            batches = self._shard_batches(task)
        seed_job_noise(self.model.conf.seed, task.phase, task.epoch, task.index)
        self.job = task
        hook = self.plugin.gradient_hook(self, task.phase)
        # Only strategies that combine gradients pass a hook: a model's own train_step override
        # (two arguments) keeps working with every other strategy.
        step = self.model.train_step(task.phase, batches, hook) if hook else self.model.train_step(task.phase, batches)
        finish = getattr(hook, "finish", None)
        if finish is not None:  # a hook's end of the job: e.g. the shared steps other workers still take
            finish()
        return {"worker_id": self.worker_id, "job_id": task.id,
                "update": self.plugin.encode(start, self.model.get_flat_params()),
                "n_samples": step.n_samples, "loss": step.loss, "seconds": time.perf_counter() - started}

    def _shard_batches(self, task: Job) -> Batches:
        """A shard-blocked job's batches (its shard read now if this worker has not yet): positions
        [start, stop) of the epoch lie in its shard's block, whose first position is ``first``."""
        assert self.shards is not None and task.shard is not None
        data, counts = self.shards.get(task.shard), self.shards.layout.counts
        key = (task.phase, task.epoch, task.shard)
        if key not in self._blocks:
            seed = phase_seed(self.model.conf.seed, self._phase_index[task.phase])
            # Only the current epoch's orders are kept: a job of an older epoch is never sent again.
            self._blocks = {k: v for k, v in self._blocks.items() if k[:2] == key[:2]}
            first = next(b[1] for b in shard_blocks(counts, self.batch_size, seed, task.epoch) if b[0] == task.shard)
            self._blocks[key] = (first, shard_batch_order(counts[task.shard], self.batch_size, seed, task.epoch,
                                                          task.shard))
        first, order = self._blocks[key]
        return Batches(data, order[task.start - first : task.stop - first])

    def plugin_call(self, method: str, *args: Any) -> Any:
        """Run one of the strategy plugin's own methods here (e.g. joining a process group)."""
        return getattr(self.plugin, method)(self, *args)

    def ping(self) -> str:
        return self.worker_id


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker actor of a run is built from: it travels to `deepgrid worker` machines too."""

    factory: Callable[[], Model]
    data_args: tuple[Any, Any]  # object-store refs of (x, y), or (the Conf as a dict, None) to read files
    batch_size: int
    threads: int
    device: str
    plugin: WorkerPlugin  # the training strategy's half inside each worker


def start_actors(spec: WorkerSpec, worker_ids: list[str], node_id: str) -> list[tuple[str, Any]]:
    """Start one worker actor per id, pinned to ``node_id`` (never placed elsewhere by Ray)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {"num_cpus": spec.threads,
                               "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}
    if spec.device == "cuda":
        options["num_gpus"] = 1
    actor_class = remote_worker_class()
    return [(worker_id, actor_class.options(**options).remote(
        worker_id, spec.factory, *spec.data_args, batch_size=spec.batch_size, threads=spec.threads,
        device=spec.device, plugin=spec.plugin)) for worker_id in worker_ids]


def remote_worker_class() -> Any:
    """``Worker`` as a Ray actor class (made on demand, so importing this module needs no Ray)."""
    import ray

    # ``ping`` (the master's heartbeat) has a thread of its own, so a worker answers while a job
    # trains; every other call (``train``, ``info``) runs on the one default thread, one at a
    # time: two jobs never train at once on the same model and optimizer.
    class RayWorker(Worker):
        ping = ray.method(concurrency_group="heartbeat")(Worker.ping)

        def train(self, params: Any, job: dict[str, Any]) -> dict[str, Any]:
            # The round's parameters come boxed ([ref], see Dispatcher) and are read here, in the call:
            # a bare ObjectRef argument is fetched before the call starts, and until it is Ray holds
            # back the caller's later calls to this actor, pings too whatever their concurrency group
            # (ray-project/ray#52825). A worker pulling the parameters from a peer host that was just
            # cut off would then look dead; this way it answers, and at worst overruns its round.
            if isinstance(params, list):
                params = ray.get(params[0])
            return Worker.train(self, params, job)

    RayWorker.__name__ = RayWorker.__qualname__ = "Worker"  # the process title stays ray::Worker
    return ray.remote(max_restarts=0, max_task_retries=0, concurrency_groups={"heartbeat": 1})(RayWorker)
