"""The dispatcher: runs a round of jobs on the worker group and returns what came back.

In a round every free worker takes a job from the state tracker and trains it from the round's
parameters. Jobs are pulled: a worker that finishes while a slower one will still be busy for
longer than its own next job takes another job, continuing from its own parameters. While jobs
run, the dispatcher pings the busy workers (heartbeats), and a round has a deadline. A worker
that dies, hangs or overruns loses its job back to the queue (the failure policy decides whether
the worker stays); a worker kept after an overrun gets no job until that call ends.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from deepgrid.config.conf import Conf
from deepgrid.distributed.events import EventLog
from deepgrid.distributed.locality import ShardHomes, worker_host
from deepgrid.distributed.policy import Failure, FailureKind, FailurePolicy
from deepgrid.distributed.strategies.base import GroupBroken, JobResult
from deepgrid.distributed.workers import WorkerGroup, first_line
from deepgrid.errors import ClusterError
from deepgrid.state.base import Job, StateTracker

MIN_DEADLINE_S = 5.0  # a round's deadline is never shorter than this ...
DEADLINE_FACTOR = 20.0  # ... nor than this many times a typical job's time
PING_EVERY_S = 1.0  # how often a worker busy with a job is asked whether it still answers


class Dispatcher:
    def __init__(self, group: WorkerGroup, tracker: StateTracker, conf: Conf, policy: FailurePolicy,
                 say: EventLog) -> None:
        self.group, self.tracker, self.conf, self.policy, self.say = group, tracker, conf, policy, say
        self.job_seconds: deque[float] = deque(maxlen=50)  # recent jobs' seconds, for the round deadline
        self.batch_seconds: dict[str, float] = {}  # each worker's seconds per mini-batch, last job
        self.pull_jobs = conf.pull_jobs  # off for lockstep strategies (allreduce)
        # Without barrier (run_async) calls outlive a round: call -> (worker, job, started, version).
        self._calls: dict[Any, tuple[str, Job, float, int]] = {}
        self._pings: dict[Any, str] = {}
        self._seen: dict[str, float] = {}
        self.homes: ShardHomes | None = None  # shard-blocked epochs: which host trains which shard

    def claim(self, worker_id: str, steal: bool = True, force: bool = False) -> Job | None:
        """The next job for ``worker_id``: with shards, one of its host's first (locality.ShardHomes),
        another host's only with ``steal`` (after a delay; at once with ``force``)."""
        if self.homes is None:
            return self.tracker.claim_job(worker_id)
        hosts = self.group.hosts
        return self.homes.claim(self.tracker, worker_id, worker_host(hosts, worker_id),
                                {worker_host(hosts, w) for w in self.workers}, steal, force)

    @property
    def workers(self) -> dict:
        return self.group.workers

    def run_round(self, params: np.ndarray) -> list[JobResult] | None:
        """Train one round from ``params``; the results of the jobs that came back, in arrival order.

        None when no worker was free (each is still busy with an overrun job): no round was run.
        """
        import ray

        tracker = self.tracker
        self.watch_overruns()
        free = [(worker_id, handle) for worker_id, handle in self.workers.items() if handle.overrun is None]
        if not free:  # every worker is still busy with an overrun job: wait for one, count no round
            self.watch_overruns(wait_s=PING_EVERY_S)
            return None
        params_ref = ray.put(params)  # one copy in the object store, read by every worker
        calls: dict[Any, tuple[str, Job]] = {}
        for worker_id, handle, job in self._hand_out(free):
            # Boxed: the worker reads it inside the call, so its heartbeat never waits on the fetch (worker.py).
            calls[handle.actor.train.remote([params_ref], job.to_dict())] = (worker_id, job)
        if not calls:  # jobs are pending (the caller checked) yet none could be handed out
            raise ClusterError(f"The state tracker holds {tracker.pending_jobs()} pending job(s) but handed none "
                               f"to {len(free)} free worker(s); its state is inconsistent (another master on "
                               "the same job name?). The last checkpoint is kept: resume with --resume.")
        started = time.monotonic()
        call_started = dict.fromkeys(calls, started)
        deadline = self.deadline()
        results: list[JobResult] = []
        pending = list(calls)
        pings: dict[Any, str] = {}  # heartbeat calls in flight -> worker
        seen = {worker_id: started for worker_id, _ in calls.values()}  # last sign of life of each
        # The deadline counts from `since`: the round's start, moved on by any time the master was held up.
        since = looked = started  # looked: when the master last came back from waiting on the workers
        while pending:
            since, looked = self._discount_held_up(since, looked, seen)
            remaining = deadline - (time.monotonic() - since)
            if remaining <= 0:
                break
            ready, _ = ray.wait(pending + list(pings), num_returns=1, timeout=min(remaining, PING_EVERY_S))
            looked = time.monotonic()
            for ref in ready:
                if ref in pings:  # a heartbeat: the worker answers while it trains
                    worker_id = pings.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError:
                        continue  # a dead worker: its job's call reports that
                    seen[worker_id] = time.monotonic()
                    tracker.heartbeat(worker_id)
                    continue
                pending.remove(ref)
                worker_id, job = calls[ref]
                seen[worker_id] = time.monotonic()
                result = self._collect(ref, worker_id, job)
                if result is not None:
                    results.append(result)
                    ref = self._pull_another(worker_id, pending, calls, call_started)
                    if ref is not None:
                        pending.append(ref)
            since, looked = self._discount_held_up(since, looked, seen)
            pending = self._check_heartbeats(pending, calls, pings, seen)
        for ref in pending:  # past the deadline: the job moves on, the worker may stay
            self._overran(ref, calls[ref], deadline, seen)
        return results

    def _hand_out(self, free: list[tuple[str, Any]]) -> list[tuple[str, Any, Job]]:
        """A job for each free worker while jobs last. With shards, every worker first takes one of
        its own host's (or a homeless shard's), and only then may the ones left without steal (see
        locality.ShardHomes): so that none takes the job a shard's own host would have trained in
        this same round. If that left every worker without a job, they steal at once."""
        if self.homes is None:
            handed = []
            for worker_id, handle in free:
                job = self.claim(worker_id)
                if job is None:
                    break  # no job left
                handed.append((worker_id, handle, job))
            return handed
        chosen: dict[str, tuple[str, Any, Job]] = {}
        for steal, force in ((False, False), (True, False), (True, True)):
            if force and chosen:
                break
            for worker_id, handle in free:
                if worker_id not in chosen and (job := self.claim(worker_id, steal, force)) is not None:
                    chosen[worker_id] = (worker_id, handle, job)
        return list(chosen.values())

    def run_async(self, current: Callable[[], tuple[np.ndarray, int]], apply: Callable[[JobResult], None],
                  quota: int) -> list[JobResult] | None:
        """Strategies without barrier: keep every free worker busy with a job that starts from the
        newest parameters (``current()``: the parameters and their version), ``apply`` each result
        the moment it comes, and return after ``quota`` results or when no job is left running.
        Calls still running when it returns go on, and are collected by the next call: nobody
        waits for a slower worker. None when no worker was free and none was busy with a job.
        """
        import ray

        self.watch_overruns()
        self._top_up(current)
        if not self._calls:
            if any(h.overrun is None for h in self.workers.values()) and self.tracker.pending_jobs():
                raise ClusterError(f"The state tracker holds {self.tracker.pending_jobs()} pending job(s) but handed "
                                   "none to the free workers; its state is inconsistent (another master on the same "
                                   "job name?). The last checkpoint is kept: resume with --resume.")
            self.watch_overruns(wait_s=PING_EVERY_S)
            return None
        deadline, results = self.deadline(), []
        looked = time.monotonic()
        while self._calls and len(results) < quota:
            since, looked = self._discount_held_up(0.0, looked, self._seen)
            if since:  # the master was held up: every running call's clock moves on by as much
                self._calls = {ref: (w, j, started + since, v) for ref, (w, j, started, v) in self._calls.items()}
            ready, _ = ray.wait(list(self._calls) + list(self._pings), num_returns=1, timeout=PING_EVERY_S)
            looked = time.monotonic()
            for ref in ready:
                if ref in self._pings:
                    self._heard(ref)
                    continue
                worker_id, job, _, version = self._calls.pop(ref)
                self._seen[worker_id] = time.monotonic()
                result = self._collect(ref, worker_id, job, version)
                if result is not None:
                    apply(result)
                    results.append(result)
                self._top_up(current)  # this worker (and any other free one) goes on at once
            now = time.monotonic()
            for ref, (worker_id, job, started, _) in list(self._calls.items()):
                if now - started > deadline:
                    del self._calls[ref]
                    self._overran(ref, (worker_id, job), deadline, self._seen)
            running = {ref: (w, j) for ref, (w, j, _, _) in self._calls.items()}
            kept = set(self._check_heartbeats(list(running), running, self._pings, self._seen))
            self._calls = {ref: call for ref, call in self._calls.items() if ref in kept}
        return results

    def _top_up(self, current: Callable[[], tuple[np.ndarray, int]]) -> None:
        """Give each worker that is neither running a job nor busy with an overrun one a job (with
        shards: a job of its own host's, or a stolen one as ``_hand_out`` allows)."""
        import ray

        busy = {worker_id for worker_id, _, _, _ in self._calls.values()}
        free = [(w, h) for w, h in self.workers.items() if w not in busy and h.overrun is None]
        params_ref, version = None, 0
        for force in (False, True):
            if force and (self.homes is None or self._calls):
                return  # forced stealing only when otherwise no worker would train
            for worker_id, handle in free:
                job = self.claim(worker_id, force=force)
                if job is None:
                    if self.homes is None:
                        return  # no job left
                    continue
                if params_ref is None:
                    params, version = current()
                    params_ref = ray.put(params)  # one copy for every worker topped up now
                now = time.monotonic()
                self._calls[handle.actor.train.remote([params_ref], job.to_dict())] = (worker_id, job, now, version)
                self._seen[worker_id] = now
            running = {worker_id for worker_id, _, _, _ in self._calls.values()}
            free = [(w, h) for w, h in free if w not in running]

    def _heard(self, ping: Any) -> None:
        import ray

        worker_id = self._pings.pop(ping)
        try:
            ray.get(ping)
        except ray.exceptions.RayError:
            return  # a dead worker: its job's call reports that
        self._seen[worker_id] = time.monotonic()
        self.tracker.heartbeat(worker_id)

    def _collect(self, ref: Any, worker_id: str, job: Job, version: int = 0) -> JobResult | None:
        """Read a finished job's result and record it in the tracker; None if it failed or is stale."""
        import ray

        try:
            raw = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
            # ObjectLostError: the job's result was on the worker's machine, gone before we read it.
            self.failure(Failure(worker_id, FailureKind.DIED, job, first_line(e)))
            return None
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, GroupBroken):  # a peer of a shared step is gone, not this worker's fault
                self.say(f"deepgrid: worker {worker_id} lost a peer in job {job.id} ({first_line(e)}); job re-queued",
                         "requeued", worker_id=worker_id, job_id=job.id)
                self.tracker.release_job(worker_id)
                self.group.broken = True
                return None
            handle = self.workers.get(worker_id)
            count = handle.failures + 1 if handle else 1
            if handle:
                handle.failures = count
            self.failure(Failure(worker_id, FailureKind.ERROR, job, first_line(e), count))
            return None
        if not self.tracker.complete_job(worker_id, raw["job_id"], raw["n_samples"], raw["loss"]):
            return None  # the job was taken away meanwhile (re-queued): another worker trains it
        self.batch_seconds[worker_id] = raw["seconds"] / job.n_batches
        self.job_seconds.append(raw["seconds"])
        return JobResult(worker_id, job, raw["update"], raw["n_samples"], raw["loss"], raw["seconds"], version)

    def _overran(self, ref: Any, call: tuple[str, Job], deadline: float, seen: dict[str, float]) -> None:
        worker_id, job = call
        handle = self.workers.get(worker_id)
        if handle:
            handle.failures += 1
        self.failure(Failure(worker_id, FailureKind.TIMEOUT, job, f"no result after {deadline:.1f} s",
                             handle.failures if handle else 1))
        if worker_id in self.workers:  # kept: no new job until this call ends
            handle = self.workers[worker_id]
            handle.overrun, handle.last_seen = ref, seen.get(worker_id, time.monotonic())
            self.tracker.set_enabled(worker_id, False)

    def _discount_held_up(self, since: float, looked: float, seen: dict[str, float]) -> tuple[float, float]:
        """Time since ``looked`` that the master spent held up in its own work rather than watching
        the workers (a tracker call retrying through a Redis outage; bookkeeping takes milliseconds)
        counts neither against the round's deadline nor as anyone's silence: the time the deadline
        counts from (``since``) and each worker's last sign of life move on by as much, so the
        results and heartbeats that came in meanwhile are read before a worker is judged late or
        silent. Returns the new ``since`` and the time to measure from next."""
        now = time.monotonic()
        held = now - looked
        if held > PING_EVERY_S:
            since += held
            for worker_id in seen:
                seen[worker_id] = min(seen[worker_id] + held, now)
            for handle in self.workers.values():
                if handle.overrun is not None:
                    handle.last_seen = min(handle.last_seen + held, now)
        return since, now

    def _check_heartbeats(self, pending: list[Any], calls: dict[Any, tuple[str, Job]], pings: dict[Any, str],
                          seen: dict[str, float]) -> list[Any]:
        """Ping the workers busy with a job; drop one silent for ``heartbeat_timeout_s`` (a hung or
        stopped process: Ray still sees it alive) and re-queue its job. Returns the calls still pending."""
        now = time.monotonic()
        busy = {calls[ref][0]: ref for ref in pending}
        pinged = set(pings.values())
        for worker_id, ref in busy.items():
            handle = self.workers.get(worker_id)
            if handle is None:
                continue
            if now - seen.get(worker_id, now) > self.conf.heartbeat_timeout_s:
                for ping, owner in list(pings.items()):
                    if owner == worker_id:
                        del pings[ping]
                silent = f"no heartbeat for {now - seen[worker_id]:.1f} s"
                self.failure(Failure(worker_id, FailureKind.STALE, calls[ref][1], silent))
                pending = [r for r in pending if r != ref]
            elif worker_id not in pinged and now - seen.get(worker_id, now) >= PING_EVERY_S:
                pings[handle.actor.ping.remote()] = worker_id
        return pending

    def end_overruns(self) -> None:
        """Re-enable the workers whose overrun call has ended (its result is stale: dropped)."""
        import ray

        for worker_id, handle in list(self.workers.items()):
            if handle.overrun is None or not ray.wait([handle.overrun], timeout=0)[0]:
                continue
            try:
                ray.get(handle.overrun)
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                self.failure(Failure(worker_id, FailureKind.DIED, None, first_line(e)))
                continue
            except ray.exceptions.RayError:
                pass  # its job was re-queued already; the error is the stale job's
            handle.overrun = handle.overrun_ping = None
            self.tracker.set_enabled(worker_id, True)
            self.say(f"deepgrid: worker {worker_id} finished its overrun job and gets jobs again", "enabled",
                     worker_id=worker_id)

    def watch_overruns(self, wait_s: float = 0.0) -> None:
        """Ping the workers busy with an overrun call and drop one silent for ``heartbeat_timeout_s``
        (hung, stopped, cut off: Ray may take a minute to declare its node dead). ``wait_s``: how
        long to wait for one of them to answer or finish, when no other worker is free."""
        import ray

        busy = [h for h in self.workers.values() if h.overrun is not None]
        if not busy:
            return
        for handle in busy:
            if handle.overrun_ping is None:
                handle.overrun_ping = handle.actor.ping.remote()
        if wait_s > 0:
            ray.wait([h.overrun for h in busy] + [h.overrun_ping for h in busy], num_returns=1, timeout=wait_s)
        now = time.monotonic()
        for handle in busy:
            if ray.wait([handle.overrun_ping], timeout=0)[0]:
                handle.overrun_ping = None
                handle.last_seen = now
            elif now - handle.last_seen > self.conf.heartbeat_timeout_s:
                self.failure(Failure(handle.worker_id, FailureKind.STALE, None,
                                     f"no heartbeat for {now - handle.last_seen:.1f} s"))
        self.end_overruns()

    def _pull_another(self, worker_id: str, pending: list[Any], calls: dict[Any, tuple[str, Job]],
                      call_started: dict[Any, float]) -> Any:
        """Give ``worker_id`` another job of this round if the slowest worker still busy will take
        longer than that job; return its call, or None. Unknown speeds never pull."""
        handle = self.workers.get(worker_id)
        own = self.batch_seconds.get(worker_id)
        if (not self.pull_jobs or handle is None or own is None or not pending
                or not self.tracker.pending_jobs()):
            return None
        now = time.monotonic()
        busy_for = 0.0  # how long the slowest in-flight job still needs, by its worker's past speed
        for ref in pending:
            other, job = calls[ref]
            speed = self.batch_seconds.get(other)
            if speed is None:
                return None
            busy_for = max(busy_for, speed * job.n_batches - (now - call_started[ref]))
        if busy_for < own * self.conf.averaging_frequency:
            return None
        job = self.claim(worker_id, steal=False)
        if job is None:
            return None
        ref = handle.actor.train.remote(None, job.to_dict())  # None: go on from its own parameters
        calls[ref], call_started[ref] = (worker_id, job), now
        return ref

    def deadline(self) -> float:
        """Seconds a round may take: long enough for a slow job, short enough to notice a hung worker."""
        typical = statistics.median(self.job_seconds) if self.job_seconds else self.conf.round_deadline_s / DEADLINE_FACTOR
        return min(self.conf.round_deadline_s, max(MIN_DEADLINE_S, DEADLINE_FACTOR * typical))

    def failure(self, failure: Failure) -> None:
        """Apply the policy's decision: re-queue the job, drop the worker, or stop."""
        decision = self.policy.decide(failure, live_workers=len(self.workers))
        kind = "dropped" if decision.drop_worker else "requeued" if decision.requeue_job else "failure"
        self.say(f"deepgrid: {decision.reason}", kind, worker_id=failure.worker_id,
                 job_id=failure.job.id if failure.job else None)
        if decision.requeue_job:
            self.tracker.release_job(failure.worker_id)
        if decision.drop_worker:
            self.group.drop(failure.worker_id)
        if decision.stop:
            raise ClusterError(decision.reason)
