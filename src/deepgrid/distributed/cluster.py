"""The two-process flow of the seed: a master on one machine, workers joining it.

``deepgrid master`` starts the Ray head (``start_head``) and a ``Mailbox``
actor under a well-known name; ``deepgrid worker -ad HOST`` joins the head,
asks the mailbox what the master trains, refuses a mismatched algorithm, and
registers worker actors of its own, which the master hands jobs from the next
round on. Workers belong to the ``deepgrid worker`` process that made them: if
it exits, they die, and the master drops them without stopping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepgrid.distributed import engine
from deepgrid.errors import ClusterError

MAILBOX_NAME = "deepgrid-master"
# Ray's settings for a training cluster on a LAN, given to every node it starts (each can be
# overridden from the environment). Ray's defaults take a minute or more to give up on a
# machine that is cut off, and until then it keeps the machine's actors "alive" and keeps
# pulling objects (the training data) from it, so that a new machine waits that long to join.
RAY_SETTINGS = {
    "RAY_health_check_period_ms": "1000",  # a lost node is declared dead after ~5 failed checks
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "5",
    # Ray's 10 s is shorter than a transfer of the training set on a slow link (188 MB take 15 s
    # at 100 Mbit/s): it then fetched the whole set again, twice or three times, measured. 30 s
    # was too short as well: two worker hosts fetch the set at once through the master's link
    # (376 MB, 30 s at 100 Mbit/s), and the second fetch Ray then started ran on into training,
    # so rounds took 0.8-1.5 s instead of 0.4 (bench_hosts.py, bisected). Not much longer either:
    # a pull from a machine that was cut off waits this long before Ray tries another copy, and a
    # machine joining meanwhile waits with it (120 s: seen over 2 minutes).
    "RAY_object_manager_pull_timeout_ms": "60000",
    # A job's result (the parameters: 0.94 MB for the bench's MLP) comes back to the master inside the
    # call's reply, not through the worker machine's object store and a pull by the master's machine
    # (Ray inlines results up to 100 KB). bench_hosts.py --cpu, 2 worker hosts: the three raylets' CPU
    # fell from 28 to 15-20 ms per round. A larger result still goes through the object stores; 4 MB
    # covers the examples' networks. (Not set for the one-machine engine, where the object store is
    # shared memory: no gain was measured there.)
    "RAY_max_direct_call_object_size": str(4 * 1024 * 1024),
}


def ray_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a Ray node deepgrid starts: ``env`` (default: ours) plus RAY_SETTINGS
    and engine.LEAN_SETTINGS."""
    merged = dict(os.environ if env is None else env)
    engine.lean_settings(merged)
    for name, value in RAY_SETTINGS.items():
        merged.setdefault(name, value)
    return merged


HEAD_START_TIMEOUT_S = 60.0


@dataclass
class HeadProcess:
    """A Ray head started by ``ray start --head --block``: stopping it stops that node alone."""

    process: subprocess.Popen[bytes]
    address: str

    def stop(self) -> None:
        if self.process.poll() is None:
            # `ray start --block` stops its node's processes itself on SIGTERM;
            # signalling the whole group instead leaves it waiting on them.
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class AdoptedHead:
    """The Ray head a killed master left running (``ray start`` runs in its own session, so it
    outlives the master): a resumed master trains on it, its workers still joined, and stops it
    at the end as if it had started it."""

    pid: int
    address: str

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(self.pid):
            os.killpg(self.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def record_head(path: Path, head: HeadProcess) -> None:
    """Note the head's process and address, so that a master resumed after a crash can find it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": head.process.pid, "address": head.address}))


def adopt_head(path: Path, address: str) -> AdoptedHead | None:
    """The head a crashed master left at ``address``, if ``path`` records one that still runs."""
    try:
        record = json.loads(path.read_text())
        pid = int(record["pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("address") != address or " start --head" not in command or not _alive(pid):
        return None
    return AdoptedHead(pid, address)


def ray_executable() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "ray")
    return beside if os.path.exists(beside) else (shutil.which("ray") or "ray")


def start_head(bind: str, port: int, num_cpus: int, log_path: str) -> HeadProcess:
    """Start the Ray head on ``bind:port``; token authentication is on (Ray's default)."""
    try:
        socket.getaddrinfo(bind, port)
    except socket.gaierror:
        raise ClusterError(f"--bind {bind!r} is not an address of this machine; pass an IP address such as 127.0.0.1.") from None
    with socket.socket() as probe:
        if probe.connect_ex((bind, port)) == 0:
            raise ClusterError(f"Port {port} on {bind} is already in use; pick another with --port.")
    env = ray_env()
    if engine.is_loopback(bind):
        env[engine.LOOPBACK_ENV] = "0"  # keep every Ray process on loopback
    command = [ray_executable(), "start", "--head", "--block", "--node-ip-address", bind, "--port", str(port),
               "--num-cpus", str(num_cpus), "--include-dashboard=false", "--disable-usage-stats"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"The Ray head exited while starting (status {process.returncode}); see {log_path}.")
        with socket.socket() as probe:
            if probe.connect_ex((bind, port)) == 0:
                return HeadProcess(process, f"{bind}:{port}")
        time.sleep(0.2)
    HeadProcess(process, f"{bind}:{port}").stop()
    raise ClusterError(f"The Ray head did not start within {HEAD_START_TIMEOUT_S:.0f} s; see {log_path}.")


class Mailbox:
    """The master's door for workers that join: what it trains, and who has joined."""

    def __init__(self, description: dict[str, Any]) -> None:
        self._description = description
        self._joined: list[tuple[str, Any, dict[str, Any]]] = []
        self._status: dict[str, Any] = {"status": "starting"}
        self._processes: set[str] = set()  # `deepgrid worker` processes that have not yet seen the end

    def describe(self) -> dict[str, Any]:
        return self._description

    def register(self, worker_id: str, actor: list[Any], info: dict[str, Any]) -> None:
        # The handle travels inside a list so that Ray passes it as a handle, untouched.
        self._joined.append((worker_id, actor[0], info))
        self._processes.add(str(info.get("process", worker_id)))

    def acknowledge(self, process: str) -> None:
        """A worker process saw the run's final status and is leaving."""
        self._processes.discard(process)

    def unacknowledged(self) -> int:
        return len(self._processes)

    def drain(self) -> list[tuple[str, Any, dict[str, Any]]]:
        joined, self._joined = self._joined, []
        return joined

    def set_status(self, status: dict[str, Any]) -> None:
        self._status = status

    def status(self) -> dict[str, Any]:
        return self._status


def open_mailbox(description: dict[str, Any], wait_s: float = 30.0, node_id: str | None = None) -> Any:
    """The master's named mailbox (on the master's node, ``node_id``). On a head a killed master
    left, its mailbox's name is freed once the engine has noticed that master's death: wait for
    that, up to ``wait_s``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    placement = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)} if node_id else {}
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return ray.remote(num_cpus=0)(Mailbox).options(
                name=MAILBOX_NAME, namespace=engine.NAMESPACE, **placement).remote(description)
        except ValueError:  # the name is still taken
            if time.monotonic() > deadline:
                raise ClusterError(f"Another deepgrid master already runs on this engine (its {MAILBOX_NAME!r} "
                                   "is taken); stop it first, or start this one with another --port.") from None
            time.sleep(0.5)


def find_mailbox(address: str, wait_s: float = 30.0) -> Any:
    """The master's mailbox; waits ``wait_s`` for a master that is still starting."""
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return ray.get_actor(MAILBOX_NAME, namespace=engine.NAMESPACE)
        except ValueError:
            if time.monotonic() > deadline:
                raise ClusterError(f"The engine at {address} is up but no deepgrid master runs on it "
                                   f"(waited {wait_s:.0f} s); start one with `deepgrid master CONF` first.") from None
            time.sleep(0.5)
