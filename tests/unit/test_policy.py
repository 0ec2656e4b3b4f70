"""FailurePolicy and RoundDeadline: every rule, decided without a cluster."""

from __future__ import annotations

import pytest

from deepgrid.distributed.policy import Decision, Failure, FailureKind, FailurePolicy, RoundDeadline
from deepgrid.errors import ConfigError
from deepgrid.state import Job

JOB = Job("finetune", 1, 4, 40, 50)


def fail(
    kind: FailureKind, attempt: int = 0, worker_failures: int = 1, message: str = "boom", job=JOB
) -> Failure:
    if job is not None:
        job = Job(job.phase, job.epoch, job.index, job.start, job.stop, attempt=attempt)
    return Failure("w1", kind, job, message, worker_failures)


def assert_readable(decision: Decision) -> None:
    # One line for a log or a status page that starts with who failed: the worker or the job.
    assert decision.reason and "\n" not in decision.reason
    assert decision.reason.startswith(("worker w1 ", "job finetune/1/4 "))


@pytest.mark.parametrize("kind", [FailureKind.DIED, FailureKind.STALE])
def test_died_or_stale_worker_is_dropped_and_its_job_requeued(kind):
    d = FailurePolicy().decide(fail(kind), live_workers=3)
    assert (d.requeue_job, d.drop_worker, d.stop) == (True, True, False)
    assert "w1" in d.reason and "finetune/1/4 re-queued" in d.reason and "2 worker(s) left" in d.reason
    assert_readable(d)


def test_stale_reason_says_heartbeats_and_keeps_the_message():
    d = FailurePolicy().decide(fail(FailureKind.STALE, message="no heartbeat for 31.0 s"), live_workers=2)
    assert "stopped sending heartbeats" in d.reason and "31.0 s" in d.reason


def test_dead_worker_without_a_job_is_dropped_with_nothing_to_requeue():
    d = FailurePolicy().decide(fail(FailureKind.DIED, job=None), live_workers=2)
    assert (d.requeue_job, d.drop_worker, d.stop) == (False, True, False)


def test_died_job_is_requeued_whatever_its_attempt():
    # A lost machine says nothing about the job: no attempt limit for DIED.
    d = FailurePolicy(max_job_attempts=2).decide(fail(FailureKind.DIED, attempt=5), live_workers=3)
    assert (d.requeue_job, d.stop) == (True, False)


def test_timeout_requeues_and_keeps_the_worker():
    d = FailurePolicy().decide(fail(FailureKind.TIMEOUT, worker_failures=1), live_workers=2)
    assert (d.requeue_job, d.drop_worker, d.stop) == (True, False, False)
    assert "ran past the round deadline" in d.reason and "worker kept (failure 1 of 2)" in d.reason
    assert_readable(d)


def test_repeated_timeouts_drop_the_worker():
    d = FailurePolicy(max_worker_errors=2).decide(
        fail(FailureKind.TIMEOUT, worker_failures=2), live_workers=3
    )
    assert (d.requeue_job, d.drop_worker, d.stop) == (True, True, False)
    assert "max_worker_errors=2" in d.reason


def test_a_job_that_always_times_out_stops_the_run():
    d = FailurePolicy(max_job_attempts=3).decide(fail(FailureKind.TIMEOUT, attempt=2), live_workers=3)
    assert d.stop and not d.requeue_job
    assert "finetune/1/4" in d.reason and "round_deadline_s" in d.reason


def test_error_requeues_while_the_job_has_attempts_left():
    policy = FailurePolicy(max_job_attempts=3, max_worker_errors=5)
    for attempt in (0, 1):
        d = policy.decide(fail(FailureKind.ERROR, attempt=attempt), live_workers=3)
        assert (d.requeue_job, d.drop_worker, d.stop) == (True, False, False)
        assert "raised an error" in d.reason and "boom" in d.reason
    assert "(attempt 2)" in d.reason


def test_error_on_the_last_attempt_stops_naming_job_and_error():
    d = FailurePolicy(max_job_attempts=3).decide(
        fail(FailureKind.ERROR, attempt=2, message="ValueError: loss is nan"), live_workers=3
    )
    assert (d.requeue_job, d.drop_worker, d.stop) == (False, False, True)
    assert "finetune/1/4" in d.reason and "failed 3 times" in d.reason
    assert "ValueError: loss is nan" in d.reason and "data or the model" in d.reason
    assert_readable(d)


def test_errors_drop_the_worker_after_max_worker_errors():
    policy = FailurePolicy(max_worker_errors=2)
    d = policy.decide(fail(FailureKind.ERROR, worker_failures=1), live_workers=3)
    assert not d.drop_worker
    d = policy.decide(fail(FailureKind.ERROR, worker_failures=2), live_workers=3)
    assert (d.requeue_job, d.drop_worker, d.stop) == (True, True, False)
    assert "2 failures reach max_worker_errors=2" in d.reason


def test_stop_on_error_stops_at_the_first_error():
    d = FailurePolicy(stop_on_error=True).decide(fail(FailureKind.ERROR), live_workers=3)
    assert d.stop and not d.requeue_job
    assert "stop_on_error" in d.reason and "checkpoint" in d.reason
    # ...but a lost machine is not an error in the code.
    d = FailurePolicy(stop_on_error=True).decide(fail(FailureKind.DIED), live_workers=3)
    assert not d.stop


@pytest.mark.parametrize(
    "failure",
    [
        fail(FailureKind.DIED),
        fail(FailureKind.STALE),
        fail(FailureKind.ERROR, worker_failures=2),
        fail(FailureKind.TIMEOUT, worker_failures=2),
    ],
    ids=["died", "stale", "errors", "timeouts"],
)
def test_stop_when_a_drop_leaves_fewer_than_min_workers(failure):
    policy = FailurePolicy(min_workers=2)
    assert not policy.decide(failure, live_workers=3).stop  # 2 left: enough
    d = policy.decide(failure, live_workers=2)
    assert (d.drop_worker, d.stop, d.requeue_job) == (True, True, False)
    assert "1 live worker(s) left" in d.reason and "min_workers=2" in d.reason
    assert "last checkpoint is kept" in d.reason
    assert_readable(d)


def test_losing_the_only_worker_stops_by_default():
    d = FailurePolicy().decide(fail(FailureKind.DIED), live_workers=1)
    assert d.stop and "0 live worker(s) left" in d.reason


def test_a_kept_worker_never_triggers_the_min_workers_stop():
    d = FailurePolicy(min_workers=3).decide(fail(FailureKind.TIMEOUT), live_workers=3)
    assert not d.stop and not d.drop_worker


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_job_attempts": 0},
        {"max_worker_errors": -1},
        {"min_workers": 0},
        {"min_workers": 1.5},
        {"stop_on_error": "yes"},
    ],
)
def test_policy_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError, match="Received an invalid value"):
        FailurePolicy(**kwargs)


def test_round_deadline():
    deadline = RoundDeadline(10.0)
    assert not deadline.expired(100.0, now=105.0)
    assert not deadline.expired(100.0, now=110.0)
    assert deadline.expired(100.0, now=110.5)
    assert deadline.remaining(100.0, now=104.0) == pytest.approx(6.0)
    assert deadline.remaining(100.0, now=200.0) == 0.0
    assert not RoundDeadline(None).expired(0.0, now=1e9)
    assert RoundDeadline(None).remaining(0.0, now=1.0) is None
    for bad in (0, -1.0, "10"):
        with pytest.raises(ConfigError, match="round_deadline_s"):
            RoundDeadline(bad)
