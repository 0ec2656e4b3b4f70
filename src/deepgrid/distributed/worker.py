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
from typing import Any

import numpy as np
import torch

from deepgrid.data.dataset import ArrayDataset
from deepgrid.models.base import Model
from deepgrid.state.base import Job
from deepgrid.train.loop import phase_seed, seed_job_noise

ModelFactory = Callable[[], Model]


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
                 *, batch_size: int, threads: int = 1, device: str = "cpu") -> None:
        torch.set_num_threads(threads)
        self.worker_id = worker_id
        self.model = model_factory().to(device)
        self.batch_size = batch_size
        if isinstance(data, dict):  # a Conf to read the files with
            self.data = load_worker_data(data)
        else:
            with warnings.catch_warnings():
                # Arrays from the object store are zero-copy, read-only views of shared
                # memory; torch warns about read-only memory, and we only ever read it.
                warnings.simplefilter("ignore", UserWarning)
                self.data = ArrayDataset(torch.from_numpy(np.asarray(data)), torch.from_numpy(np.asarray(labels)))
        self.data = ArrayDataset(self.data.x.to(device), self.data.y.to(device)) if device != "cpu" else self.data
        # Touch every page of the (memory-mapped) data now, during set-up: the first job would
        # otherwise pay for mapping them in, and its round with it.
        float(self.data.x.sum())
        self._phase_index = {p.name: i for i, p in enumerate(self.model.phases())}
        # Made now, not on the first job: the first optimizer a process makes imports torch's
        # compiler stack (about 1.5 s), which would stall the first round for every worker.
        for phase in self._phase_index:
            self.model.optimizer(phase)
        self._orders: dict[tuple[str, int], torch.Tensor] = {}

    def info(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "threads": torch.get_num_threads(),
                "examples": len(self.data), "algorithm": self.model.name}

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
            self.model.set_flat_params(params)
        order = self._order(task.phase, task.epoch)
        batches = [self.data.batch(idx) for idx in order[task.start : task.stop]]
        seed_job_noise(self.model.conf.seed, task.phase, task.epoch, task.index)
        step = self.model.train_step(task.phase, batches)
        return {"worker_id": self.worker_id, "job_id": task.id, "params": self.model.get_flat_params(),
                "n_samples": step.n_samples, "loss": step.loss, "seconds": time.perf_counter() - started}

    def ping(self) -> str:
        return self.worker_id


def remote_worker_class() -> Any:
    """``Worker`` as a Ray actor class (made on demand, so importing this module needs no Ray)."""
    import ray

    # Two threads: a ``ping`` (the master's heartbeat) is answered while a job trains.
    return ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=2)(Worker)


REATTACH_WAIT_S = 120.0  # how long `deepgrid worker` waits for a master that went away to come back


def join_master(address: str, algorithm: str | None, count: int | None,
                say: Callable[[str], None] = print, reattach_s: float = REATTACH_WAIT_S) -> dict[str, Any]:
    """``deepgrid worker -ad HOST``: join the master's engine, check the job, run workers until it ends.

    If the master goes away (killed, crashed) while its engine's head stays up, wait up to
    ``reattach_s`` for a master to come back on it (``deepgrid master --resume``), then serve
    that one with fresh worker actors.
    """
    import ray

    from deepgrid.distributed import engine
    from deepgrid.distributed.cluster import find_mailbox
    from deepgrid.errors import ClusterError
    from deepgrid.models.registry import check_model_name

    wanted = check_model_name(algorithm) if algorithm else None
    engine.join(address, log_to_driver=False)  # the cluster's logs are the master's to show
    try:
        mailbox = find_mailbox(address)
        while True:
            outcome = _serve_master(mailbox, address, wanted, count, say)
            if outcome is not None:
                return outcome
            say(f"deepgrid: the master at {address} went away; waiting up to {reattach_s:.0f} s for it to "
                "come back (deepgrid master --resume)")
            try:
                mailbox = find_mailbox(address, wait_s=reattach_s)
            except ClusterError:
                raise ClusterError(f"The master at {address} went away and did not come back within "
                                   f"{reattach_s:.0f} s; its last checkpoint is kept. Start this worker again "
                                   "once the master is back.") from None
            except Exception:  # the engine's head went too: nothing to come back to
                raise ClusterError(f"The master at {address} went away, and its engine with it; its last "
                                   "checkpoint is kept. Start this worker again once the master is back.") from None
    finally:
        ray.shutdown()


def _serve_master(mailbox: Any, address: str, wanted: str | None, count: int | None,
                  say: Callable[[str], None]) -> dict[str, Any] | None:
    """Start worker actors for the master behind ``mailbox`` and keep them until its run ends.

    Returns what was done, or None when the master went away mid-run (its actors are stopped).
    """
    import uuid

    import ray

    from deepgrid.errors import ClusterError

    try:
        job = ray.get(mailbox.describe.remote(), timeout=30)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
    if wanted and wanted != job["algorithm"]:
        raise ClusterError(f"This worker was started for algorithm {wanted!r} but the master at {address} "
                           f"trains {job['algorithm']!r} (job {job['job_name']!r}); start it with -a {job['algorithm']}.")
    count = count or max(1, os.cpu_count() or 1)
    actor_class = remote_worker_class()
    options: dict[str, Any] = {"num_cpus": job["threads"]}
    if job["device"] == "cuda":
        options["num_gpus"] = 1
    host = socket.gethostname()
    actors = []
    for _ in range(count):
        worker_id = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        actor = actor_class.options(**options).remote(worker_id, job["factory"], *job["data_args"],
                                                      batch_size=job["batch_size"], threads=job["threads"],
                                                      device=job["device"])
        actors.append((worker_id, actor))
    process = f"{host}-{os.getpid()}"
    status = "training"
    try:
        infos = ray.get([actor.info.remote() for _, actor in actors], timeout=300)
        for (worker_id, actor), info in zip(actors, infos, strict=True):
            ray.get(mailbox.register.remote(worker_id, [actor], {**info, "process": process}), timeout=30)
        say(f"deepgrid: worker(s) {', '.join(w for w, _ in actors)} joined job {job['job_name']!r} "
            f"({job['algorithm']}) at {address}")
        while True:  # the actors do the work; this process keeps them alive until the run ends
            status = ray.get(mailbox.status.remote(), timeout=30)["status"]
            if status in ("done", "failed", "stopped early"):
                mailbox.acknowledge.remote(process)
                break
            time.sleep(0.5)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        for _, actor in actors:  # they served the master that went away; a new one gets new actors
            ray.kill(actor)
        return None
    say(f"deepgrid: the master's run ended ({status}); worker exiting")
    return {"workers": count, "job": job["job_name"], "algorithm": job["algorithm"], "master_status": status}
