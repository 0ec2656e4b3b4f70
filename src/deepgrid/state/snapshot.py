"""``deepgrid status --state redis://...``: a run's state read straight from its shared tracker."""

from __future__ import annotations

from typing import Any

from deepgrid.errors import ConfigError


def read_tracker_snapshot(url: str, job_name: str) -> dict[str, Any]:
    """A run's snapshot straight from its (Redis) state tracker, opened as it is, never cleared."""
    from deepgrid.state.base import tracker_from_url
    from deepgrid.state.memory import MemoryStateTracker

    tracker = tracker_from_url(url, job_name=job_name)
    try:
        if isinstance(tracker, MemoryStateTracker):
            raise ConfigError("--state memory:// names no shared state: an in-memory run lives in its master "
                              "process. Drop --state to read its status file, or pass the redis:// URL.")
        snapshot = tracker.snapshot()
    finally:
        tracker.close()
    if not snapshot["run"].get("begun") and not snapshot["workers"]:
        raise ConfigError(f"No run named {job_name!r} is recorded on that Redis; pass the run's job name "
                          "with --job (Conf.job_name).")
    return snapshot
