"""A worker machine: a node of the master's Ray cluster, and deepgrid's worker actors on it.

``deepgrid worker -ad HOST`` makes this machine a node of the master's engine (what
``ray start --address HOST`` does; one node per machine, reused if this machine already is
one, e.g. the master's own), then starts its worker actors on this node only, so that the
machine adds its own cores to the job. A driver alone would not: Ray would run its actors
wherever the head likes, usually on the master's machine.

The node advertises the resource ``deepgrid_external``: the master starts no actors of its
own there. It lives as long as the ``deepgrid worker`` process (Ctrl-C, SIGTERM, even SIGKILL
of that process take it down), so the master notices the actors' death and drops them.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepgrid.distributed import engine
from deepgrid.errors import ClusterError, ConfigError

EXTERNAL_RESOURCE = "deepgrid_external"  # marks a `deepgrid worker` node: the master places nothing there
NODE_START_TIMEOUT_S = 90.0
REATTACH_WAIT_S = 120.0  # how long `deepgrid worker` waits for a master that went away to come back
ALIVE = 0  # GcsNodeInfo.state of a live node


def route_address(host: str, port: int) -> str:
    """This machine's address on the route to host:port: what the master can reach it at."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, port))  # UDP: picks the route, sends nothing
            return probe.getsockname()[0]
        except OSError as e:
            raise ClusterError(f"No route from this machine to the master at {host}:{port} ({e.strerror}); "
                               "check the address, or pass --bind with this machine's address.") from None


def check_local_address(bind: str) -> None:
    """``--bind ADDR`` must be an address of this machine."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((bind, 0))
    except OSError:
        raise ConfigError(f"--bind {bind!r} is not an address of this machine; pass one of its IP addresses "
                          "(the one the master can reach), or leave --bind out to use the route to the master.") from None


def alive_nodes(master: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Node id (hex) -> node info, for every live node of the engine at ``master``. A head that
    is still starting (its port open, its services not yet) gets ``timeout_s`` to answer."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError, RpcError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            infos = GcsClient(address=master).get_all_node_info(timeout=10)
            return {node_id.hex(): info for node_id, info in infos.items() if info.state == ALIVE}
        except AuthenticationError:
            raise
        except RpcError as e:
            if time.monotonic() > deadline:
                raise ClusterError(f"The master's engine at {master} accepts connections but does not answer "
                                   f"({e}); check that a deepgrid master runs there.") from None
            time.sleep(1.0)


def node_at(master: str, ip: str) -> str | None:
    """The id of a live node of that engine at ``ip`` (this machine, if ``ip`` is ours), or None."""
    for node_id, info in alive_nodes(master).items():
        if info.node_manager_address == ip:
            return node_id
    return None


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by SIGKILL (Linux prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class WorkerNode:
    """This machine's Ray node; ``process`` is None when an existing node was reused."""

    ip: str
    process: subprocess.Popen[bytes] | None
    log_path: Path | None = None

    @classmethod
    def join(cls, master: str, ip: str, cpus: int, log_path: Path) -> WorkerNode:
        """Reuse this machine's node of that engine, or start one (``ray start --address``)."""
        if node_at(master, ip) is not None:
            return cls(ip, None)
        if engine.is_loopback(ip):
            # The master's machine itself: its head's node may still be registering.
            deadline = time.monotonic() + NODE_START_TIMEOUT_S
            while time.monotonic() < deadline:
                time.sleep(0.5)
                if node_at(master, ip) is not None:
                    return cls(ip, None)
            raise ClusterError(f"The master's engine at {master} has no node on {ip}, and a node on loopback "
                               "cannot join it; start the worker on the master's machine with -ad 127.0.0.1, "
                               "or give the master a network address (deepgrid master --bind ADDR).")
        from deepgrid.distributed.cluster import ray_env, ray_executable

        command = [ray_executable(), "start", "--block", "--address", master, "--node-ip-address", ip,
                   "--num-cpus", str(cpus), "--resources", json.dumps({EXTERNAL_RESOURCE: cpus}),
                   # Each machine keeps Ray's session files in its own temporary folder, not the head's.
                   "--temp-dir", os.path.join(tempfile.gettempdir(), "ray"), "--disable-usage-stats"]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=ray_env(), start_new_session=True, preexec_fn=_die_with_parent)
        node = cls(ip, process, log_path)
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ClusterError(f"This machine's Ray node exited while joining the master at {master} "
                                   f"(status {process.returncode}); see {log_path}.")
            if node_at(master, ip) is not None:
                return node
            time.sleep(0.5)
        node.stop()
        raise ClusterError(f"This machine's Ray node did not join the master at {master} within "
                           f"{NODE_START_TIMEOUT_S:.0f} s; see {log_path}.")

    def stop(self) -> None:
        """Take the node out of the cluster (a reused node is left as it was)."""
        if self.process is None or self.process.poll() is not None:
            return
        # `ray start --block` stops the node's processes itself on SIGTERM.
        self.process.terminate()
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def join_master(address: str, algorithm: str | None, count: int | None, *, bind: str | None = None,
                say: Callable[[str], None] = print, reattach_s: float = REATTACH_WAIT_S) -> dict[str, Any]:
    """``deepgrid worker -ad HOST``: make this machine a node of the master's engine, check the job,
    run worker actors on this node until the run ends.

    If the master goes away (killed, crashed) while its engine's head stays up, wait up to
    ``reattach_s`` for a master to come back on it (``deepgrid master --resume``), then serve
    that one with fresh worker actors.
    """
    import ray

    from deepgrid.distributed.cluster import find_mailbox
    from deepgrid.distributed.token import check_token
    from deepgrid.models.registry import check_model_name
    from deepgrid.state.status import deepgrid_home

    wanted = check_model_name(algorithm) if algorithm else None
    host, port = engine.split_address(address)
    engine.check_reachable(host, port)
    check_token(host, port)
    if bind is not None:
        check_local_address(bind)
    ip = bind or route_address(host, port)
    master = f"{host}:{port}"
    cores = os.cpu_count() or 1
    node = WorkerNode.join(master, ip, cores, deepgrid_home() / "worker-node.log")
    try:
        engine.join(master, log_to_driver=False, node_ip=ip)  # the cluster's logs are the master's to show
        node_id = ray.get_runtime_context().get_node_id()
        if node.process is not None:  # (a reused node, the master's own machine, needs no word)
            say(f"deepgrid: this machine ({ip}) joined the master's engine at {master} as a node with {cores} CPUs")
        mailbox = find_mailbox(master)
        while True:
            outcome = _serve_master(mailbox, master, wanted, count, node_id, say)
            if outcome is not None:
                return outcome
            say(f"deepgrid: the master at {master} went away; waiting up to {reattach_s:.0f} s for it to "
                "come back (deepgrid master --resume)")
            try:
                mailbox = find_mailbox(master, wait_s=reattach_s)
            except ClusterError:
                raise ClusterError(f"The master at {master} went away and did not come back within "
                                   f"{reattach_s:.0f} s; its last checkpoint is kept. Start this worker again "
                                   "once the master is back.") from None
            except Exception:  # the engine's head went too: nothing to come back to
                raise ClusterError(f"The master at {master} went away, and its engine with it; its last "
                                   "checkpoint is kept. Start this worker again once the master is back.") from None
    finally:
        ray.shutdown()
        node.stop()


def node_resources(node_id: str) -> dict[str, float]:
    """What a node offers in all. (What is free now would be stale for a while after actors end,
    and refusing on it would refuse runs that fit: only what can never fit is refused.)"""
    import ray

    resources = next((n.get("Resources", {}) for n in ray.nodes() if n["NodeID"] == node_id), {})
    return {name: float(value) for name, value in resources.items()}


def _serve_master(mailbox: Any, address: str, wanted: str | None, count: int | None, node_id: str,
                  say: Callable[[str], None]) -> dict[str, Any] | None:
    """Start worker actors on this node for the master behind ``mailbox``; keep them until its run ends.

    Returns what was done, or None when the master went away mid-run (its actors are stopped).
    """
    import ray

    from deepgrid.distributed.worker import check_started, start_actors

    try:
        job = ray.get(mailbox.describe.remote(), timeout=30)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
        say(f"deepgrid: the master's mailbox does not answer ({_first_line(e)})")
        return None
    if wanted and wanted != job["algorithm"]:
        raise ClusterError(f"This worker was started for algorithm {wanted!r} but the master at {address} "
                           f"trains {job['algorithm']!r} (job {job['job_name']!r}); start it with -a {job['algorithm']}.")
    threads = int(job["threads"])
    cpus = node_resources(node_id).get("CPU", 0.0)
    count = count or max(1, int(cpus // threads))
    if count * threads > cpus:
        raise ConfigError(f"--workers {count} with threads_per_worker {threads} needs {count * threads} CPUs, "
                          f"but this machine's node offers {cpus:g}; pass --workers {max(1, int(cpus // threads))} or fewer.")
    host = socket.gethostname()
    # The same actors as the master's own, built from the same spec (the strategy's plugin included).
    actors = start_actors(job["spec"], [f"{host}-{os.getpid()}-{uuid.uuid4().hex[:4]}" for _ in range(count)], node_id)
    process = f"{host}-{os.getpid()}"
    status = "training"
    try:
        infos = ray.get([actor.info.remote() for _, actor in actors], timeout=300)
        check_started(infos)
        expected = job.get("data_digest")
        for info in infos:
            if expected and info.get("data_digest") != expected:
                raise ClusterError(
                    f"This host ({info.get('ip') or host}) holds other training data than the master: "
                    f"{info.get('examples')} examples with digest {str(info.get('data_digest'))[:12]}, against the "
                    f"master's {job.get('examples')} with {expected[:12]}; copy the master's data files here "
                    "(data_feed: files reads them from each host's own disk) or use data_feed: object_store.")
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
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
        say(f"deepgrid: lost the master ({_first_line(e)})")
        for _, actor in actors:  # they served the master that went away; a new one gets new actors
            ray.kill(actor)
        return None
    except BaseException:
        for _, actor in actors:
            ray.kill(actor)
        raise
    say(f"deepgrid: the master's run ended ({status}); worker exiting")
    return {"workers": count, "job": job["job_name"], "algorithm": job["algorithm"], "master_status": status}


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]
