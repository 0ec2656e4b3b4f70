"""The Redis state tracker: the cluster's shared state on a Redis server (Hazelcast's role in the seed).

Chosen by ``state_url: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (``rediss://`` for TLS); the
password may come from the URL, ``$DEEPGRID_REDIS_PASSWORD`` or the file named by
``$DEEPGRID_REDIS_PASSWORD_FILE``, and never appears in messages or logs.

A master opens its namespace with ``fresh=True``: what an earlier run of the same job name left is
deleted first, so a run starts empty as with ``memory://``; a master resuming from a checkpoint
(``--resume``) opens it as it is, to carry on the run's ledger and round; readers (``deepgrid status --state``)
open it as it is. README.md ("Redis state tracker") shows how to inspect a run with ``redis-cli``.

The tracker is :class:`RedisStateTracker` here; its parts live beside it:

* :mod:`deepgrid.state.redis_address`: the URL, the password's sources, the warning for a Redis
  reached over the network with neither TLS nor a password;
* :mod:`deepgrid.state.redis_keys`: the key layout (one namespace per job name) and how values are
  written and read back;
* :mod:`deepgrid.state.redis_scripts`: the Lua scripts, one per read-modify-write, and the one-time
  tokens that make a retried write safe;
* :mod:`deepgrid.state.redis_connection`: retries through outages, one clear line per failure, and
  the check that a Redis that came back still holds the run;
* :mod:`deepgrid.state.redis_lease`: one master per job.

Atomicity: every read-modify-write (heartbeat, claim, complete, release, remove, enable, clear) is
one Lua script, so it is atomic against every other client; plain multi-key writes are MULTI/EXEC
transactions. The tracker wants one Redis server (optionally with replicas), not a Redis Cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from deepgrid.errors import ClusterError, ConfigError, invalid
from deepgrid.state import redis_scripts as scripts
from deepgrid.state.base import (
    SNAPSHOT_METRICS,
    Job,
    RunState,
    WorkerState,
    build_snapshot,
    check_json,
    check_run_fields,
    mask_url,
)
from deepgrid.state.redis_address import (
    MAX_RETRY_TIMEOUT_S,
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    RedisAddress,
    parse_redis_url,
    warn_if_exposed,
)
from deepgrid.state.redis_connection import CONNECT_TIMEOUT_S, STARTUP_TIMEOUT_S, RedisConnection
from deepgrid.state.redis_keys import (
    RedisKeys,
    check_job_name,
    job_json,
    json_scalar,
    pairs,
    run_from_hash,
    worker_from_hash,
)
from deepgrid.state.redis_lease import LEASE_S, MasterLease

# What other modules import from here: the tracker's public names, wherever they now live.
__all__ = [
    "CONNECT_TIMEOUT_S",
    "LEASE_S",
    "PASSWORD_ENV",
    "PASSWORD_FILE_ENV",
    "STARTUP_TIMEOUT_S",
    "RedisAddress",
    "RedisStateTracker",
    "check_job_name",
    "parse_redis_url",
    "warn_if_exposed",
]

T = TypeVar("T")


class RedisStateTracker:
    """A :class:`~deepgrid.state.base.StateTracker` on a Redis server. See the module docstring.

    ``fresh=True`` (what a master asks for) deletes whatever an earlier run of the same job name
    left, so that, as with the in-memory tracker, a run starts empty; a reader such as
    ``deepgrid status`` opens the namespace as it is. ``master`` (default: ``fresh``) takes the
    job's lease first, so that a second master of the job is refused (see
    :mod:`deepgrid.state.redis_lease`); a master resuming a run passes ``fresh=False, master=True``.
    ``lease_s``: the lease's expiry.
    """

    def __init__(self, url: str, job_name: str = "deepgrid", *, fresh: bool = False, master: bool | None = None,
                 retry_timeout_s: float | None = None, env: Mapping[str, str] | None = None,
                 lease_s: float = LEASE_S) -> None:
        self.job_name = check_job_name(job_name)
        self.where = parse_redis_url(url, env)
        self.url = mask_url(url)  # the only form of the URL this object keeps in plain view
        self.retry_timeout_s = float(retry_timeout_s if retry_timeout_s is not None else self.where.retry_timeout_s)
        if not 0 < self.retry_timeout_s <= MAX_RETRY_TIMEOUT_S:
            raise ConfigError(invalid("retry_timeout_s", retry_timeout_s,
                                      f"a number of seconds above 0 and at most {MAX_RETRY_TIMEOUT_S:.0f}"))
        if not 0.5 <= lease_s <= 3600:
            raise ConfigError(invalid("lease_s", lease_s, "seconds from 0.5 to 3600"))
        warn_if_exposed(self.where)
        self.master = fresh if master is None else master
        self.lease_s = float(lease_s)
        self._keys = RedisKeys.for_job(job_name)
        self.prefix = self._keys.prefix
        self._closed = False
        self._conn = RedisConnection(self.where, self.url, job_name, self._keys.marker, self.retry_timeout_s)
        self._lease = MasterLease(self._conn, self._keys.lease, self.lease_s)
        self._redis = r = self._conn.client
        self._rpush_once = r.register_script(scripts.RPUSH_ONCE)
        self._set_if_worker = r.register_script(scripts.SET_IF_WORKER)
        self._claim = r.register_script(scripts.CLAIM)
        self._claim_shard = r.register_script(scripts.CLAIM_SHARD)
        self._complete = r.register_script(scripts.COMPLETE)
        self._release = r.register_script(scripts.RELEASE)
        self._remove = r.register_script(scripts.REMOVE)
        self._all_workers = r.register_script(scripts.ALL_WORKERS)
        self._snapshot = r.register_script(scripts.SNAPSHOT)
        self._clear_jobs = r.register_script(scripts.CLEAR_JOBS)
        try:
            self._call("connect", r.ping, budget_s=min(self.retry_timeout_s, STARTUP_TIMEOUT_S), starting=True)
            if self.master:  # before anything is cleared: a second master must not purge the first one's state
                self._lease.take()
            if fresh:
                self._call("clear the earlier run's state", self._purge)
            self._call("open the run's namespace", lambda: r.set(self._keys.marker, repr(time.time()), nx=True))
        except BaseException:
            self._lease.stop(release=True)
            self._redis.close()
            raise
        self._conn.arm()

    def __repr__(self) -> str:
        return f"RedisStateTracker({self.url!r}, job_name={self.job_name!r})"

    @property
    def unreachable(self) -> bool:
        """True from the first failed call of an outage until a call succeeds again.

        A master that is stopping because Redis is gone reads this to skip its courtesy writes
        (status, final snapshot), each of which would otherwise retry for ``retry_timeout_s``.
        """
        return self._conn.unreachable

    def _call(self, what: str, fn: Callable[[], T], *, budget_s: float | None = None, starting: bool = False) -> T:
        """Run ``fn`` through the connection (retries, one-line errors), unless this tracker may no longer."""
        if self._closed:
            raise ClusterError(f"The Redis state tracker of job {self.job_name!r} is closed; cannot {what}.")
        if self._lease.lost is not None:
            raise ClusterError(
                f"Another master ({self._lease.lost}) took over job {self.job_name!r} on Redis at {self.where.address} "
                f"while this one did not renew its lease for {self.lease_s:.0f} s (it was stopped or cut off); this "
                "master stops so that two masters never train one job.")
        return self._conn.call(what, fn, budget_s=budget_s, starting=starting)

    def _once(self) -> str:
        return self._keys.once()

    def _ttl(self) -> int:
        return int(max(scripts.ONCE_TTL_S, 2 * self.retry_timeout_s))

    # -- workers -------------------------------------------------------------------------------
    def add_worker(self, worker_id: str, info: dict[str, Any]) -> None:
        check_json(f"Worker {worker_id!r}'s info", info)
        fields = {"info": json.dumps(info), "enabled": "1", "last_heartbeat": repr(time.time())}

        def add() -> None:
            # A worker that comes back keeps its counters (and a job it still holds), as in memory.
            with self._redis.pipeline(transaction=True) as p:
                p.sadd(self._keys.workers, worker_id)
                p.hset(self._keys.worker(worker_id), mapping=fields)
                p.execute()

        self._call(f"add worker {worker_id!r}", add)

    def remove_worker(self, worker_id: str) -> Job | None:
        keys = [self._once(), self._keys.worker(worker_id), self._keys.queue, self._keys.workers]
        out = self._call(f"remove worker {worker_id!r}", lambda: self._remove(keys, [self._ttl(), worker_id]))
        return Job.from_dict(json.loads(out)) if out else None

    def workers(self) -> dict[str, WorkerState]:
        rows = self._call("read the workers", lambda: self._all_workers([self._keys.workers], [self._keys.worker_prefix]))
        return {wid: worker_from_hash(wid, pairs(h)) for wid, h in rows}

    def set_enabled(self, worker_id: str, enabled: bool) -> bool:
        key, value = self._keys.worker(worker_id), "1" if enabled else "0"
        return bool(self._call(f"enable worker {worker_id!r}", lambda: self._set_if_worker([key], ["enabled", value])))

    def heartbeat(self, worker_id: str, now: float | None = None) -> bool:
        stamp = repr(float(time.time() if now is None else now))
        key = self._keys.worker(worker_id)
        return bool(self._call(f"record a heartbeat of {worker_id!r}",
                               lambda: self._set_if_worker([key], ["last_heartbeat", stamp])))

    def stale_workers(self, timeout_s: float, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        return sorted(wid for wid, w in self.workers().items() if w.enabled and now - w.last_heartbeat > timeout_s)

    # -- jobs ----------------------------------------------------------------------------------
    def enqueue_jobs(self, jobs: Iterable[Job]) -> None:
        items = [job_json(job) for job in jobs]
        if items:
            keys = [self._once(), self._keys.queue]
            self._call("enqueue jobs", lambda: self._rpush_once(keys, [self._ttl(), *items]))

    def claim_job(self, worker_id: str, shards: Iterable[int] | None = None) -> Job | None:
        keys = [self._keys.worker(worker_id), self._keys.queue]
        if shards is None:
            out = self._call(f"hand a job to {worker_id!r}", lambda: self._claim(keys))
        else:
            wanted = [str(int(shard)) for shard in shards]
            out = self._call(f"hand a job to {worker_id!r}", lambda: self._claim_shard(keys, wanted))
        return Job.from_dict(json.loads(out)) if out else None

    def complete_job(self, worker_id: str, job_id: str, n_samples: int, loss: float | None) -> bool:
        phase, _, rest = job_id.rpartition("/")
        phase, _, epoch = phase.rpartition("/")
        if not phase or not epoch.lstrip("-").isdigit():
            return False  # not an id this tracker handed out, so not a job the worker holds
        keys = [self._once(), self._keys.worker(worker_id), self._keys.ledger(phase, int(epoch)), self._keys.run]
        # float(): a numpy scalar loss is fine for the memory tracker, so it must be here too.
        loss_json = json.dumps(None if loss is None else float(loss))
        args = [self._ttl(), job_id, int(n_samples), loss_json, repr(time.time())]
        return self._call(f"complete job {job_id} of {worker_id!r}", lambda: self._complete(keys, args)) == "1"

    def release_job(self, worker_id: str) -> Job | None:
        keys = [self._once(), self._keys.worker(worker_id), self._keys.queue]
        out = self._call(f"release the job of {worker_id!r}", lambda: self._release(keys, [self._ttl()]))
        return Job.from_dict(json.loads(out)) if out else None

    def pending_jobs(self) -> int:
        return int(self._call("count pending jobs", lambda: self._redis.llen(self._keys.queue)))

    def in_flight(self) -> dict[str, Job]:
        return {wid: w.job for wid, w in self.workers().items() if w.job is not None}

    def clear_jobs(self) -> None:
        self._call("clear the jobs", lambda: self._clear_jobs([self._keys.workers, self._keys.queue], [self._keys.worker_prefix]))

    # -- ledger --------------------------------------------------------------------------------
    def trained_batches(self, phase: str, epoch: int) -> dict[int, int]:
        counts = self._call("read the ledger", lambda: self._redis.hgetall(self._keys.ledger(phase, epoch)))
        return {int(k): int(v) for k, v in counts.items()}

    # -- run -----------------------------------------------------------------------------------
    def update_run(self, **fields: Any) -> RunState:
        check_run_fields(fields)
        fields.setdefault("updated_at", time.time())
        try:
            # The memory tracker takes a numpy or torch scalar (a loss, say) as it is: so must this one.
            mapping = {k: json.dumps(v, default=json_scalar) for k, v in fields.items()}
        except (TypeError, ValueError):
            check_json("A run field", fields)  # raises the one-line ClusterError
            raise

        def update() -> dict[str, str]:
            with self._redis.pipeline(transaction=True) as p:
                p.hset(self._keys.run, mapping=mapping)
                p.hgetall(self._keys.run)
                return p.execute()[1]

        return run_from_hash(self._call("update the run state", update))

    def run_state(self) -> RunState:
        return run_from_hash(self._call("read the run state", lambda: self._redis.hgetall(self._keys.run)))

    def record_metrics(self, entry: dict[str, Any]) -> None:
        check_json("A metrics entry", entry)
        keys, item = [self._once(), self._keys.metrics], json.dumps(entry)
        self._call("record metrics", lambda: self._rpush_once(keys, [self._ttl(), item]))

    def metrics(self, last: int | None = None) -> list[dict[str, Any]]:
        if last is not None and last <= 0:
            return []
        start = 0 if last is None else -last
        items = self._call("read the metrics", lambda: self._redis.lrange(self._keys.metrics, start, -1))
        return [json.loads(item) for item in items]

    # -- whole ---------------------------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        keys = [self._keys.workers, self._keys.queue, self._keys.run, self._keys.metrics]
        rows, run, pending, recent = self._call(
            "take a snapshot", lambda: self._snapshot(keys, [self._keys.worker_prefix, SNAPSHOT_METRICS]))
        workers = {wid: worker_from_hash(wid, pairs(h)) for wid, h in rows}
        return build_snapshot(run_from_hash(pairs(run)), workers, int(pending),
                              [json.loads(m) for m in recent], now)

    def purge(self) -> int:
        """Delete this job's keys (an earlier run's state; the marker stays); returns how many."""
        return self._call("delete the job's keys", self._purge)

    def _purge(self) -> int:
        deleted = 0
        batch: list[str] = []
        for key in self._redis.scan_iter(match=self.prefix + "*", count=500):
            if key not in (self._keys.marker, self._keys.lease):  # the lease is this master's own
                batch.append(key)
            if len(batch) >= 500:
                deleted += self._redis.unlink(*batch)
                batch = []
        if batch:
            deleted += self._redis.unlink(*batch)
        return deleted

    def close(self) -> None:
        if not self._closed:
            self._lease.stop(release=True)
            self._closed = True
            self._redis.close()
