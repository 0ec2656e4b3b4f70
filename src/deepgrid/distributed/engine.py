"""Starting or joining the engine (Ray), the part Akka played in the seed.

One machine: the program starts a private local Ray on loopback itself.
A cluster: the master runs the Ray head, workers join it by address.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections.abc import MutableMapping

from deepgrid.distributed.lean_head import lean_head
from deepgrid.errors import ClusterError

# Ray's own default head port (6379) is also Redis's: keep ours apart so a
# master can run beside a Redis state tracker.
DEFAULT_PORT = 6380
NAMESPACE = "deepgrid"
CONNECT_TIMEOUT_S = 20.0  # a master still starting gets this long; an absent one fails within it
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# Cluster traffic is authenticated by default: Ray's token (~/.ray/auth_token,
# RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN). Ray reads the mode when it is
# imported, which deepgrid does only after this module.
os.environ.setdefault("RAY_AUTH_MODE", "token")

# Ray's settings for every Ray process deepgrid starts or connects, on one machine or many, the
# drivers included (each can be overridden from the environment): Ray's own background work that
# deepgrid does not need. Measured with bench/bench_hosts.py --cpu (a master host and 2 worker hosts
# on one 2-core machine, bench/README.md): there each worker host's actor shares the cores with every
# Ray process of the three nodes, so whatever they save goes to training. That cluster, up and idle,
# used 14% of a core with Ray's defaults and 10% with these (40 s each way, alternated).
LEAN_SETTINGS = {
    # Task state events (every call's state changes, sent to the GCS each second) feed Ray's dashboard
    # and `ray list tasks`; Ray's Prometheus metrics are recorded by every process and gathered by each
    # node's agent. deepgrid uses neither: together 2% of a core (GCS, agents, drivers).
    "RAY_task_events_report_interval_ms": "0",
    "RAY_enable_metrics_collection": "0",
    # Ray keeps idle worker processes ready for tasks; deepgrid runs actors only, each in a process of
    # its own, so they would only wait (0.7% of a core each: one or two per node).
    "RAY_prestart_worker_first_driver": "0",
    "RAY_enable_worker_prestart": "0",
    # Each node's agent gathers the machine's and every worker's statistics for Ray's dashboard, every
    # 5 s by default; once a minute: 0.5% of a core less (three nodes).
    "REPORTER_UPDATE_INTERVAL_MS": "60000",
    # A Ray process that connects to a socket of its node (the raylet, the object store) before that
    # socket listens tries again a second later, 10 times by default; here every 0.1 s, 100 times (the
    # same 10 s in all). Starting a local Ray, the raylet's own first try often comes too early, and
    # the second cost a whole second: `ray.init` took 3.3-3.6 s instead of 2.2-2.4 in 3 of 8 tries,
    # against 1 of 8 with these (alternated; bench/README.md, "Start-up").
    "RAY_raylet_client_connect_timeout_milliseconds": "100",
    "RAY_raylet_client_num_connect_attempts": "100",
}


def lean_settings(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """``env`` (e.g. os.environ) with LEAN_SETTINGS added where it does not set them itself."""
    for name, value in LEAN_SETTINGS.items():
        env.setdefault(name, value)
    return env


def start_local(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """A fresh private Ray on this machine, bound to loopback only."""
    import ray

    if ray.is_initialized():
        return
    keep_on_loopback()
    from deepgrid.distributed.token import ensure_token

    ensure_token(lambda message: logging.getLogger("deepgrid").debug(message))
    lean_settings(os.environ)  # read by ray.init, and by the processes it starts
    with lean_head():  # sooner up, without Ray's API server and autoscaler monitor
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, namespace=NAMESPACE,
                 include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
                 configure_logging=True)


def join(address: str, timeout_s: float = CONNECT_TIMEOUT_S, log_to_driver: bool = True,
         node_ip: str | None = None) -> None:
    """Connect to a running Ray cluster at ``host[:port]``; fail clearly within ``timeout_s``.

    ``node_ip``: this machine's node in that cluster, which the driver attaches to (default: the
    head's address when it is one of this machine's, as for a master joining its own head).
    """
    import ray

    if ray.is_initialized():
        return
    host, port = split_address(address)
    check_reachable(host, port, timeout_s)
    if is_loopback(host):
        keep_on_loopback()
    if node_ip is None and is_local_address(host):
        node_ip = socket.gethostbyname(host)
    from deepgrid.distributed.token import check_token

    check_token(host, port)
    lean_settings(os.environ)  # this driver's own share (ray.init reads them)
    try:
        ray.init(address=f"{host}:{port}", namespace=NAMESPACE, logging_level=logging.WARNING,
                 log_to_driver=log_to_driver, _node_ip_address=node_ip)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"Could not join the deepgrid master's engine at {host}:{port}: {first}.") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def is_local_address(host: str) -> bool:
    """True when ``host`` names an address of this machine (one it can bind to)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((socket.gethostbyname(host), 0))
        return True
    except OSError:
        return False


def keep_on_loopback() -> None:
    """Keep this process's Ray on 127.0.0.1: by default Ray swaps in the machine's
    network address and listens on every interface. Ray reads the switch at
    import, so set it for the processes it starts and patch the constant for
    this one (Ray may have been imported already)."""
    os.environ.setdefault(LOOPBACK_ENV, "0")
    from ray._private import ray_constants

    if os.environ[LOOPBACK_ENV] == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False


def split_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'host' or 'host:port' -> (host, port), with a clear error for anything else."""
    text = address.strip()
    if text.startswith(("ray://", "http://", "https://")):
        text = text.split("://", 1)[1]
    host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ClusterError(f"Master address {address!r} has no host; expected HOST or HOST:PORT, e.g. 127.0.0.1:{default_port}.")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ClusterError(f"Master address {address!r} has a bad port; expected HOST:PORT with a port from 1 to 65535.")
    return host, int(port_text)


def check_reachable(host: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Wait up to ``timeout_s`` for something to listen at host:port, then fail clearly
    (Ray itself would retry for minutes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())):
                return
        except socket.gaierror:
            raise ClusterError(f"Master host {host!r} cannot be resolved; check the address given with -ad/--address.") from None
        except OSError as e:
            if time.monotonic() >= deadline:
                reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
                raise ClusterError(
                    f"No deepgrid master answers at {host}:{port} ({reason}, waited {timeout_s:.0f} s); start one with "
                    f"`deepgrid master CONF --bind {host} --port {port}`, or check the address and firewall."
                ) from None
            time.sleep(0.25)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
