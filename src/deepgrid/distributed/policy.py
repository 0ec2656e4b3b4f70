"""Failure decisions, kept apart from the machinery so they can be tested without a cluster.

As in Ray Train v1's worker group, the master reports what went wrong as a
:class:`Failure` and a :class:`FailurePolicy` answers with a :class:`Decision`
(re-queue the job, drop the worker, stop the run); the master only carries it out.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from deepgrid.errors import ConfigError, invalid
from deepgrid.state.base import Job


class FailureKind(enum.StrEnum):
    DIED = "died"  # the actor or its process is gone
    ERROR = "error"  # the worker's training code raised
    TIMEOUT = "timeout"  # a job ran past the round deadline
    STALE = "stale"  # no heartbeat within the timeout


@dataclass(frozen=True)
class Failure:
    worker_id: str
    kind: FailureKind
    job: Job | None = None
    message: str = ""
    worker_failures: int = 1  # this worker's failures so far, this one included


@dataclass(frozen=True)
class Decision:
    requeue_job: bool
    drop_worker: bool
    stop: bool
    reason: str  # one line for the log and the status page


_WHAT = {
    FailureKind.DIED: "died",
    FailureKind.ERROR: "raised an error",
    FailureKind.TIMEOUT: "ran past the round deadline",
    FailureKind.STALE: "stopped sending heartbeats",
}


def describe(failure: Failure) -> str:
    """'worker w1 raised an error in job finetune/0/3 (attempt 2): ValueError: nan loss'."""
    text = f"worker {failure.worker_id} {_WHAT[failure.kind]}"
    if failure.job is not None:
        text += f" in job {failure.job.id}"
        if failure.job.attempt:
            text += f" (attempt {failure.job.attempt + 1})"
    return f"{text}: {failure.message}" if failure.message else text


@dataclass(frozen=True)
class FailurePolicy:
    """When to retry a job, drop a worker, or stop the run.

    - DIED or STALE: the worker is gone; drop it and re-queue its job.
    - TIMEOUT: re-queue the job; drop the worker once it has failed ``max_worker_errors`` times.
    - ERROR: re-queue the job while it has attempts left; drop the worker after
      ``max_worker_errors`` failures. A job that failed ``max_job_attempts`` times
      stops the run: an error that follows a job from worker to worker is in the
      data or the model, and retrying it elsewhere would only lose more workers.
      The same bound holds for a job that keeps timing out.
    - Whenever a drop leaves fewer than ``min_workers`` live workers, stop.
    """

    max_job_attempts: int = 3
    max_worker_errors: int = 2
    min_workers: int = 1
    stop_on_error: bool = False

    def __post_init__(self) -> None:
        for name in ("max_job_attempts", "max_worker_errors", "min_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(invalid(name, value, "a positive integer"))
        if not isinstance(self.stop_on_error, bool):
            raise ConfigError(invalid("stop_on_error", self.stop_on_error, "true or false"))

    def decide(self, failure: Failure, live_workers: int) -> Decision:
        """``live_workers``: the workers alive before this decision, the failing one included."""
        what = describe(failure)
        job = failure.job
        if failure.kind in (FailureKind.DIED, FailureKind.STALE):
            return self._drop(what, job, live_workers)

        if failure.kind is FailureKind.ERROR and self.stop_on_error:
            return Decision(
                False,
                False,
                True,
                f"{what}; stopping because stop_on_error is set; the last checkpoint is kept",
            )

        if job is not None and job.attempt + 1 >= self.max_job_attempts:
            tries = job.attempt + 1
            if failure.kind is FailureKind.ERROR:
                reason = (
                    f"job {job.id} failed {tries} times, last with: {failure.message or 'no message'}; "
                    "an error that follows a job from worker to worker is in the data or the model, "
                    "not the workers: fix it and resume from the last checkpoint"
                )
            else:
                reason = (
                    f"job {job.id} ran past the round deadline {tries} times; raise round_deadline_s "
                    "or lower averaging_frequency, then resume from the last checkpoint"
                )
            return Decision(False, False, True, reason)

        if failure.worker_failures >= self.max_worker_errors:
            limit = f"{failure.worker_failures} failures reach max_worker_errors={self.max_worker_errors}"
            return self._drop(f"{what}; {limit}", job, live_workers)

        kept = f"worker kept (failure {failure.worker_failures} of {self.max_worker_errors})"
        if job is None:
            return Decision(False, False, False, f"{what}; {kept}")
        return Decision(True, False, False, f"{what}; job {job.id} re-queued, {kept}")

    def _drop(self, what: str, job: Job | None, live_workers: int) -> Decision:
        left = max(0, live_workers - 1)
        if left < self.min_workers:
            return Decision(
                False,
                True,
                True,
                f"{what}; worker dropped; {left} live worker(s) left, fewer than min_workers={self.min_workers}: "
                "stopping, the last checkpoint is kept",
            )
        requeued = f", job {job.id} re-queued" if job is not None else ""
        return Decision(
            job is not None, True, False, f"{what}; worker dropped{requeued}; {left} worker(s) left"
        )


@dataclass(frozen=True)
class RoundDeadline:
    """How long a round may take; ``None`` means no deadline.

    Times are ``time.monotonic()`` readings (the default ``now``): wall-clock
    jumps must not expire a round or keep one alive.
    """

    deadline_s: float | None

    def __post_init__(self) -> None:
        d = self.deadline_s
        if d is not None and (isinstance(d, bool) or not isinstance(d, int | float) or not d > 0):
            raise ConfigError(invalid("round_deadline_s", self.deadline_s, "a positive number of seconds"))

    def expired(self, started_at: float, now: float | None = None) -> bool:
        if self.deadline_s is None:
            return False
        now = time.monotonic() if now is None else now
        return now - started_at > self.deadline_s

    def remaining(self, started_at: float, now: float | None = None) -> float | None:
        """Seconds left (never negative), or None without a deadline: a timeout for ray.wait."""
        if self.deadline_s is None:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, self.deadline_s - (now - started_at))
