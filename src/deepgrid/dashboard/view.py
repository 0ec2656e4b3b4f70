"""What the dashboard shows, read from a running master without getting in its way.

``RunView`` is a master callback: at each round's end it appends one small entry (round, loss,
samples, seconds) and adds each job to its worker's totals, under its own lock: a few dicts per
round. Everything else is read when a page or ``deepgrid status`` asks, from the dashboard's
thread: the runner's counters (plain ints, read as they are), the event log (it has a lock), and
the state tracker (thread-safe by contract), whose snapshot is kept for ``CACHE_S`` so that any
number of open pages costs the tracker at most two reads a second. A master with no page open
pays only the per-round entry.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deepgrid.distributed.locality import epoch_size
from deepgrid.errors import DeepgridError

if TYPE_CHECKING:
    from deepgrid.distributed.callbacks import RoundReport
    from deepgrid.distributed.runner import ActorNetworkRunner

KEEP_ROUNDS = 20_000  # round entries kept for the charts (about 3 MB)
CACHE_S = 0.5  # how long a tracker read serves every request
RECENT_ROUNDS = 20  # rounds the ETA and the current samples/s are measured over


class RunView:
    """The master's state as JSON-friendly dicts, one per API endpoint."""

    def __init__(self, runner: ActorNetworkRunner) -> None:
        self.runner = runner
        conf, model = runner.conf, runner.model
        self.phases = [{"name": p.name, "epochs": p.epochs, "supervised": p.supervised}
                       for p in model.phases(conf.epochs)]
        self.batches_per_epoch, self.jobs_per_epoch = epoch_size(runner.shards, runner.train_data, conf.batch_size,
                                                                 conf.averaging_frequency)
        self.started_at = time.time()
        self.url = ""  # set when the server listens
        self._lock = threading.Lock()
        self._rounds: deque[dict[str, Any]] = deque(maxlen=KEEP_ROUNDS)
        self._validation: list[dict[str, Any]] = []
        self._per_worker: dict[str, list[float]] = {}  # id -> [samples, seconds of its jobs]
        self._seen: dict[str, dict[str, Any]] = {}  # every worker ever listed: dropped ones stay
        self._cache: dict[str, tuple[float, Any]] = {}

    # -- written by the training thread ----------------------------------------------------
    def on_round_end(self, master: ActorNetworkRunner, report: RoundReport) -> None:
        seconds = max(report.seconds, 1e-9)
        entry = {"round": report.round, "phase": report.phase, "epoch": master.progress.epoch,
                 "loss": report.loss, "samples": report.n_samples, "seconds": round(report.seconds, 4),
                 "samples_per_s": round(report.n_samples / seconds, 1), "jobs": len(report.results),
                 "time": round(time.time(), 3)}
        with self._lock:
            self._rounds.append(entry)
            for r in report.results:
                totals = self._per_worker.setdefault(r.worker_id, [0.0, 0.0])
                totals[0] += r.n_samples
                totals[1] += r.seconds

    def record_validation(self, phase: str, epoch: int, loss: float) -> int:
        """A validation's loss; returns its index, for ``set_accuracy`` when that is known."""
        with self._lock:
            self._validation.append({"phase": phase, "epoch": epoch, "round": self.runner.progress.round,
                                     "loss": loss, "accuracy": None, "time": round(time.time(), 3)})
            return len(self._validation) - 1

    def set_accuracy(self, index: int, accuracy: float | None) -> None:
        with self._lock:
            self._validation[index]["accuracy"] = accuracy

    # -- read by the dashboard's thread ------------------------------------------------------
    def tracker_snapshot(self) -> dict[str, Any] | None:
        """The tracker's snapshot, at most ``CACHE_S`` old; the last one while the tracker is away."""
        def read() -> dict[str, Any] | None:
            tracker = self.runner.tracker
            if tracker is None or getattr(tracker, "unreachable", False):
                return None  # shut down, or a Redis outage the tracker gave up on: keep the last
            return tracker.snapshot()
        return self._cached("snapshot", read)

    def _cached(self, key: str, read: Callable[[], Any]) -> Any:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        try:
            value = read()
        except (DeepgridError, OSError, RuntimeError, ValueError):
            value = None  # the tracker failed to answer: the page shows the last state it had
        if value is None:
            return hit[1] if hit is not None else None
        self._cache[key] = (now, value)
        return value

    def run(self) -> dict[str, Any]:
        runner, progress = self.runner, self.runner.progress
        conf, snap = runner.conf, self.tracker_snapshot() or {}
        record = snap.get("run", {})
        with self._lock:
            recent = list(self._rounds)[-RECENT_ROUNDS:]
        jobs_total = sum(p["epochs"] for p in self.phases) * self.jobs_per_epoch
        epochs_before = sum(p["epochs"] for p in self.phases[:progress.phase_index]) + progress.epoch
        jobs_done = min(jobs_total, epochs_before * self.jobs_per_epoch + len(progress.done_jobs))
        status = record.get("status", "starting")
        finished = status in ("done", "failed", "stopped early")
        rounds_left = eta = None
        # The pace of the recent rounds end to end (validation, checkpoints and callbacks included),
        # from their clock times; a single round's own time until there are two.
        if len(recent) > 1:
            seconds = recent[-1]["time"] - recent[0]["time"]
            samples = sum(e["samples"] for e in recent[1:])
            round_s = seconds / (len(recent) - 1)
        else:
            seconds = sum(e["seconds"] for e in recent)
            samples = sum(e["samples"] for e in recent)
            round_s = seconds
        if recent and not finished:
            per_round = statistics.fmean(e["jobs"] for e in recent)
            rounds_left = math.ceil((jobs_total - jobs_done) / max(per_round, 1e-9))
            eta = round(rounds_left * round_s, 1)
        elif finished:
            rounds_left, eta = 0, 0.0
        phase = self.phases[progress.phase_index] if progress.phase_index < len(self.phases) else {}
        return {
            "job_name": conf.job_name, "model": conf.model, "strategy": conf.strategy, "status": status,
            "phase": progress.phase or phase.get("name", ""), "phase_index": progress.phase_index,
            "phases": self.phases, "epoch": progress.epoch, "epochs": phase.get("epochs", 0),
            "round": progress.round, "param_version": self._param_version(),
            "n_params": runner.model.n_params, "examples": len(runner.train_data), "workers": len(runner.workers),
            "samples_trained": runner.samples_trained, "samples_per_s": round(samples / seconds, 1) if seconds else None,
            "jobs_done": jobs_done, "jobs_total": jobs_total, "rounds_left": rounds_left, "eta_s": eta,
            "elapsed_s": record.get("elapsed_s"), "last_loss": record.get("last_loss"),
            "best_validation_loss": progress.best_loss, "dashboard_started_at": self.started_at,
            "url": self.url, "now": time.time(),
        }

    def _param_version(self) -> int:
        """Rounds for the strategies that work in rounds; results applied so far for those without."""
        strategy = self.runner.strategy
        return int(strategy.version) if strategy is not None and not strategy.barrier else self.runner.progress.round

    def phase(self) -> dict[str, Any]:
        run = self.run()
        return {k: run[k] for k in ("phase", "phase_index", "phases", "epoch", "epochs", "round", "status")}

    def workers(self) -> dict[str, Any]:
        snap = self.tracker_snapshot() or {}
        handles = dict(self.runner.workers)  # one C-level copy: the training thread may add or drop
        with self._lock:
            speed = {wid: (s / t if t else None) for wid, (s, t) in self._per_worker.items()}
        rows = {}
        for wid, w in snap.get("workers", {}).items():
            handle, job = handles.get(wid), w.get("job")
            state = "overrun" if handle is not None and handle.overrun is not None else (
                "enabled" if w.get("enabled") else "disabled")
            info = w.get("info", {})
            rows[wid] = {"id": wid, "host": info.get("host") or info.get("ip") or "-", "ip": info.get("ip"),
                         "state": state, "heartbeat_age_s": w.get("seconds_since_heartbeat"),
                         "job": f"{job['phase']}/{job['epoch']}/{job['index']}" if job else None,
                         "attempt": job.get("attempt", 0) if job else None, "jobs_done": w.get("jobs_done", 0),
                         "samples": w.get("samples", 0), "failures": w.get("failures", 0),
                         "last_loss": w.get("last_loss"), "samples_per_s": _round(speed.get(wid))}
        if snap:  # who was listed before and is gone now was dropped (the events say why)
            with self._lock:
                for wid, row in self._seen.items():
                    if wid not in rows:
                        rows[wid] = {**row, "state": "dropped", "job": None, "attempt": None,
                                     "samples_per_s": _round(speed.get(wid))}
                self._seen.update({wid: row for wid, row in rows.items() if row["state"] != "dropped"})
        live = sum(r["state"] != "dropped" for r in rows.values())
        return {"workers": [rows[wid] for wid in sorted(rows)], "live": live}

    def jobs(self) -> dict[str, Any]:
        snap = self.tracker_snapshot() or {}
        in_flight = [{"worker_id": wid, "job": f"{j['phase']}/{j['epoch']}/{j['index']}", "attempt": j.get("attempt", 0),
                      "batches": j["stop"] - j["start"]}
                     for wid, w in sorted(snap.get("workers", {}).items()) if (j := w.get("job"))]
        return {"pending": snap.get("pending_jobs", 0), "in_flight": in_flight,
                "done_this_epoch": len(self.runner.progress.done_jobs), "jobs_per_epoch": self.jobs_per_epoch}

    def minibatch(self) -> dict[str, Any]:
        conf, progress = self.runner.conf, self.runner.progress

        def ledger() -> dict[int, int] | None:
            tracker = self.runner.tracker
            if tracker is None or getattr(tracker, "unreachable", False) or not progress.phase:
                return None
            return tracker.trained_batches(progress.phase, progress.epoch)
        counts = self._cached(f"ledger:{progress.phase}:{progress.epoch}", ledger) or {}
        return {"batch_size": conf.batch_size, "averaging_frequency": conf.averaging_frequency,
                "batches_per_epoch": self.batches_per_epoch, "jobs_per_epoch": self.jobs_per_epoch,
                "phase": progress.phase, "epoch": progress.epoch,
                "ledger": {"trained": sum(1 for c in counts.values() if c > 0),
                           "repeated": sum(1 for c in counts.values() if c > 1), "total": self.batches_per_epoch}}

    def metrics(self, since: int = -1) -> dict[str, Any]:
        """Round entries after round ``since`` (a page asks only for what it has not drawn yet)."""
        with self._lock:
            rounds = [e for e in self._rounds if e["round"] > since] if since >= 0 else list(self._rounds)
            validation = list(self._validation)
        return {"rounds": rounds, "validation": validation, "last_round": rounds[-1]["round"] if rounds else since}

    def events(self, since: int = 0, limit: int = 200) -> dict[str, Any]:
        """Events numbered from 0 in the order they happened; those numbered ``since`` and after.
        ``count`` is the number to ask from next time."""
        count, events = self.runner.events.since(since, limit)
        return {"count": count, "events": [e.to_dict() for e in events]}

    def page(self, since: int = -1, events_since: int = 0) -> dict[str, Any]:
        """All a page draws, in one answer: one request a second instead of six (each costs the
        master's process a request's handling, and a browser a round trip)."""
        return {"run": self.run(), "workers": self.workers(), "jobs": self.jobs(), "minibatch": self.minibatch(),
                "metrics": self.metrics(since), "events": self.events(events_since)}

    def snapshot(self) -> dict[str, Any]:
        """The tracker's snapshot (the status file's layout, what ``deepgrid status`` prints) with
        the dashboard's view of the run and the recent events added."""
        snap = dict(self.tracker_snapshot() or {"taken_at": time.time(), "run": {}, "workers": {},
                                                 "pending_jobs": 0, "in_flight_jobs": 0, "metrics": []})
        snap["dashboard"] = self.run()
        snap["events"] = self.events(limit=20)["events"]
        return snap


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
