"""The cluster's shared state: its data types and the ``StateTracker`` protocol.

In the seed, Hazelcast held this (``BaseHazelCastStateTracker`` and maps such
as ``workerEnabled``): the workers, the batch size, the jobs tossed to workers.
Here a tracker holds the same things behind one small protocol, so the master
and the workers never care whether it lives in memory or on a Redis server.

Everything a tracker stores is JSON-friendly: the Redis tracker keeps it as
JSON text, and the master writes ``snapshot()`` to a status file.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from deepgrid.config.secrets import mask_url  # masked as a Conf masks it; state.redis* import it here
from deepgrid.errors import ClusterError, ConfigError, invalid

# How many metrics entries a snapshot carries: enough for a status page's
# recent trend, small enough to rewrite the status file after every round.
SNAPSHOT_METRICS = 20


@dataclass(frozen=True)
class Job:
    """A slice of one epoch's fixed batch order, handed to one worker.

    ``start``/``stop`` are positions in that order (stop exclusive), so a job
    names its mini-batches without carrying them; ``attempt`` counts how many
    times the job was handed back after a failure. ``shard``: the shard file all
    its batches come from, when the epoch is shard-blocked (deepgrid.data.shards).
    """

    phase: str
    epoch: int
    index: int
    start: int
    stop: int
    attempt: int = 0
    shard: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ClusterError(
                f"Job {self.id} covers batches [{self.start}, {self.stop}); expected 0 <= start < stop. "
                "Build jobs from a non-empty range of batch positions."
            )

    @property
    def id(self) -> str:
        # The attempt is left out on purpose: a re-queued job is the same job.
        return f"{self.phase}/{self.epoch}/{self.index}"

    @property
    def n_batches(self) -> int:
        return self.stop - self.start

    def retried(self) -> Job:
        """The same job, one attempt later (what goes back on the queue after a failure)."""
        return dataclasses.replace(self, attempt=self.attempt + 1)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.shard is None:  # jobs of unsharded epochs are stored exactly as before shards existed
            del data["shard"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Job:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict) or not {"phase", "epoch", "index", "start", "stop"} <= data.keys():
            raise ClusterError(
                f"A stored job is damaged: expected a mapping with keys {names}; got {data!r}. "
                "Clear the tracker's jobs (clear_jobs) and start the epoch again."
            )
        return cls(**{k: data[k] for k in names if k in data})


@dataclass
class WorkerState:
    """One worker as the cluster sees it (the seed's workerEnabled entry and more)."""

    worker_id: str
    info: dict[str, Any] = field(default_factory=dict)  # host, pid, algorithm, device...
    enabled: bool = True
    last_heartbeat: float = 0.0
    job: Job | None = None
    jobs_done: int = 0
    samples: int = 0
    failures: int = 0
    last_loss: float | None = None  # loss of its last completed job: a quick per-worker health sign

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["job"] = self.job.to_dict() if self.job else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerState:
        data = dict(data)
        data["job"] = Job.from_dict(data["job"]) if data.get("job") else None
        return cls(**data)


RUN_STATUSES = ("starting", "training", "done", "failed", "stopped early")


@dataclass
class RunState:
    """Where the run stands: what the master would need to explain it or resume it."""

    job_name: str = ""
    phase: str = ""
    epoch: int = 0
    round: int = 0
    param_version: int = 0
    batch_size: int = 0
    batches_run: int = 0
    samples_run: int = 0
    begun: bool = False
    done: bool = False
    best_loss: float | None = None
    bad_checks: int = 0
    patience: int = 0
    min_improvement: float = 0.0
    started_at: float = 0.0  # 0.0: not started yet
    updated_at: float = 0.0
    last_loss: float | None = None
    status: str = "starting"
    dashboard_url: str = ""  # the master's live page (deepgrid.dashboard) while it serves one

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunState))


def check_run_fields(fields: dict[str, Any]) -> None:
    """Reject unknown RunState fields and statuses (shared by every tracker)."""
    unknown = sorted(set(fields) - RUN_FIELDS)
    if unknown:
        raise ClusterError(
            f"RunState has no field(s) {unknown}; expected some of {sorted(RUN_FIELDS)}. Fix the update_run call."
        )
    if "status" in fields and fields["status"] not in RUN_STATUSES:
        raise ClusterError(
            f"Run status {fields['status']!r} is not known; expected one of {list(RUN_STATUSES)}."
        )


def check_json(what: str, value: Any) -> None:
    """Refuse values the Redis tracker (and the status file) could not store as JSON."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise ClusterError(
            f"{what} must be JSON-friendly (str, numbers, bools, None, lists, dicts); {e}. "
            "Convert paths, arrays and objects to plain values first."
        ) from None


@runtime_checkable
class StateTracker(Protocol):
    """The cluster's shared state. Every method is synchronous and thread-safe.

    Methods on a worker the tracker does not know answer False/None rather than
    raise: a late call from a worker that was just removed is a normal race.
    """

    # -- workers -----------------------------------------------------------
    def add_worker(self, worker_id: str, info: dict[str, Any]) -> None:
        """Register (or re-register) a worker: enabled, heartbeat now; its counters are kept."""

    def remove_worker(self, worker_id: str) -> Job | None:
        """Forget a worker. A job it still held goes back to the front of the queue (attempt+1) and is returned."""

    def workers(self) -> dict[str, WorkerState]:
        """A copy of every worker's state, by id."""

    def set_enabled(self, worker_id: str, enabled: bool) -> bool:
        """Enable or disable a worker (a disabled one gets no new jobs). False if unknown."""

    def heartbeat(self, worker_id: str, now: float | None = None) -> bool:
        """Record that the worker is alive. False if unknown (it should register again)."""

    def stale_workers(self, timeout_s: float, now: float | None = None) -> list[str]:
        """Enabled workers whose last heartbeat is older than ``timeout_s``, sorted."""

    # -- jobs --------------------------------------------------------------
    def enqueue_jobs(self, jobs: Iterable[Job]) -> None:
        """Append jobs to the back of the pending queue, in order."""

    def claim_job(self, worker_id: str, shards: Iterable[int] | None = None) -> Job | None:
        """Atomically pop the next pending job and record it as the worker's.

        None if nothing is pending or the worker is unknown or disabled. A worker
        holds one job at a time: claiming again returns the job it already holds,
        so a retried call never loses a job. With ``shards``: the first pending job
        whose ``shard`` is one of them (the others keep their places), else None.
        """

    def complete_job(self, worker_id: str, job_id: str, n_samples: int, loss: float | None) -> bool:
        """Finish the worker's job: clear it, add its batches to the ledger, count jobs and samples.

        Also adds to the run's ``batches_run``/``samples_run``, so that the ledger
        and those totals always agree. False (and nothing changes) when the
        worker does not hold ``job_id``: a late result for a re-queued job must
        not count twice.
        """

    def release_job(self, worker_id: str) -> Job | None:
        """Put a failed worker's job back at the FRONT of the queue with attempt+1, and return it."""

    def pending_jobs(self) -> int: ...

    def in_flight(self) -> dict[str, Job]:
        """The jobs held now, by worker id."""

    def clear_jobs(self) -> None:
        """Drop every pending and held job (the ledger is kept)."""

    # -- ledger ------------------------------------------------------------
    def trained_batches(self, phase: str, epoch: int) -> dict[int, int]:
        """Batch position -> how many times it was trained in that phase and epoch."""

    # -- run ---------------------------------------------------------------
    def update_run(self, **fields: Any) -> RunState:
        """Set some RunState fields (``updated_at`` too, unless given); returns the new state."""

    def run_state(self) -> RunState: ...

    def record_metrics(self, entry: dict[str, Any]) -> None:
        """Append one round's metrics (round, loss, samples, workers, seconds...)."""

    def metrics(self, last: int | None = None) -> list[dict[str, Any]]:
        """All metrics entries in order, or only the ``last`` ones."""

    # -- whole -------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The whole state as one JSON-friendly dict (see :func:`build_snapshot`)."""

    def close(self) -> None: ...


def build_snapshot(
    run: RunState,
    workers: dict[str, WorkerState],
    pending: int,
    recent_metrics: list[dict[str, Any]],
    now: float | None = None,
) -> dict[str, Any]:
    """The snapshot's one layout, shared by every tracker and read by ``deepgrid status``."""
    now = time.time() if now is None else now
    if not run.started_at:
        elapsed = 0.0
    elif run.done or run.status in ("done", "failed", "stopped early"):
        elapsed = max(0.0, run.updated_at - run.started_at)  # a finished run's clock stops
    else:
        elapsed = max(0.0, now - run.started_at)
    worker_rows = {}
    for wid, w in sorted(workers.items()):
        row = w.to_dict()
        row["seconds_since_heartbeat"] = (
            round(max(0.0, now - w.last_heartbeat), 3) if w.last_heartbeat else None
        )
        worker_rows[wid] = row
    return {
        "taken_at": now,
        "run": {**run.to_dict(), "elapsed_s": round(elapsed, 3)},
        "workers": worker_rows,
        "pending_jobs": pending,
        "in_flight_jobs": sum(1 for w in workers.values() if w.job is not None),
        "metrics": recent_metrics,
    }


def tracker_from_url(url: str, job_name: str = "deepgrid", *, fresh: bool = False,
                     master: bool | None = None) -> StateTracker:
    """Open the tracker a URL names: ``memory://`` (one process) or ``redis://host:port/db`` (a cluster).

    ``job_name`` namespaces a Redis tracker's keys, so several runs can share one server; ``fresh``
    clears what an earlier run of that name left there (a master starts with empty state, as with
    ``memory://``); ``master`` (default: ``fresh``) takes the job's lease, so a second master of the
    job is refused (a resuming master passes ``fresh=False, master=True``). All are ignored by the
    in-memory tracker, which always starts empty.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        from deepgrid.state.memory import MemoryStateTracker

        return MemoryStateTracker()
    if scheme in ("redis", "rediss"):
        # Deferred: redis-py is an optional dependency (the `cluster` extra).
        try:
            from deepgrid.state.redis import RedisStateTracker
        except ImportError as e:
            raise ConfigError(
                f"state_url {url.split('://', 1)[0]}:// needs the redis package ({e}); "
                "install it with: pip install 'deepgrid[cluster]'."
            ) from None

        return RedisStateTracker(url, job_name=job_name, fresh=fresh, master=master)
    raise ConfigError(
        invalid(
            "state_url",
            mask_url(url),
            "a URL starting with memory://, redis:// or rediss://",
            "Use 'memory://' for one process or 'redis://HOST:6379' for a cluster.",
        )
    )
