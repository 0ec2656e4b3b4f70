"""Conformance tests every StateTracker passes, written against the protocol only.

The ``tracker`` fixture runs each test against every kind in TRACKER_KINDS: the in-memory
tracker, and the Redis one on a redis-server this module starts (loopback, a free port, a
password; skipped where redis-server is not installed). Redis-only behaviour (URLs, errors,
outages, many threads) is tested in tests/integration/test_redis_tracker.py.
Also here: tracker_from_url and the status file that `deepgrid status` reads.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter

import pytest

from deepgrid.errors import ClusterError, ConfigError
from deepgrid.state import Job, MemoryStateTracker, RunState, StateTracker, tracker_from_url
from deepgrid.state.status import format_status, read_status, status_path, write_status
from tests.redis_server import RedisServer, require_redis_server

TRACKER_KINDS = ["memory", "redis"]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """One password-protected redis-server for the module's Redis tests, stopped at the end."""
    require_redis_server()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=TRACKER_KINDS)
def tracker(request):
    if request.param == "memory":
        t = MemoryStateTracker()
    else:
        from deepgrid.state.redis import RedisStateTracker

        server = request.getfixturevalue("redis_server")
        # A job name of its own: each test starts with an empty namespace on the shared server.
        t = RedisStateTracker(server.url, job_name=f"test-{uuid.uuid4().hex[:12]}", fresh=True)
    yield t
    if request.param == "redis":
        t.purge()
    t.close()


def jobs(n: int, phase: str = "finetune", epoch: int = 0, k: int = 2) -> list[Job]:
    """n jobs of k batches each, covering positions [0, n*k) in order."""
    return [Job(phase, epoch, i, i * k, (i + 1) * k) for i in range(n)]


# -- Job -------------------------------------------------------------------


def test_job_id_batches_and_json_round_trip():
    job = Job("pretrain:0", 2, 5, 10, 14, attempt=1)
    assert job.id == "pretrain:0/2/5"
    assert job.n_batches == 4
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    assert job.retried() == Job("pretrain:0", 2, 5, 10, 14, attempt=2)
    assert job.retried().id == job.id  # a retry is the same job


def test_job_rejects_empty_range_and_damaged_dict():
    with pytest.raises(ClusterError, match="start < stop"):
        Job("finetune", 0, 0, 3, 3)
    with pytest.raises(ClusterError, match="damaged"):
        Job.from_dict({"phase": "finetune"})


# -- workers ---------------------------------------------------------------


def test_satisfies_protocol(tracker):
    assert isinstance(tracker, StateTracker)


def test_add_remove_enable_workers(tracker):
    tracker.add_worker("w1", {"host": "node-1", "pid": 11})
    tracker.add_worker("w2", {"host": "node-2", "pid": 12})
    ws = tracker.workers()
    assert set(ws) == {"w1", "w2"}
    assert ws["w1"].info == {"host": "node-1", "pid": 11}
    assert ws["w1"].enabled and ws["w1"].job is None and ws["w1"].jobs_done == 0

    assert tracker.set_enabled("w1", False) is True
    assert tracker.workers()["w1"].enabled is False
    assert tracker.set_enabled("nobody", False) is False

    assert tracker.remove_worker("w2") is None
    assert set(tracker.workers()) == {"w1"}
    assert tracker.remove_worker("w2") is None  # removing twice is harmless


def test_workers_returns_a_copy(tracker):
    tracker.add_worker("w1", {"host": "a"})
    tracker.workers()["w1"].info["host"] = "changed"
    assert tracker.workers()["w1"].info["host"] == "a"


def test_re_adding_a_worker_enables_it_and_keeps_its_counts(tracker):
    tracker.add_worker("w1", {"host": "a"})
    tracker.enqueue_jobs(jobs(1))
    job = tracker.claim_job("w1")
    tracker.complete_job("w1", job.id, 64, 0.5)
    tracker.set_enabled("w1", False)
    tracker.add_worker("w1", {"host": "b"})
    w = tracker.workers()["w1"]
    assert w.enabled and w.info == {"host": "b"} and w.jobs_done == 1


def test_worker_info_must_be_json_friendly(tracker):
    with pytest.raises(ClusterError, match="JSON-friendly"):
        tracker.add_worker("w1", {"host": object()})


def test_heartbeats_and_stale_workers(tracker):
    for wid in ("w1", "w2", "w3"):
        tracker.add_worker(wid, {})
    tracker.heartbeat("w1", now=100.0)
    tracker.heartbeat("w2", now=95.0)
    tracker.heartbeat("w3", now=80.0)
    assert tracker.workers()["w1"].last_heartbeat == 100.0
    assert tracker.stale_workers(10.0, now=100.0) == ["w3"]
    assert tracker.stale_workers(4.0, now=100.0) == ["w2", "w3"]
    assert tracker.stale_workers(30.0, now=100.0) == []
    tracker.set_enabled("w3", False)  # a disabled worker is already out: not reported again
    assert tracker.stale_workers(10.0, now=100.0) == []
    assert tracker.heartbeat("nobody", now=100.0) is False


# -- jobs ------------------------------------------------------------------


def test_claim_is_fifo_and_empty_queue_gives_none(tracker):
    tracker.add_worker("w1", {})
    tracker.add_worker("w2", {})
    tracker.enqueue_jobs(jobs(3))
    assert tracker.pending_jobs() == 3
    a = tracker.claim_job("w1")
    b = tracker.claim_job("w2")
    assert (a.index, b.index) == (0, 1)
    assert tracker.in_flight() == {"w1": a, "w2": b}
    assert tracker.pending_jobs() == 1
    tracker.complete_job("w1", a.id, 10, 0.1)
    assert tracker.claim_job("w1").index == 2
    tracker.complete_job("w1", "finetune/0/2", 10, 0.1)
    assert tracker.claim_job("w1") is None


def test_claim_refuses_unknown_and_disabled_workers(tracker):
    tracker.enqueue_jobs(jobs(2))
    assert tracker.claim_job("nobody") is None
    tracker.add_worker("w1", {})
    tracker.set_enabled("w1", False)
    assert tracker.claim_job("w1") is None
    assert tracker.pending_jobs() == 2


def test_claiming_again_returns_the_held_job(tracker):
    tracker.add_worker("w1", {})
    tracker.enqueue_jobs(jobs(2))
    first = tracker.claim_job("w1")
    assert tracker.claim_job("w1") == first
    assert tracker.pending_jobs() == 1


def test_release_puts_job_back_at_the_front_with_next_attempt(tracker):
    tracker.add_worker("w1", {})
    tracker.add_worker("w2", {})
    tracker.enqueue_jobs(jobs(3))
    held = tracker.claim_job("w1")
    released = tracker.release_job("w1")
    assert released == Job(held.phase, held.epoch, held.index, held.start, held.stop, attempt=1)
    assert tracker.in_flight() == {}
    assert tracker.pending_jobs() == 3
    assert tracker.claim_job("w2") == released  # first in line
    assert tracker.release_job("w1") is None  # holds nothing now
    assert tracker.release_job("nobody") is None


def test_remove_worker_requeues_the_job_it_held(tracker):
    tracker.add_worker("w1", {})
    tracker.enqueue_jobs(jobs(2))
    held = tracker.claim_job("w1")
    requeued = tracker.remove_worker("w1")
    assert requeued.id == held.id and requeued.attempt == 1
    assert tracker.pending_jobs() == 2
    tracker.add_worker("w2", {})
    assert tracker.claim_job("w2") == requeued


def test_complete_counts_ledger_worker_and_run(tracker):
    tracker.add_worker("w1", {})
    tracker.enqueue_jobs(jobs(2, phase="pretrain:0", epoch=1, k=3))
    job = tracker.claim_job("w1")
    assert tracker.complete_job("w1", job.id, 192, 0.75) is True
    w = tracker.workers()["w1"]
    assert (w.job, w.jobs_done, w.samples, w.last_loss) == (None, 1, 192, 0.75)
    assert tracker.trained_batches("pretrain:0", 1) == {0: 1, 1: 1, 2: 1}
    assert tracker.trained_batches("pretrain:0", 0) == {}
    assert tracker.trained_batches("finetune", 1) == {}
    run = tracker.run_state()
    assert (run.batches_run, run.samples_run) == (3, 192)


def test_ledger_counts_a_batch_trained_twice(tracker):
    tracker.add_worker("w1", {})
    tracker.enqueue_jobs([Job("finetune", 0, 0, 0, 2), Job("finetune", 0, 1, 1, 3)])
    for _ in range(2):
        job = tracker.claim_job("w1")
        tracker.complete_job("w1", job.id, 10, None)
    assert tracker.trained_batches("finetune", 0) == {0: 1, 1: 2, 2: 1}


def test_complete_of_a_job_not_held_changes_nothing(tracker):
    tracker.add_worker("w1", {})
    tracker.add_worker("w2", {})
    tracker.enqueue_jobs(jobs(2))
    job = tracker.claim_job("w1")
    tracker.release_job("w1")  # w1 was declared failed: its job is re-queued...
    retry = tracker.claim_job("w2")  # ...and taken by w2
    assert retry.id == job.id

    # w1's late result must not count: the job is w2's now.
    assert tracker.complete_job("w1", job.id, 64, 0.5) is False
    assert tracker.complete_job("w2", "finetune/0/1", 64, 0.5) is False  # not the job w2 holds
    assert tracker.complete_job("nobody", job.id, 64, 0.5) is False
    assert tracker.trained_batches("finetune", 0) == {}
    assert tracker.workers()["w1"].jobs_done == 0
    assert tracker.run_state().samples_run == 0
    assert tracker.in_flight() == {"w2": retry}

    assert tracker.complete_job("w2", retry.id, 64, 0.5) is True
    assert tracker.complete_job("w2", retry.id, 64, 0.5) is False  # not twice
    assert tracker.trained_batches("finetune", 0) == {0: 1, 1: 1}


def test_a_disabled_worker_can_still_finish_its_job(tracker):
    tracker.add_worker("w1", {})
    tracker.enqueue_jobs(jobs(1))
    job = tracker.claim_job("w1")
    tracker.set_enabled("w1", False)
    assert tracker.complete_job("w1", job.id, 8, 0.2) is True


def test_clear_jobs_drops_pending_and_held_but_keeps_ledger(tracker):
    tracker.add_worker("w1", {})
    tracker.add_worker("w2", {})
    tracker.enqueue_jobs(jobs(4))
    done = tracker.claim_job("w1")
    tracker.complete_job("w1", done.id, 8, 0.2)
    held = tracker.claim_job("w2")
    tracker.clear_jobs()
    assert tracker.pending_jobs() == 0
    assert tracker.in_flight() == {}
    assert tracker.complete_job("w2", held.id, 8, 0.2) is False
    assert tracker.trained_batches("finetune", 0) == {0: 1, 1: 1}


def test_concurrent_claims_hand_out_each_job_once(tracker):
    n_jobs, n_threads = 2000, 8
    tracker.enqueue_jobs(jobs(n_jobs, k=1))
    for t in range(n_threads):
        tracker.add_worker(f"w{t}", {})
    claimed: list[list[str]] = [[] for _ in range(n_threads)]
    start = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            start.wait()
            while (job := tracker.claim_job(f"w{t}")) is not None:
                claimed[t].append(job.id)
                assert tracker.complete_job(f"w{t}", job.id, 1, 0.0)
        except BaseException as e:  # surfaced below: a thread's failure must fail the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors
    assert not any(th.is_alive() for th in threads)

    counts = Counter(jid for ids in claimed for jid in ids)
    assert len(counts) == n_jobs and set(counts.values()) == {1}  # none handed out twice
    ledger = tracker.trained_batches("finetune", 0)
    assert len(ledger) == n_jobs and set(ledger.values()) == {1}  # each completed exactly once
    assert sum(w.jobs_done for w in tracker.workers().values()) == n_jobs
    assert tracker.run_state().samples_run == n_jobs
    assert tracker.pending_jobs() == 0 and tracker.in_flight() == {}


# -- run and metrics -------------------------------------------------------


def test_run_state_updates(tracker):
    assert tracker.run_state() == RunState()
    run = tracker.update_run(
        job_name="fmnist", phase="pretrain:0", epoch=1, status="training", started_at=10.0
    )
    assert run.job_name == "fmnist" and run.status == "training"
    assert run.updated_at > 0
    tracker.update_run(round=3, best_loss=0.4, updated_at=20.0)
    run = tracker.run_state()
    assert (run.phase, run.round, run.best_loss, run.updated_at) == ("pretrain:0", 3, 0.4, 20.0)


def test_update_run_takes_numpy_scalars(tracker):
    np = pytest.importorskip("numpy")
    tracker.update_run(best_loss=np.float32(0.25), epoch=np.int64(2))  # what a validation loss may be
    run = tracker.run_state()
    assert run.best_loss == pytest.approx(0.25) and run.epoch == 2


def test_update_run_rejects_unknown_fields_and_statuses(tracker):
    with pytest.raises(ClusterError, match="no field"):
        tracker.update_run(rounds=3)
    with pytest.raises(ClusterError, match="status"):
        tracker.update_run(status="running")
    assert tracker.run_state().round == 0


def test_metrics_in_order_and_last(tracker):
    for r in range(5):
        tracker.record_metrics(
            {"round": r, "loss": 1.0 / (r + 1), "samples": 64, "workers": 2, "seconds": 0.1}
        )
    assert [m["round"] for m in tracker.metrics()] == [0, 1, 2, 3, 4]
    assert [m["round"] for m in tracker.metrics(last=2)] == [3, 4]
    assert tracker.metrics(last=0) == []
    with pytest.raises(ClusterError, match="JSON-friendly"):
        tracker.record_metrics({"loss": {1, 2}})


def test_snapshot_is_json_and_complete(tracker):
    tracker.update_run(job_name="fmnist", status="training", started_at=100.0, round=2)
    tracker.add_worker("w1", {"host": "node-1"})
    tracker.add_worker("w2", {"host": "node-2"})
    tracker.heartbeat("w1", now=108.0)
    tracker.heartbeat("w2", now=109.0)
    tracker.enqueue_jobs(jobs(3))
    tracker.claim_job("w1")
    tracker.record_metrics({"round": 1, "loss": 0.5})

    snap = json.loads(json.dumps(tracker.snapshot(now=110.0)))
    assert snap["run"]["job_name"] == "fmnist"
    assert snap["run"]["elapsed_s"] == pytest.approx(10.0)
    assert set(snap["workers"]) == {"w1", "w2"}
    assert snap["workers"]["w1"]["seconds_since_heartbeat"] == pytest.approx(2.0)
    assert snap["workers"]["w1"]["job"]["index"] == 0
    assert snap["workers"]["w2"]["job"] is None
    assert (snap["pending_jobs"], snap["in_flight_jobs"]) == (2, 1)
    assert snap["metrics"] == [{"round": 1, "loss": 0.5}]


# -- tracker_from_url ------------------------------------------------------


def test_tracker_from_url():
    assert isinstance(tracker_from_url("memory://"), MemoryStateTracker)
    assert isinstance(tracker_from_url("memory://", job_name="fmnist"), MemoryStateTracker)
    # A malformed Redis URL fails before any connection is tried (a reachable one: test_redis_tracker.py).
    with pytest.raises(ConfigError, match="port must be a number"):
        tracker_from_url("redis://:secret@localhost:port/0")
    with pytest.raises(ConfigError, match="memory://, redis://"):
        tracker_from_url("hazelcast://localhost")
    with pytest.raises(ConfigError, match="state_url"):
        tracker_from_url("localhost:6379")


# -- status file -----------------------------------------------------------


def _snapshot() -> dict:
    t = MemoryStateTracker()
    t.update_run(job_name="fmnist", status="training", phase="finetune", started_at=100.0, last_loss=0.3456)
    t.add_worker("worker-a", {"host": "node-1"})
    t.add_worker("worker-b", {"host": "node-2"})
    t.heartbeat("worker-a", now=119.0)
    t.heartbeat("worker-b", now=118.0)
    t.enqueue_jobs(jobs(3))
    t.claim_job("worker-a")
    return t.snapshot(now=120.0)


def test_status_path_uses_deepgrid_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path / "home"))
    assert status_path("fmnist") == tmp_path / "home" / "runs" / "fmnist" / "status.json"
    assert status_path("fmnist", home=tmp_path) == tmp_path / "runs" / "fmnist" / "status.json"
    monkeypatch.delenv("DEEPGRID_HOME")
    assert status_path("x").parts[-4:] == (".deepgrid", "runs", "x", "status.json")
    for bad in ("", "..", "a/b"):
        with pytest.raises(ConfigError, match="job_name"):
            status_path(bad, home=tmp_path)


def test_status_write_read_round_trip(tmp_path):
    path = status_path("fmnist", home=tmp_path)
    snap = _snapshot()
    write_status(path, snap)
    assert read_status(path) == snap
    write_status(path, {**snap, "pending_jobs": 0})  # rewritten in place after each round
    assert read_status(path)["pending_jobs"] == 0
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]  # no temp files left


def test_read_status_of_a_missing_run_lists_the_recorded_ones(tmp_path):
    write_status(status_path("alpha", home=tmp_path), _snapshot())
    write_status(status_path("beta", home=tmp_path), _snapshot())
    with pytest.raises(ConfigError, match="No run named 'gamma'") as e:
        read_status(status_path("gamma", home=tmp_path))
    assert "alpha, beta" in str(e.value) and "deepgrid train" in str(e.value)
    with pytest.raises(ConfigError, match="no runs are recorded"):
        read_status(status_path("gamma", home=tmp_path / "empty"))


def test_read_status_of_a_damaged_file(tmp_path):
    path = status_path("fmnist", home=tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ClusterError, match="damaged"):
        read_status(path)
    path.write_text("[1, 2]")
    with pytest.raises(ClusterError, match="damaged"):
        read_status(path)


def test_format_status_shows_run_workers_and_jobs():
    text = format_status(_snapshot(), now=125.0)
    first = text.splitlines()[0]
    for part in ("job fmnist", "status training", "phase finetune", "last loss 0.3456", "elapsed 20.0s"):
        assert part in first
    assert "snapshot taken 5.0s ago" in text
    assert "worker-a" in text and "worker-b" in text and "node-2" in text
    assert "finetune/0/0" in text
    assert "jobs: 2 pending, 1 in flight" in text


def test_format_status_without_workers():
    text = format_status(MemoryStateTracker().snapshot(now=1.0), now=1.0)
    assert "no workers registered" in text and "jobs: 0 pending, 0 in flight" in text


def test_claim_with_shards_takes_the_first_matching_job_and_leaves_the_rest(tracker) -> None:
    tracker.add_worker("w1", {"host": "h"})
    tracker.add_worker("w2", {"host": "h"})
    tracker.enqueue_jobs([Job("f", 0, 0, 0, 1, shard=2), Job("f", 0, 1, 1, 2, shard=5),
                          Job("f", 0, 2, 2, 3, shard=2), Job("f", 0, 3, 3, 4)])
    assert tracker.claim_job("w1", [7]) is None and tracker.pending_jobs() == 4  # nothing of shard 7
    assert tracker.claim_job("w1", []) is None
    job = tracker.claim_job("w1", {5, 9})
    assert (job.index, job.shard) == (1, 5) and tracker.pending_jobs() == 3
    assert tracker.claim_job("w1", [2]) == job  # a worker holds one job: a retried claim returns it
    assert tracker.in_flight()["w1"] == job
    assert tracker.complete_job("w1", job.id, 4, 0.5)
    assert tracker.trained_batches("f", 0) == {1: 1}
    assert tracker.claim_job("w2", [2]).index == 0
    tracker.release_job("w2")  # back to the front, shard kept
    again = tracker.claim_job("w1", [2])
    assert (again.index, again.shard, again.attempt) == (0, 2, 1)
    assert tracker.claim_job("w2").index == 2  # without shards: the queue's order, as always
    tracker.complete_job("w1", again.id, 4, 0.5)
    last = tracker.claim_job("w1")
    assert last.shard is None and last.index == 3
    tracker.set_enabled("w2", False)
    tracker.complete_job("w2", "f/0/2", 4, 0.5)
    tracker.enqueue_jobs([Job("f", 0, 4, 4, 5, shard=1)])
    assert tracker.claim_job("w2", [1]) is None  # disabled: nothing, with or without shards
    assert sorted(tracker.trained_batches("f", 0)) == [0, 1, 2]
