"""The in-memory state tracker: the default for a run in one process.

One lock guards every method, so claim/complete/release are atomic against
each other; the master's threads and a status writer can share one tracker.
Everything handed out is a copy, so callers never mutate the shared state.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from deepgrid.state.base import (
    SNAPSHOT_METRICS,
    Job,
    RunState,
    WorkerState,
    build_snapshot,
    check_json,
    check_run_fields,
)


class MemoryStateTracker:
    """A :class:`~deepgrid.state.base.StateTracker` in plain dicts and a deque."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: dict[str, WorkerState] = {}
        self._queue: deque[Job] = deque()
        self._ledger: dict[tuple[str, int], dict[int, int]] = {}
        self._run = RunState()
        self._metrics: list[dict[str, Any]] = []

    # -- workers -----------------------------------------------------------
    def add_worker(self, worker_id: str, info: dict[str, Any]) -> None:
        check_json(f"Worker {worker_id!r}'s info", info)
        info = copy.deepcopy(info)
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None:
                self._workers[worker_id] = WorkerState(worker_id, info, True, time.time())
            else:  # a worker that comes back keeps its history
                worker.info, worker.enabled, worker.last_heartbeat = info, True, time.time()

    def remove_worker(self, worker_id: str) -> Job | None:
        with self._lock:
            worker = self._workers.pop(worker_id, None)
            if worker is None or worker.job is None:
                return None
            # Its job must not vanish with it.
            job = worker.job.retried()
            self._queue.appendleft(job)
            return job

    def workers(self) -> dict[str, WorkerState]:
        with self._lock:
            return {wid: copy.deepcopy(w) for wid, w in self._workers.items()}

    def set_enabled(self, worker_id: str, enabled: bool) -> bool:
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None:
                return False
            worker.enabled = bool(enabled)
            return True

    def heartbeat(self, worker_id: str, now: float | None = None) -> bool:
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None:
                return False
            worker.last_heartbeat = time.time() if now is None else now
            return True

    def stale_workers(self, timeout_s: float, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        with self._lock:
            return sorted(
                wid for wid, w in self._workers.items() if w.enabled and now - w.last_heartbeat > timeout_s
            )

    # -- jobs --------------------------------------------------------------
    def enqueue_jobs(self, jobs: Iterable[Job]) -> None:
        jobs = list(jobs)
        with self._lock:
            self._queue.extend(jobs)

    def claim_job(self, worker_id: str, shards: Iterable[int] | None = None) -> Job | None:
        wanted = None if shards is None else set(shards)
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None or not worker.enabled:
                return None
            if worker.job is not None:
                return worker.job
            if not self._queue:
                return None
            if wanted is None:
                worker.job = self._queue.popleft()
                return worker.job
            for position, job in enumerate(self._queue):
                if job.shard is not None and job.shard in wanted:
                    del self._queue[position]
                    worker.job = job
                    return job
            return None

    def complete_job(self, worker_id: str, job_id: str, n_samples: int, loss: float | None) -> bool:
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None or worker.job is None or worker.job.id != job_id:
                return False
            job, worker.job = worker.job, None
            counts = self._ledger.setdefault((job.phase, job.epoch), {})
            for position in range(job.start, job.stop):
                counts[position] = counts.get(position, 0) + 1
            worker.jobs_done += 1
            worker.samples += n_samples
            worker.last_loss = loss
            worker.last_heartbeat = time.time()  # a result is proof of life
            self._run.batches_run += job.n_batches
            self._run.samples_run += n_samples
            return True

    def release_job(self, worker_id: str) -> Job | None:
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None or worker.job is None:
                return None
            job, worker.job = worker.job.retried(), None
            # The front, so the round that lost it gets it back first.
            self._queue.appendleft(job)
            return job

    def pending_jobs(self) -> int:
        with self._lock:
            return len(self._queue)

    def in_flight(self) -> dict[str, Job]:
        with self._lock:
            return {wid: w.job for wid, w in self._workers.items() if w.job is not None}

    def clear_jobs(self) -> None:
        with self._lock:
            self._queue.clear()
            for worker in self._workers.values():
                worker.job = None

    # -- ledger ------------------------------------------------------------
    def trained_batches(self, phase: str, epoch: int) -> dict[int, int]:
        with self._lock:
            return dict(self._ledger.get((phase, epoch), {}))

    # -- run ---------------------------------------------------------------
    def update_run(self, **fields: Any) -> RunState:
        check_run_fields(fields)
        fields.setdefault("updated_at", time.time())
        with self._lock:
            self._run = dataclasses.replace(self._run, **fields)
            return dataclasses.replace(self._run)

    def run_state(self) -> RunState:
        with self._lock:
            return dataclasses.replace(self._run)

    def record_metrics(self, entry: dict[str, Any]) -> None:
        check_json("A metrics entry", entry)
        entry = copy.deepcopy(entry)
        with self._lock:
            self._metrics.append(entry)

    def metrics(self, last: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            chosen = self._metrics if last is None else self._metrics[-last:] if last > 0 else []
            return copy.deepcopy(chosen)

    # -- whole -------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        with self._lock:
            run = dataclasses.replace(self._run)
            workers = {wid: copy.deepcopy(w) for wid, w in self._workers.items()}
            pending = len(self._queue)
            recent = copy.deepcopy(self._metrics[-SNAPSHOT_METRICS:])
        return build_snapshot(run, workers, pending, recent, now)

    def close(self) -> None:
        # Nothing to release: the state lives and dies with this process.
        pass
