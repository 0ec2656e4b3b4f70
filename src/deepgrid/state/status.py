"""The status file that ``deepgrid status`` reads while a run is going on.

The in-memory tracker lives inside the master's process, where no other
program can ask it anything; so the master writes the tracker's snapshot to
``$DEEPGRID_HOME/runs/<job_name>/status.json`` after every round. Writes go to
a temporary file renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from deepgrid.errors import ClusterError, ConfigError, invalid

STATUS_FILE = "status.json"


def deepgrid_home(home: str | os.PathLike[str] | None = None) -> Path:
    """``home`` if given, else ``$DEEPGRID_HOME``, else ``~/.deepgrid``."""
    if home is not None:
        return Path(home)
    return Path(os.environ.get("DEEPGRID_HOME") or Path.home() / ".deepgrid")


def status_path(job_name: str, home: str | os.PathLike[str] | None = None) -> Path:
    # The job name becomes a directory name: refuse anything that could leave runs/.
    if not job_name or job_name in (".", "..") or "/" in job_name or "\\" in job_name or "\0" in job_name:
        raise ConfigError(
            invalid(
                "job_name", job_name, "a non-empty name without slashes", "Name the run like 'fmnist-dbn'."
            )
        )
    return deepgrid_home(home) / "runs" / job_name / STATUS_FILE


def write_status(path: Path, snapshot: dict[str, Any]) -> None:
    """Write the snapshot as JSON, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(snapshot, indent=1, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def recorded_runs(runs_dir: Path) -> list[str]:
    """Job names that have a status file under ``runs_dir``."""
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if (p / STATUS_FILE).is_file())


def read_status(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        runs_dir = path.parent.parent
        names = recorded_runs(runs_dir)
        known = f"runs recorded there: {', '.join(names)}" if names else "no runs are recorded there yet"
        raise ConfigError(
            f"No run named {path.parent.name!r} is recorded under {runs_dir} ({known}); "
            "start one with `deepgrid train`, pass the job name of a recorded run, or, for a run whose "
            "master is on another machine, read it from its Redis with --state redis://HOST:6379/0."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClusterError(
            f"Status file {path} is damaged (not valid JSON: {e}); a running master rewrites it after "
            "every round, so try again, or delete it if no run is going on."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("run"), dict):
        raise ClusterError(
            f"Status file {path} is damaged: expected a JSON object with a `run` entry; "
            "delete it if no run is going on."
        )
    return data


# -- text ------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def format_status(snapshot: dict[str, Any], now: float | None = None) -> str:
    """A readable text view of a snapshot: one run line, a worker table, the job counts."""
    now = time.time() if now is None else now
    run = snapshot.get("run", {})
    run_line = "  ".join(
        f"{label} {value}"
        for label, value in (
            ("job", run.get("job_name") or "-"),
            ("status", run.get("status", "-")),
            ("phase", run.get("phase") or "-"),
            ("epoch", run.get("epoch", 0)),
            ("round", run.get("round", 0)),
            ("params", f"v{run.get('param_version', 0)}"),
            ("samples", f"{run.get('samples_run', 0):,}"),
            ("last loss", _loss(run.get("last_loss"))),
            ("elapsed", _duration(run.get("elapsed_s"))),
        )
    )
    lines = [run_line, *_dashboard_lines(snapshot)]
    taken_at = snapshot.get("taken_at")
    if isinstance(taken_at, int | float):
        # An old snapshot means the master stopped writing: say so rather than show it as live.
        lines.append(f"(snapshot taken {_duration(now - taken_at)} ago)")
    lines.append("")

    rows = []
    for wid, w in sorted(snapshot.get("workers", {}).items()):
        job = w.get("job")
        job_text = f"{job['phase']}/{job['epoch']}/{job['index']}" if isinstance(job, dict) else "-"
        if isinstance(job, dict) and job.get("attempt"):
            job_text += f" (attempt {job['attempt'] + 1})"
        since = w.get("seconds_since_heartbeat")
        rows.append(
            [
                wid,
                _host(w.get("info", {})),
                "yes" if w.get("enabled") else "no",
                f"{_duration(since)} ago" if since is not None else "never",
                job_text,
                str(w.get("jobs_done", 0)),
                f"{w.get('samples', 0):,}",
                str(w.get("failures", 0)),
            ]
        )
    if rows:
        headers = ["worker", "host", "enabled", "heartbeat", "job", "jobs done", "samples", "failures"]
        lines.extend(_table(headers, rows))
    else:
        lines.append("no workers registered")
    lines.append("")
    lines.append(
        f"jobs: {snapshot.get('pending_jobs', 0)} pending, {snapshot.get('in_flight_jobs', 0)} in flight"
    )
    events = snapshot.get("events")  # from the master's dashboard: the last few
    if isinstance(events, list) and events:
        lines.extend(["", "recent events:"])
        for e in events[-5:]:
            when = time.strftime("%H:%M:%S", time.localtime(e.get("time", 0)))
            lines.append(f"  {when}  {e.get('kind', '')}: {e.get('message', '')}")
    return "\n".join(lines)


def _dashboard_lines(snapshot: dict[str, Any]) -> list[str]:
    """The dashboard's address, and the ETA when the snapshot came from the dashboard itself."""
    lines = []
    view = snapshot.get("dashboard")
    if isinstance(view, dict) and view.get("eta_s") is not None:
        rate = view.get("samples_per_s")
        lines.append(f"ETA {_duration(view['eta_s'])} ({view.get('jobs_done', 0)}/{view.get('jobs_total', 0)} jobs"
                     + (f", {rate:,.0f} samples/s)" if isinstance(rate, int | float) else ")"))
    url = snapshot.get("run", {}).get("dashboard_url")
    if url:
        lines.append(f"dashboard {url}")
    return lines


def _host(info: dict[str, Any]) -> str:
    """'name (address)': machines behind one name (containers, namespaces) differ by address."""
    name, address = info.get("host"), info.get("ip")
    if name and address and name != address:
        return f"{name} ({address})"
    return str(name or address or "-")
