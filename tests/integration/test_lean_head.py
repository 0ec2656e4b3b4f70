"""A local engine starts a lean Ray head (``distributed/lean_head.py``): without Ray's API server and
autoscaler monitor, which deepgrid never uses (DEEPGRID_RAY_TOOLS=1 keeps both), and asking the GCS
for its raylet every 20 ms instead of Ray's one-second wait."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deepgrid.distributed import engine
from deepgrid.distributed.lean_head import wait_until_registered
from deepgrid.errors import ConfigError


def started_processes() -> set[str]:
    """The kinds of process the driver's own Ray node started (gcs_server, raylet, monitor, ...)."""
    import ray

    return set(ray._private.worker._global_node.all_processes)


def running_in_this_session(script: str) -> bool:
    """Whether a process runs Ray's ``script`` (``dashboard/dashboard.py``, say) for the driver's own
    Ray session (another Ray's, from a test before, does not count)."""
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(f"/ray/{script}".encode()) for part in command) and \
                any(session.encode() in part for part in command):
            return True
    return False


@pytest.mark.parametrize("keep", [False, True])
def test_local_engine_with_and_without_rays_tools(keep: bool, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import ray
    from ray._private import services
    from ray._private.node import Node

    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path))
    if keep:
        monkeypatch.setenv("DEEPGRID_RAY_TOOLS", "1")
    else:
        monkeypatch.delenv("DEEPGRID_RAY_TOOLS", raising=False)
    originals = Node.start_api_server, Node.start_monitor, services.get_node
    try:
        engine.start_local(num_cpus=1)
        assert ray.get(ray.remote(lambda: 42).remote()) == 42  # the engine works without them
        processes = started_processes()
        assert {"gcs_server", "raylet", "log_monitor"} <= processes  # worker logs still reach the driver
        assert ("dashboard" in processes) is keep
        assert ("monitor" in processes) is keep
        assert running_in_this_session("dashboard/dashboard.py") is keep
        assert running_in_this_session("autoscaler/_private/monitor.py") is keep
    finally:
        engine.shutdown()
    # Ray's own methods are back: other Ray users in this process start Ray as usual.
    assert (Node.start_api_server, Node.start_monitor, services.get_node) == originals


def test_the_wait_for_the_raylet_sees_this_node_and_no_other(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    import ray

    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path))
    try:
        engine.start_local(num_cpus=1)
        node = ray._private.worker._global_node
        assert wait_until_registered(node.gcs_address, node.node_id)
        assert not wait_until_registered(node.gcs_address, "ab" * 28, poll_for_s=0.3)  # no such node
    finally:
        engine.shutdown()


def test_a_setting_that_is_neither_0_nor_1_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("DEEPGRID_RAY_TOOLS", "yes")
    with pytest.raises(ConfigError, match=r"DEEPGRID_RAY_TOOLS='yes' is not a setting: expected 1 .* or 0") as e:
        engine.start_local(num_cpus=1)
    assert "\n" not in str(e.value)
    assert not ray.is_initialized()  # refused before anything started
