"""The worker group: the master's worker actors, where they run, and who joins or leaves.

It starts actors pinned to a node (the master's own, or a node that joined the engine), takes
on workers that ``deepgrid worker`` machines started and registered through the mailbox, checks
that every host trains on the same data, and drops workers. What the workers are asked to do
is the dispatcher's business.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deepgrid.config.conf import Conf
from deepgrid.data.dataset import ArrayDataset
from deepgrid.distributed.events import EventLog
from deepgrid.distributed.host import EXTERNAL_RESOURCE
from deepgrid.distributed.strategies.base import WorkerPlugin
from deepgrid.distributed.worker import WorkerSpec, check_started, start_actors
from deepgrid.errors import ClusterError, ConfigError, DataError
from deepgrid.models.base import Model
from deepgrid.state.base import StateTracker

NODE_CHECK_EVERY_S = 2.0  # how often the master looks for nodes that joined (group.node_check_every_s)


@dataclass
class WorkerHandle:
    worker_id: str
    actor: Any
    node_id: str | None = None
    failures: int = 0
    # A call that ran past its round's deadline and is still running. Until it ends the worker is
    # disabled in the tracker and gets no job: its model and optimizer are busy with the old one.
    overrun: Any = None
    overrun_ping: Any = None
    last_seen: float = 0.0


class WorkerGroup:
    """The live workers of a run, by id."""

    def __init__(self, spec: WorkerSpec, tracker: StateTracker, home_node: str, train_data: ArrayDataset,
                 say: EventLog, data_digest: str | None = None) -> None:
        self.spec, self.tracker, self.home_node, self.say = spec, tracker, home_node, say
        self.train_data = train_data
        self.data_digest = data_digest  # data_feed: files: every host's data must have this digest
        self.workers: dict[str, WorkerHandle] = {}
        self.hosts: dict[str, str] = {}  # worker id -> its machine's address, kept after it leaves
        self.mailbox: Any = None  # set when `deepgrid worker` processes may join
        # Set when a step shared among workers lost a peer (strategies.base.GroupBroken): the
        # strategy re-forms whatever the workers share before the next round, and clears it.
        self.broken = False
        self.node_check_every_s = NODE_CHECK_EVERY_S
        self._last_node_check = 0.0
        self._known_nodes: set[str] = set()

    @classmethod
    def for_run(cls, conf: Conf, factory: Callable[[], Model], plugin: WorkerPlugin, tracker: StateTracker,
                home_node: str, train_data: ArrayDataset, say: EventLog) -> WorkerGroup:
        """The group for a run: how its workers get the data follows ``conf.data_feed``."""
        import ray

        digest = None
        if conf.data_feed == "object_store":
            # Put once; each node fetches it once and its workers map the same shared memory.
            data_args: tuple[Any, Any] = (ray.put(train_data.x.numpy()), ray.put(train_data.y.numpy()))
        else:
            data_args = (conf.to_dict(), None)
            # Each host reads its own files: the master refuses a host whose examples differ.
            digest = train_data.digest()
        spec = WorkerSpec(factory, data_args, conf.batch_size, conf.threads_per_worker, conf.device, plugin)
        return cls(spec, tracker, home_node, train_data, say, digest)

    def __len__(self) -> int:
        return len(self.workers)

    def start(self, count: int, node_id: str | None = None) -> list[str]:
        """Start ``count`` workers on ``node_id`` (default: the master's node); wait until each is built."""
        import ray

        ids = [f"w{len(self.workers) + i + 1}-{uuid.uuid4().hex[:4]}" for i in range(count)]
        started = start_actors(self.spec, ids, node_id or self.home_node)
        # Wait until each is built (model made, data mapped): a worker that cannot start is a
        # set-up error, reported now rather than mid-run.
        infos = ray.get([actor.info.remote() for _, actor in started], timeout=300)
        try:
            check_started(infos)
        except Exception:
            for _, actor in started:
                kill(actor)
            raise
        taken = [worker_id for (worker_id, actor), info in zip(started, infos, strict=True)
                 if self._take(worker_id, actor, info, node_id)]
        self.say(f"started {len(taken)} worker(s): {', '.join(taken)}", "started")
        return taken

    def add(self, worker_id: str, actor: Any, info: dict[str, Any]) -> None:
        """Take on a worker started elsewhere (``deepgrid worker``); it gets jobs from the next round."""
        if self._take(worker_id, actor, info, info.get("node_id")):
            self.say(f"worker {worker_id} joined from {info.get('host', '?')} ({info.get('ip', '?')})", "joined",
                     worker_id=worker_id)

    def _take(self, worker_id: str, actor: Any, info: dict[str, Any], node_id: str | None) -> bool:
        if not self._same_data(worker_id, actor, info):
            return False
        self.workers[worker_id] = WorkerHandle(worker_id, actor, node_id)
        self.hosts[worker_id] = str(info.get("ip") or info.get("host"))
        self.tracker.add_worker(worker_id, info)
        return True

    def _same_data(self, worker_id: str, actor: Any, info: dict[str, Any]) -> bool:
        """With ``data_feed: files`` every host reads its own copy: refuse (and stop) a worker whose
        copy differs from the master's, naming its host, instead of averaging over other data."""
        if self.data_digest is None or info.get("data_digest") == self.data_digest:
            return True
        self.say(f"deepgrid: refused worker {worker_id} on host {info.get('host', '?')} ({info.get('ip', '?')}): "
                 f"its data files hold {info.get('examples')} examples with another checksum than the master's "
                 f"{len(self.train_data)}; copy the master's data files to that host.", "refused", worker_id=worker_id)
        kill(actor)
        return False

    def drop(self, worker_id: str) -> None:
        """Stop a worker and forget it (the tracker too)."""
        handle = self.workers.pop(worker_id, None)
        self.tracker.remove_worker(worker_id)
        if handle is not None:
            kill(handle.actor)

    def accept_joined(self) -> int:
        """Take on the workers that registered through the mailbox since the last look."""
        import ray

        if self.mailbox is None:
            return 0
        joined = ray.get(self.mailbox.drain.remote(), timeout=30)
        for worker_id, actor, info in joined:
            self.add(worker_id, actor, info)
        return len(joined)

    def remember_nodes(self) -> None:
        """The nodes alive now are not new: only nodes that join later get workers of their own."""
        import ray

        self._known_nodes = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}

    def check_new_nodes(self) -> None:
        """Take on workers that joined since the last look (elastic scale-out): those registered
        by ``deepgrid worker``, and new ones started on nodes that joined the engine."""
        import ray

        now = time.monotonic()
        if now - self._last_node_check < self.node_check_every_s:
            return
        self._last_node_check = now
        self.accept_joined()
        for node in ray.nodes():
            node_id = node["NodeID"]
            if not node.get("Alive") or node_id in self._known_nodes:
                continue
            self._known_nodes.add(node_id)
            resources = node.get("Resources", {})
            if resources.get(EXTERNAL_RESOURCE):  # a `deepgrid worker` node brings its own actors
                continue
            address = node.get("NodeManagerAddress")
            count = int(resources.get("CPU", 0) // self.spec.threads)
            if self.spec.device == "cuda":
                count = min(count, int(resources.get("GPU", 0)))
            if count <= 0:
                self.say(f"deepgrid: node {address} joined but cannot host a worker ({resources.get('CPU', 0):g} "
                         f"CPUs, {resources.get('GPU', 0):g} GPUs); skipped")
                continue
            self.say(f"node {address} joined: starting {count} worker(s) on it", "node")
            try:
                self.start(count, node_id)
            except (ray.exceptions.RayError, ClusterError, ConfigError, DataError) as e:  # the run goes on without it
                self.say(f"deepgrid: node {address} joined but its workers did not start ({first_line(e)}); skipped")

    def wait_for(self, minimum: int, hint: str = "", on_wait: Callable[[], None] | None = None) -> None:
        """Block until ``minimum`` workers are present (``deepgrid master --min-workers``)."""
        last_said = 0.0
        while len(self.workers) < minimum:
            self.accept_joined()
            if on_wait is not None:
                on_wait()
            if time.monotonic() - last_said > 10 and len(self.workers) < minimum:
                self.say(f"waiting for workers: {len(self.workers)} of {minimum} present. {hint}".rstrip())
                last_said = time.monotonic()
            time.sleep(0.2)

    def let_processes_go(self, wait_s: float = 5.0) -> None:
        """Wait (briefly) until each `deepgrid worker` process has seen that the run ended,
        so that it exits cleanly instead of reporting a vanished master."""
        import ray

        if self.mailbox is None:
            return
        deadline = time.monotonic() + wait_s
        try:
            while ray.get(self.mailbox.unacknowledged.remote(), timeout=wait_s) and time.monotonic() < deadline:
                time.sleep(0.1)
        except Exception:  # best effort: the run itself is over
            pass
        self.mailbox = None

    def publish(self, status: str, round_: int) -> None:
        """Tell `deepgrid worker` processes how the run stands (they exit when it ends)."""
        if self.mailbox is not None:
            try:
                self.mailbox.set_status.remote({"status": status, "round": round_})
            except Exception:  # the mailbox is a courtesy to workers: never fail a run over it
                pass

    def stop_all(self) -> None:
        self.let_processes_go()
        for handle in self.workers.values():
            kill(handle.actor)
        self.workers.clear()


def check_room(count: int, threads: int, device: str, node_id: str) -> None:
    """The master's own workers must fit on its node: Ray would otherwise wait for room forever."""
    from deepgrid.distributed.host import node_resources

    resources = node_resources(node_id)
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if count * threads > cpus:
        fit = max(int(cpus // threads), 0)
        raise ConfigError(f"{count} workers with threads_per_worker {threads} need {count * threads} CPUs, but this "
                          f"machine's engine node offers {cpus:g}; use workers: {fit} or fewer"
                          + (", or fewer threads_per_worker" if threads > 1 else "")
                          + " (other machines add theirs with `deepgrid worker`).")
    if device == "cuda" and count > gpus:
        raise ConfigError(f"{count} workers with device: cuda need one GPU each, but this machine's engine node "
                          f"offers {gpus:g}; use workers: {int(gpus)} or fewer.")


def check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was asked for but this machine has no usable CUDA GPU; "
                              "set device: cpu or run on a machine with a GPU.")


def first_line(error: BaseException) -> str:
    """An error's own line: Ray's task errors carry the remote traceback before it."""
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def kill(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead: nothing to stop
        pass
