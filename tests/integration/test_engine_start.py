"""A local engine starts without Ray's API server (its dashboard head), which deepgrid never uses and
``ray.init`` waits for (0.6 s of each run's start-up); DEEPGRID_RAY_API_SERVER=1 keeps it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deepgrid.distributed import engine
from deepgrid.errors import ConfigError


def started_processes() -> set[str]:
    """The kinds of process the driver's own Ray node started (gcs_server, raylet, dashboard, ...)."""
    import ray

    return set(ray._private.worker._global_node.all_processes)


def dashboard_head_running() -> bool:
    """Whether a process runs Ray's dashboard head (``ray/dashboard/dashboard.py``) for the driver's
    own Ray session (another Ray's, from a test before, say, does not count)."""
    import ray

    session = f"--session-dir={ray._private.worker._global_node.get_session_dir_path()}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"/ray/dashboard/dashboard.py") for part in command) and session in command:
            return True
    return False


@pytest.mark.parametrize("keep", [False, True])
def test_local_engine_and_rays_api_server(keep: bool, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    import ray
    from ray._private.node import Node

    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path))
    if keep:
        monkeypatch.setenv("DEEPGRID_RAY_API_SERVER", "1")
    else:
        monkeypatch.delenv("DEEPGRID_RAY_API_SERVER", raising=False)
    method = Node.start_api_server
    try:
        engine.start_local(num_cpus=1)
        assert ray.get(ray.remote(lambda: 42).remote()) == 42  # the engine works without it
        processes = started_processes()
        assert {"gcs_server", "raylet"} <= processes
        assert ("dashboard" in processes) is keep
        assert dashboard_head_running() is keep
    finally:
        engine.shutdown()
    assert Node.start_api_server is method  # Ray's own method is back: other Ray users start it as usual


def test_a_setting_that_is_neither_0_nor_1_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("DEEPGRID_RAY_API_SERVER", "yes")
    with pytest.raises(ConfigError, match=r"DEEPGRID_RAY_API_SERVER='yes' is not a setting: expected 1 .* or 0") as e:
        engine.start_local(num_cpus=1)
    assert "\n" not in str(e.value)
    assert not ray.is_initialized()  # refused before anything started
