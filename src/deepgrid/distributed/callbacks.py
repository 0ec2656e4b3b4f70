"""What happens after each round besides training: each side effect is a callback of its own.

The master calls every callback's ``on_round_end`` after a round, in order: the checkpointer
first (the previous round's checkpoint is on disk before the tracker shows a newer round), then
the tracker's run record and metrics, the history of jobs, the status file. The dashboard will
be one more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from deepgrid.checkpoint import CheckpointWriter
from deepgrid.config.conf import Conf
from deepgrid.distributed.events import EventLog
from deepgrid.distributed.strategies.base import JobResult
from deepgrid.state.base import StateTracker
from deepgrid.state.status import status_path, write_status
from deepgrid.train.schedule import RunProgress

if TYPE_CHECKING:
    from deepgrid.distributed.runner import ActorNetworkRunner

STATUS_EVERY_S = 0.5  # how often the status file is rewritten


@dataclass(frozen=True)
class RoundReport:
    """One round, as the callbacks see it."""

    round: int
    phase: str
    results: list[JobResult]  # in the order they came back
    seconds: float

    @property
    def n_samples(self) -> int:
        return sum(r.n_samples for r in self.results)

    @property
    def loss(self) -> float | None:
        n = self.n_samples
        return sum(r.loss * r.n_samples for r in self.results) / n if n else None


class Callback(Protocol):
    def on_round_end(self, master: ActorNetworkRunner, report: RoundReport) -> None: ...


class Checkpointer:
    """Checkpoints of whole rounds, written in the background while the next round trains.

    ``commit`` records the state at a round boundary; a failure mid-round checkpoints the last
    commit, never a half-averaged round. Every ``every`` rounds the commit is saved; before the
    tracker moves on, the previous save is waited for, so a killed master loses at most one round.
    """

    def __init__(self, writer: CheckpointWriter, conf_dict: dict[str, Any], every: int,
                 events: EventLog | None = None) -> None:
        self.writer, self.conf_dict, self.every, self.events = writer, conf_dict, every, events
        self._reported: Path | None = None
        self.committed: tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]] | None = None
        self.wait_s = 0.0  # time rounds spent waiting for the background writer

    def commit(self, params: np.ndarray, progress: RunProgress, state: dict[str, np.ndarray]) -> None:
        # The parameters are copied (about 0.1 ms for 2 MB): the next round replaces them while
        # the writer thread may still be saving these.
        meta = {"conf": self.conf_dict, **progress.to_meta(), "status": "training"}
        if meta["best_loss"] is not None and math.isinf(meta["best_loss"]):
            meta["best_loss"] = None  # JSON has no infinity
        self.committed = (np.array(params, dtype=np.float32, copy=True), meta, state)

    @property
    def committed_round(self) -> int | None:
        return None if self.committed is None else int(self.committed[1]["round"])

    def settle(self) -> None:
        """Wait for the checkpoint written while this round trained (almost always on disk already)."""
        started = time.perf_counter()
        written = self.writer.flush()
        self.wait_s += time.perf_counter() - started
        if self.events is not None and written is not None and written != self._reported:
            self._reported = written
            where = f"{written}"
            if written in self.writer.uploaded:  # checkpoint_dir: s3://...
                url, seconds = self.writer.uploaded.pop(written)
                where = f"{url} (uploaded in {seconds:.2f} s)"
            self.events(f"checkpoint written: {where}", "checkpoint", quiet=True)  # every round: not printed

    def save(self, status: str | None = None, *, wait: bool = True) -> Path | None:
        """Save the last commit (never the tracker's view: it may be unreachable). ``wait`` blocks
        until it is on disk (the final and the failure checkpoints) and returns its path."""
        if self.committed is None:
            return None
        params, meta, tensors = self.committed
        self.writer.submit(params, meta if status is None else {**meta, "status": status}, tensors)
        return self.writer.flush() if wait else None

    def on_round_end(self, master: ActorNetworkRunner, report: RoundReport) -> None:
        self.settle()
        self.commit(master.params, master.progress, master.strategy.state_dict())
        if report.round % self.every == 0:
            self.save(wait=False)

    def close(self) -> None:
        self.writer.close()  # whatever is queued gets written; errors were raised to train() already


class TrackerRecorder:
    """The round in the tracker's run record, and a line of metrics per round."""

    def __init__(self, tracker: StateTracker) -> None:
        self.tracker = tracker

    def start_run(self, conf: Conf, resumed: RunProgress | None, say: Callable[[str], None]) -> None:
        """Record the run's start; ``resumed``: where the checkpoint the run resumes from stood.

        Resuming adopts what the previous master left in the tracker (the ledger of the epoch
        under way, the metrics) but drops its workers: they lived in its engine (a local Ray dies
        with the master, and `deepgrid worker` processes lose the head they joined), so their
        entries would show dead workers as live. Workers of this run register afresh.
        """
        tracker = self.tracker
        fields: dict[str, Any] = dict(job_name=conf.job_name, status="starting", batch_size=conf.batch_size,
                                      patience=conf.patience, min_improvement=conf.min_improvement, begun=True,
                                      done=False)
        if resumed is None:
            tracker.update_run(**fields, started_at=time.time())
            return
        before = tracker.run_state()
        stale = sorted(tracker.workers())
        for worker_id in stale:
            tracker.remove_worker(worker_id)
        if stale:
            say(f"removed {len(stale)} worker(s) of the previous master from the state tracker: {', '.join(stale)}")
        if before.round > resumed.round:
            say(f"the previous master had reached round {before.round}; "
                f"{before.round - resumed.round} round(s) after the checkpoint are trained again")
        fields.update(round=resumed.round, param_version=resumed.round, phase=resumed.phase, epoch=resumed.epoch)
        if not before.started_at:
            fields["started_at"] = time.time()
        tracker.update_run(**fields)

    def on_round_end(self, master: ActorNetworkRunner, report: RoundReport) -> None:
        self.tracker.update_run(round=report.round, param_version=report.round, last_loss=report.loss)
        metrics = {"round": report.round, "phase": report.phase, "loss": report.loss, "samples": report.n_samples,
                   "workers": len(report.results), "seconds": round(report.seconds, 4)}
        # A strategy may add its own figures per round (`sharing`: the bytes its workers sent).
        metrics.update(getattr(master.strategy, "round_metrics", {}))
        self.tracker.record_metrics(metrics)


class History:
    """One entry per job trained: round, worker, job, samples, loss (kept for reports)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def on_round_end(self, master: ActorNetworkRunner, report: RoundReport) -> None:
        for r in report.results:
            self.entries.append({"round": report.round, "worker_id": r.worker_id, "job_id": r.job.id,
                                 "n_samples": r.n_samples, "loss": r.loss, "seconds": r.seconds})

    def by_host(self, hosts: dict[str, str]) -> dict[str, int]:
        """Jobs per machine, given each worker's machine."""
        counts: dict[str, int] = {}
        for entry in self.entries:
            host = hosts.get(entry["worker_id"], "?")
            counts[host] = counts.get(host, 0) + 1
        return counts


class StatusFile:
    """The run's status file (what `deepgrid status` reads without Redis), at most every 0.5 s."""

    def __init__(self, tracker: StateTracker, job_name: str) -> None:
        self.tracker, self.path = tracker, status_path(job_name)
        self._last = 0.0

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < STATUS_EVERY_S:
            return
        self._last = now
        write_status(self.path, self.tracker.snapshot())

    def on_round_end(self, master: ActorNetworkRunner, report: RoundReport) -> None:
        self.write()
