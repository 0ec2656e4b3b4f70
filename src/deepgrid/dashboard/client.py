"""``deepgrid status``: a run's snapshot, from its master's dashboard while it serves one.

The recorded snapshot (the status file on the master's machine, or the run record in Redis for
another machine) names the dashboard's URL; the dashboard answers with the same layout, taken
now rather than at the last round's end, plus the ETA and the recent events. When it does not
answer (the run ended, another machine cannot reach a loopback address, no token) the recorded
snapshot is shown as it is.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from deepgrid.state.status import format_status, read_status, status_path

TOKEN_ENV = "DEEPGRID_DASHBOARD_TOKEN"  # the token of a dashboard on another machine
TIMEOUT_S = 2.0
FINISHED = ("done", "failed", "stopped early")


def fetch_json(url: str, token: str | None = None, timeout: float = TIMEOUT_S) -> Any:
    """GET a dashboard's JSON (``url`` whole, e.g. http://127.0.0.1:8265/api/run)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # live_snapshot lets only http(s) URLs through
        return json.loads(response.read().decode("utf-8"))


def dashboard_token(job_name: str, url: str) -> str | None:
    """The token for ``url``: $DEEPGRID_DASHBOARD_TOKEN, else the master's dashboard.json on this machine."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    try:
        found = json.loads(status_path(job_name).with_name("dashboard.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found.get("token") if isinstance(found, dict) and found.get("url") == url else None


def live_snapshot(recorded: dict[str, Any], job_name: str) -> dict[str, Any]:
    """The master's snapshot from its dashboard, or ``recorded`` when there is none to ask."""
    run = recorded.get("run", {})
    url = run.get("dashboard_url")
    if not url or not url.startswith(("http://", "https://")) or run.get("status") in FINISHED:
        return recorded
    try:
        snapshot = fetch_json(url.rstrip("/") + "/api/snapshot", dashboard_token(job_name, url))
    except (OSError, ValueError, urllib.error.URLError):
        return recorded
    return snapshot if isinstance(snapshot, dict) and isinstance(snapshot.get("run"), dict) else recorded


def read_snapshot(job_name: str, state_url: str | None = None) -> dict[str, Any]:
    """What ``deepgrid status`` shows: from Redis with ``state_url``, else the status file, then
    from the dashboard they name if it answers."""
    if state_url:
        from deepgrid.state.snapshot import read_tracker_snapshot

        recorded = read_tracker_snapshot(state_url, job_name)
    else:
        recorded = read_status(status_path(job_name))
    return live_snapshot(recorded, job_name)


def show(snapshot: dict[str, Any], as_json: bool) -> str:
    return json.dumps(snapshot, sort_keys=True) if as_json else format_status(snapshot)


def watch(read: Callable[[], dict[str, Any]], as_json: bool, every_s: float = 1.0,
          out: Any = None) -> dict[str, Any]:
    """Show the snapshot every ``every_s`` until the run ends or Ctrl-C; returns the last one.

    On a terminal the screen is redrawn; otherwise (a pipe, ``--json``) one view follows another.
    """
    out = out or sys.stdout
    redraw = not as_json and out.isatty()
    snapshot: dict[str, Any] = {}
    try:
        while True:
            started = time.monotonic()
            snapshot = read()
            text = show(snapshot, as_json)
            out.write(("\x1b[H\x1b[2J" if redraw else "") + text + "\n" + ("" if redraw or as_json else "\n"))
            out.flush()
            if snapshot.get("run", {}).get("status") in FINISHED:
                return snapshot
            time.sleep(max(0.0, every_s - (time.monotonic() - started)))
    except KeyboardInterrupt:  # the way a user leaves --watch: not an error
        return snapshot
