"""How the local engine's ``ray.init`` starts a Ray head that is up sooner (``lean_head``).

A local run starts a private Ray and waits for it, and that wait is a third of a short run's time to
accuracy (bench/README.md). Three things in how ``ray.init`` starts a head cost time deepgrid gets
nothing for, and ``lean_head`` changes them for that one call:

- Ray's API server (its dashboard head, for ``ray job`` and ``ray list``) starts even with
  ``include_dashboard=False``, and ``ray.init`` waits for it to publish its address before it starts
  the raylet (0.6 s). deepgrid serves its own dashboard.
- Ray's autoscaler monitor is a Python process that starts beside the raylet and takes 0.3 s of CPU
  while the raylet's agents, which the raylet waits for, start too. A Ray of one machine has nothing
  to scale; the monitor only reports the cluster's state (``ray status``).
- ``ray.init`` asks the GCS for the raylet 0.1 s after starting it, and when the raylet has not
  registered yet (it waits about 0.7 s for its agents), Ray's own call sleeps a whole second before
  asking again. Here it polls every 20 ms instead.

Together: ``ray.init`` 0.95 s instead of 1.28 (1.01-1.03 instead of 1.60-1.62 the first time in a
process), alternated in a /tmp probe (bench/README.md). Set DEEPGRID_RAY_TOOLS=1 to keep the API
server and the monitor (for ``ray status``, ``ray list`` or ``ray job`` against a local run); the
polling stays, as it changes nothing but the wait. Where this Ray has no such method (the ones of Ray
2.60), that part is skipped and Ray starts as it would.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from deepgrid.errors import ConfigError

TOOLS_ENV = "DEEPGRID_RAY_TOOLS"  # 1: the local engine starts Ray's API server and autoscaler monitor too
POLL_S = 0.02  # how often to ask the GCS whether the raylet has registered
POLL_FOR_S = 10.0  # then leave it to Ray's own wait (and its error, if the raylet never comes)


def keep_tools() -> bool:
    """Whether DEEPGRID_RAY_TOOLS asks for Ray's API server and autoscaler monitor (1) or not (0, unset)."""
    keep = os.environ.get(TOOLS_ENV, "").strip()
    if keep not in ("", "0", "1"):
        raise ConfigError(f"{TOOLS_ENV}={keep!r} is not a setting: expected 1 (start Ray's API server and "
                          "autoscaler monitor with the local engine, for `ray status`, `ray list` or `ray job`) "
                          "or 0 (without them, the default); set one of those or unset it.")
    return keep == "1"


@contextlib.contextmanager
def lean_head() -> Iterator[None]:
    """Within it, ``ray.init`` starts a local head as the module's docstring says; Ray's own methods
    are back afterwards."""
    from ray._private import services
    from ray._private.node import Node

    skip = () if keep_tools() else ("start_api_server", "start_monitor")
    with contextlib.ExitStack() as restore:
        for name in skip:
            restore.enter_context(replaced(Node, name, do_nothing))
        if callable(getattr(services, "get_node", None)):
            restore.enter_context(replaced(services, "get_node", when_registered(services.get_node)))
        yield


@contextlib.contextmanager
def replaced(owner: Any, name: str, stand_in: Callable[..., Any]) -> Iterator[None]:
    """``owner.name`` is ``stand_in`` within it (nothing changes where ``owner`` has no ``name``)."""
    original = getattr(owner, name, None)
    if original is None:
        yield
        return
    setattr(owner, name, stand_in)
    try:
        yield
    finally:
        setattr(owner, name, original)


def do_nothing(*args: object, **kwargs: object) -> None:
    return None


def when_registered(get_node: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    """Ray's ``get_node(gcs_address, node_id)``, called once the GCS lists that node as alive."""

    def get_node_when_registered(gcs_address: str, node_id: str) -> Any:
        wait_until_registered(gcs_address, node_id)
        return get_node(gcs_address, node_id)

    return get_node_when_registered


def wait_until_registered(gcs_address: str, node_id: str, poll_for_s: float = POLL_FOR_S) -> bool:
    """Poll the GCS until it lists ``node_id`` as alive; False when it did not within ``poll_for_s``
    or could not be asked (Ray's own call that follows then waits, or fails, as it would)."""
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    deadline = time.monotonic() + poll_for_s
    try:
        client = GcsClient(address=gcs_address)
        while time.monotonic() < deadline:
            nodes = client.get_all_node_info(timeout=max(0.1, deadline - time.monotonic()))
            if any(key.hex() == node_id and info.state == GcsNodeInfo.ALIVE for key, info in nodes.items()):
                return True
            time.sleep(POLL_S)
    except Exception:  # noqa: BLE001 - whatever it is, Ray's own call reports it better
        return False
    return False
