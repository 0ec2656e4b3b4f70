"""The Redis state tracker beyond the conformance suite (tests/unit/test_state_tracker.py runs that
against Redis too): URLs and passwords, the key layout, one clear error for each way of failing,
a Redis restart in the middle of a run, and many workers at once on one real redis-server.

Every server here is started by the test (tests/redis_server.py): loopback, a free port, its own
directory, a password, no snapshots. Skipped where redis-server is not installed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter

import pytest

from deepgrid.config.conf import Conf
from deepgrid.errors import ClusterError, ConfigError
from deepgrid.state import Job, tracker_from_url
from deepgrid.state.redis import RedisStateTracker
from deepgrid.state.redis_address import PASSWORD_ENV, PASSWORD_FILE_ENV, RedisAddress, parse_redis_url
from tests.redis_server import PASSWORD, RedisServer, free_port, require_redis_server

LOGGER = "deepgrid.state.redis"  # every module of the tracker logs under this one name


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_redis_server()
    with RedisServer(tmp_path_factory.mktemp("redis")) as s:
        yield s


@pytest.fixture
def job_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def tracker(server, job_name):
    t = RedisStateTracker(server.url, job_name, fresh=True)
    yield t
    t.purge()
    t.close()


def jobs(n: int, phase: str = "finetune", epoch: int = 0, k: int = 2) -> list[Job]:
    return [Job(phase, epoch, i, i * k, (i + 1) * k) for i in range(n)]


class Signal(logging.Handler):
    """Sets an event when a log message containing ``text`` arrives: a test waits on it, not a clock."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text, self.event, self.messages = text, threading.Event(), []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if self.text in message:
            self.event.set()


@pytest.fixture
def lost_signal():
    handler = Signal("Lost the connection")
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    before = logger.level
    logger.setLevel(logging.WARNING)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(before)


# -- URLs and passwords ----------------------------------------------------------------------


def test_parse_redis_url_forms():
    assert parse_redis_url("redis://localhost", env={}) == RedisAddress("localhost")
    a = parse_redis_url("redis://:s%40cret@10.0.0.5:6380/2", env={})
    assert (a.host, a.port, a.db, a.tls, a.username, a.password) == ("10.0.0.5", 6380, 2, False, None, "s@cret")
    assert a.password_source == "state_url" and a.address == "10.0.0.5:6380"
    b = parse_redis_url("rediss://deepgrid:pw@redis.example.org:6390/0?retry_timeout_s=5", env={})
    assert (b.tls, b.username, b.password, b.retry_timeout_s) == (True, "deepgrid", "pw", 5.0)
    assert parse_redis_url("redis://[::1]:7000", env={}).address == "[::1]:7000"
    assert "pw" not in repr(b)  # the dataclass never shows the password


@pytest.mark.parametrize("url, why", [
    ("http://:pw@localhost:6379", "scheme must be redis:// or rediss://"),
    ("redis://:pw@:6379/0", "names no host"),
    ("redis://:pw@localhost:63x9/0", "port must be a number"),
    ("redis://:pw@localhost:99999/0", "port must be a number"),
    ("redis://:pw@localhost:6379/zero", "database must be a number"),
    ("redis://:pw@localhost:6379/0?timeout=3", "unknown option 'timeout'"),
    ("redis://:pw@localhost:6379/0?retry_timeout_s=-1", "retry_timeout_s must be a positive number"),
    # Issue 8, defect 8: inf passed, then overflowed into a traceback at the first write.
    ("redis://:pw@localhost:6379/0?retry_timeout_s=inf", "retry_timeout_s must be a positive number"),
    ("redis://:pw@localhost:6379/0?retry_timeout_s=1e308", "at most 86400"),
    ("redis://:pw@localhost:6379/0?retry_timeout_s=nan", "retry_timeout_s must be a positive number"),
])
def test_malformed_urls_are_one_clear_line_without_the_password(url, why):
    with pytest.raises(ConfigError, match="state_url") as e:
        parse_redis_url(url, env={})
    message = str(e.value)
    assert why in message and "\n" not in message
    assert "pw" not in message.replace("PASSWORD", "")  # masked: ':***@'


def test_password_from_environment_and_file(tmp_path):
    env = {PASSWORD_ENV: "from-env"}
    assert parse_redis_url("redis://h:1/0", env=env).password == "from-env"
    assert parse_redis_url("redis://:from-url@h:1/0", env=env).password == "from-url"  # the URL wins
    secret = tmp_path / "redis-password"
    secret.write_text("from-file\n")
    a = parse_redis_url("redis://h:1/0", env={PASSWORD_FILE_ENV: str(secret)})
    assert a.password == "from-file" and PASSWORD_FILE_ENV in a.password_source
    assert parse_redis_url("redis://h:1/0", env={**env, PASSWORD_FILE_ENV: str(secret)}).password == "from-env"
    # A URL as deepgrid stores it (masked, in a checkpoint or the registry): the password comes from the env.
    assert parse_redis_url("redis://:***@h:1/0", env=env).password == "from-env"
    assert parse_redis_url("redis://:***@h:1/0", env={}).password is None
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_redis_url("redis://h:1/0", env={PASSWORD_FILE_ENV: str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        parse_redis_url("redis://h:1/0", env={PASSWORD_FILE_ENV: str(tmp_path / "empty")})


def test_an_infinite_retry_timeout_is_refused_by_the_tracker_too(server, job_name):
    """Issue 8, defect 8: retry_timeout_s=inf overflowed the one-time tokens' expiry (a traceback)."""
    with pytest.raises(ConfigError) as e:
        RedisStateTracker(server.url, job_name, retry_timeout_s=float("inf"))
    assert "retry_timeout_s" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("url, warns", [
    ("redis://10.1.2.3:6379/0", True),
    ("redis://redis.lan:6379/0", True),
    ("redis://:pw@10.1.2.3:6379/0", False),  # a password
    ("rediss://10.1.2.3:6379/0", False),  # TLS
    ("redis://127.0.0.1:6379/0", False),  # loopback
    ("redis://localhost:6379/0", False),
    ("redis://[::1]:6379/0", False),
])
def test_an_exposed_redis_is_warned_about_once(url, warns, caplog, monkeypatch):
    """Issue 8, defect 6: a Redis across the network with neither TLS nor a password is warned about, once."""
    import deepgrid.state.redis_address as address_module

    monkeypatch.setattr(address_module, "_warned_exposed", set())
    where = parse_redis_url(url, env={})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        address_module.warn_if_exposed(where)
        address_module.warn_if_exposed(where)
    warnings = [r.getMessage() for r in caplog.records if "without TLS and without a password" in r.getMessage()]
    assert len(warnings) == (1 if warns else 0), warnings
    if warns:
        assert where.address in warnings[0] and "\n" not in warnings[0]


def test_a_non_ascii_job_name_works(server):
    """Issue 8, defect 8: a non-ASCII job name was refused by Redis as a client name, reported as
    "deepgrid needs Redis 6 or later with Lua scripting allowed"."""
    name = f"jöb-ünïcode-{uuid.uuid4().hex[:6]}"
    t = RedisStateTracker(server.url, name, fresh=True)
    try:
        t.add_worker("w1", {"host": "node"})
        t.enqueue_jobs(jobs(2))
        assert set(t.workers()) == {"w1"} and t.pending_jobs() == 2
        with server.client() as r:
            assert r.exists(f"deepgrid:{name}:workers")
    finally:
        t.purge()
        t.close()


def test_conf_describe_masks_redis_passwords():
    conf = Conf(state_url="rediss://deepgrid:hunter2@redis.example.org:6390/1")
    text = conf.describe()
    assert "hunter2" not in text and "rediss://deepgrid:***@redis.example.org:6390/1" in text


def test_bad_job_names_are_refused(server):
    for bad in ("", "a:b", "two words", "star*", "br[ack]et"):
        with pytest.raises(ConfigError, match="job_name"):
            RedisStateTracker(server.url, bad)


# -- connecting ------------------------------------------------------------------------------


def test_tracker_from_url_opens_a_namespaced_redis_tracker(server, job_name):
    t = tracker_from_url(server.url, job_name=job_name)
    try:
        assert isinstance(t, RedisStateTracker) and t.prefix == f"deepgrid:{job_name}:"
        assert PASSWORD not in repr(t) and "***" in repr(t)
    finally:
        t.purge()
        t.close()


def test_password_from_environment_connects(server, job_name, monkeypatch, tmp_path):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    t = RedisStateTracker(server.url_without_password(), job_name)
    assert t.heartbeat("nobody") is False
    t.close()
    monkeypatch.delenv(PASSWORD_ENV)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(secret))
    t = RedisStateTracker(server.url_without_password(), job_name)
    assert t.pending_jobs() == 0
    t.purge()
    t.close()


def test_wrong_password_is_one_clear_line(server, job_name, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_FILE_ENV, raising=False)
    start = time.monotonic()
    with pytest.raises(ClusterError) as e:
        RedisStateTracker(f"redis://:wrong-guess@{server.address}/0", job_name)
    message = str(e.value)
    assert message.startswith(f"Redis at {server.address} refused the password")
    assert "state_url" in message and PASSWORD_ENV in message and "wrong-guess" not in message
    assert time.monotonic() - start < 5  # a refused password is not retried
    with pytest.raises(ClusterError, match=f"Redis at {server.address} requires a password and none was given"):
        RedisStateTracker(server.url_without_password(), job_name)


def test_unreachable_redis_fails_soon_naming_the_address(job_name):
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ClusterError) as e:
        RedisStateTracker(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", job_name, retry_timeout_s=1.0)
    elapsed = time.monotonic() - start
    message = str(e.value)
    assert message.startswith(f"Cannot reach Redis at 127.0.0.1:{port}") and "Start redis-server" in message
    assert PASSWORD not in message
    assert elapsed >= 0.9  # it retried for its budget before giving up (no upper bound: shared machines are slow)


def test_unreachable_redis_default_budget_is_under_30_s():
    from deepgrid.state import redis_connection as module

    # The start-up budget plus one connect timeout: how long the worst case takes.
    assert module.STARTUP_TIMEOUT_S + module.CONNECT_TIMEOUT_S < 30


# -- key layout and namespaces ---------------------------------------------------------------


def test_key_layout_is_as_documented(server, tracker, job_name):
    tracker.add_worker("w1", {"host": "node-1"})
    tracker.enqueue_jobs(jobs(3, phase="pretrain:0", epoch=1))
    job = tracker.claim_job("w1")
    tracker.complete_job("w1", job.id, 64, 0.5)
    tracker.claim_job("w1")
    tracker.update_run(status="training", round=1)
    tracker.record_metrics({"round": 1, "loss": 0.5})
    p = f"deepgrid:{job_name}:"
    with server.client() as r:
        keys = {k for k in r.scan_iter(match=p + "*") if ":once:" not in k}
        assert keys == {p + "workers", p + "worker:w1", p + "queue", p + "ledger:pretrain:0:1", p + "run",
                        p + "metrics", p + "marker", p + "lease"}
        assert json.loads(r.get(p + "lease"))["pid"] == os.getpid() and 0 < r.pttl(p + "lease") <= 15000
        assert r.smembers(p + "workers") == {"w1"}
        w = r.hgetall(p + "worker:w1")
        assert w["enabled"] == "1" and w["jobs_done"] == "1" and w["job_id"] == "pretrain:0/1/1"
        assert r.llen(p + "queue") == 1
        assert r.hgetall(p + "ledger:pretrain:0:1") == {"0": "1", "1": "1"}
        assert r.hget(p + "run", "status") == '"training"'
        assert r.lrange(p + "metrics", 0, -1) == ['{"round": 1, "loss": 0.5}']


def test_runs_with_different_job_names_do_not_see_each_other(server):
    a = RedisStateTracker(server.url, "ns-a", fresh=True)
    b = RedisStateTracker(server.url, "ns-b", fresh=True)
    try:
        a.add_worker("w1", {})
        a.enqueue_jobs(jobs(2))
        a.update_run(status="training")
        assert b.workers() == {} and b.pending_jobs() == 0 and b.run_state().status == "starting"
        assert b.claim_job("w1") is None
    finally:
        for t in (a, b):
            t.purge()
            t.close()


def test_fresh_clears_an_earlier_run_of_the_same_name_only(server, job_name):
    first = RedisStateTracker(server.url, job_name, fresh=True)
    other = RedisStateTracker(server.url, job_name + "-other", fresh=True)
    first.add_worker("old", {})
    first.enqueue_jobs(jobs(2))
    other.add_worker("keep", {})
    reader = RedisStateTracker(server.url, job_name)  # what `deepgrid status` opens: state as it is
    assert set(reader.workers()) == {"old"} and reader.pending_jobs() == 2
    first.close()  # the earlier run's master is gone (while it runs, a second master is refused: see below)
    second = RedisStateTracker(server.url, job_name, fresh=True)
    assert second.workers() == {} and second.pending_jobs() == 0
    assert set(other.workers()) == {"keep"}
    for t in (other, reader, second):
        t.purge()
        t.close()


# -- one master per job: the lease (issue 8, defect 7) ------------------------------------------------
LEASE_S = 1.5  # short, so that a dead master's lease runs out quickly in these tests


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "resuming"])
def test_a_second_master_of_a_running_job_is_refused_and_purges_nothing(server, job_name, fresh):
    """Defect 7: a second master with the same job name silently purged the first one's state."""
    # A fresh master as the runner opens it today (fresh=True alone, the default lease); a
    # resuming one passes master=True.
    options = {} if fresh else {"master": True, "lease_s": LEASE_S}
    first = RedisStateTracker(server.url, job_name, fresh=True, **options)
    try:
        first.add_worker("w1", {})
        first.enqueue_jobs(jobs(2))
        with pytest.raises(ClusterError) as e:
            RedisStateTracker(server.url, job_name, fresh=fresh, **options)
        message = str(e.value)
        assert "another master" in message and job_name in message and "job_name" in message
        assert "\n" not in message and PASSWORD not in message
        assert set(first.workers()) == {"w1"} and first.pending_jobs() == 2  # untouched
        assert first.claim_job("w1") is not None  # and the first master goes on
        reader = RedisStateTracker(server.url, job_name)  # readers take no lease
        assert set(reader.workers()) == {"w1"}
        reader.close()
    finally:
        first.purge()
        first.close()
    # A master that ended cleanly let go of its lease: the next one starts at once.
    after = RedisStateTracker(server.url, job_name, fresh=True)
    after.close()


MASTER_SCRIPT = """
import sys, time
from deepgrid.state import Job
from deepgrid.state.redis import RedisStateTracker
t = RedisStateTracker(sys.argv[1], sys.argv[2], fresh=True, lease_s=float(sys.argv[3]))
t.add_worker("w1", {})
t.enqueue_jobs([Job("finetune", 0, i, 2 * i, 2 * i + 2) for i in range(3)])
print("ready", flush=True)
try:
    while True:
        t.pending_jobs()
        time.sleep(0.05)
except Exception as e:
    print("stopped:", e, flush=True)
    sys.exit(3)
"""


def start_master_process(server, job_name):
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", MASTER_SCRIPT, server.url, job_name, str(LEASE_S)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready", process.stderr.read()
    return process


def test_a_resumed_master_takes_over_once_a_killed_masters_lease_runs_out(server, job_name):
    """Defect 7: a master killed with SIGKILL leaves its lease; a resumed master (fresh=False) waits
    for it to run out, takes over, and finds the run's state as it was."""
    import signal

    process = start_master_process(server, job_name)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    resumed = RedisStateTracker(server.url, job_name, fresh=False, master=True, lease_s=LEASE_S)
    try:
        assert set(resumed.workers()) == {"w1"} and resumed.pending_jobs() == 3  # carried on, not purged
        with server.client() as r:
            assert r.get(f"deepgrid:{job_name}:lease") == resumed._lease.token
    finally:
        resumed.purge()
        resumed.close()


def test_a_stopped_master_that_lost_its_lease_stops(server, job_name):
    """Defect 7: a master stopped (SIGSTOP) past its lease, whose job another master took over,
    must not go on beside it: its next call raises one line and it stops."""
    import signal

    process = start_master_process(server, job_name)
    try:
        process.send_signal(signal.SIGSTOP)
        second = RedisStateTracker(server.url, job_name, fresh=False, master=True, lease_s=LEASE_S)
        process.send_signal(signal.SIGCONT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 3, (out, err)
        assert "took over job" in out and "two masters never train one job" in out
        assert second.pending_jobs() == 3
        second.purge()
        second.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_retried_write_returns_its_first_answer(tracker):
    # Simulate a reply lost after the server applied the write: the retry carries the same token.
    tracker.add_worker("w1", {})
    tracker.enqueue_jobs(jobs(2))
    job = tracker.claim_job("w1")
    token = f"{tracker.prefix}once:fixed"
    tracker._once = lambda: token
    assert tracker.complete_job("w1", job.id, 10, 0.1) is True
    assert tracker.complete_job("w1", job.id, 10, 0.1) is True  # the retry: same answer...
    assert tracker.trained_batches("finetune", 0) == {0: 1, 1: 1}  # ...not counted twice
    assert tracker.run_state().samples_run == 10
    tracker._once = lambda: f"{tracker.prefix}once:{uuid.uuid4().hex}"
    tracker.enqueue_jobs(jobs(1, epoch=1))
    assert tracker.pending_jobs() == 2


# -- outages and restarts --------------------------------------------------------------------


def test_restart_with_append_only_file_continues_where_it_was(tmp_path, job_name, lost_signal):
    server = RedisServer(tmp_path / "aof", appendonly=True).start()
    try:
        t = RedisStateTracker(server.url, job_name, fresh=True, retry_timeout_s=30)
        for wid in ("w1", "w2", "w3", "w4"):
            t.add_worker(wid, {"host": "node"})
        t.enqueue_jobs(jobs(4))
        done = t.claim_job("w1")
        assert t.complete_job("w1", done.id, 64, 0.5)
        held = t.claim_job("w2")

        server.stop()
        answers: dict[str, bool] = {}

        def beat(wid: str) -> None:
            answers[wid] = t.heartbeat(wid, now=500.0)

        # Several threads hit the outage at once; they retry until Redis is back.
        threads = [threading.Thread(target=beat, args=(wid,)) for wid in ("w1", "w2", "w3", "w4")]
        for th in threads:
            th.start()
        assert lost_signal.event.wait(30), "no outage was reported"
        server.start()  # same port, same directory: the append-only file brings the state back
        for th in threads:
            th.join(60)
        assert answers == {"w1": True, "w2": True, "w3": True, "w4": True}
        assert sum("Lost the connection" in m for m in lost_signal.messages) == 1  # once per outage
        assert any("is back after" in m for m in lost_signal.messages)
        assert all(PASSWORD not in m for m in lost_signal.messages)

        assert t.in_flight() == {"w2": held}
        assert t.pending_jobs() == 2 and t.trained_batches("finetune", 0) == {0: 1, 1: 1}
        assert t.complete_job("w2", held.id, 64, 0.4)
        assert t.run_state().samples_run == 128
        t.close()
    finally:
        server.stop()


def test_restart_without_persistence_raises_clearly(tmp_path, job_name):
    server = RedisServer(tmp_path / "plain").start()
    try:
        t = RedisStateTracker(server.url, job_name, fresh=True, retry_timeout_s=30)
        t.add_worker("w1", {})
        t.enqueue_jobs(jobs(2))
        server.stop()
        server.start()  # same port, but nothing kept: the run's state is gone
        with pytest.raises(ClusterError, match=f"Redis at {server.address} came back without the state"):
            t.heartbeat("w1")
        with pytest.raises(ClusterError, match="appendonly yes"):
            t.pending_jobs()  # and it stays refused: no carrying on with empty state
        t.close()
    finally:
        server.stop()


def test_outage_longer_than_the_budget_raises(tmp_path, job_name, lost_signal):
    server = RedisServer(tmp_path / "gone").start()
    try:
        t = RedisStateTracker(server.url, job_name, fresh=True, retry_timeout_s=0.5)
        t.add_worker("w1", {})
    finally:
        server.stop()
    start = time.monotonic()
    with pytest.raises(ClusterError) as e:
        t.claim_job("w1")
    message = str(e.value)
    assert message.startswith(f"Lost the connection to Redis at {server.address} and it did not come back within")
    assert PASSWORD not in message
    assert time.monotonic() - start < 10
    assert lost_signal.event.is_set()
    t.close()


# -- many workers at once --------------------------------------------------------------------


def test_sixteen_workers_at_once_lose_nothing_and_count_exactly(server, job_name):
    n_workers, n_jobs, k = 16, 480, 3
    master = RedisStateTracker(server.url, job_name, fresh=True)
    master.enqueue_jobs(jobs(n_jobs, k=k))
    # Each worker has its own tracker, as separate processes would: its own connections.
    trackers = [RedisStateTracker(server.url, job_name) for _ in range(n_workers)]
    for i, t in enumerate(trackers):
        t.add_worker(f"w{i}", {"i": i})
    claims: list[list[tuple[str, int]]] = [[] for _ in range(n_workers)]
    completed: list[list[str]] = [[] for _ in range(n_workers)]
    samples = [0] * n_workers
    errors: list[BaseException] = []
    go = threading.Barrier(n_workers + 1)
    running = threading.Event()
    running.set()

    def worker(i: int) -> None:
        t, wid, rng = trackers[i], f"w{i}", random.Random(i)
        try:
            go.wait()
            idle = 0
            while idle < 3:  # an empty queue three times in a row: all jobs are taken
                if not t.heartbeat(wid):
                    t.add_worker(wid, {"i": i})  # removed by the monitor: register again
                job = t.claim_job(wid)
                if job is None:
                    idle += 1 if t.pending_jobs() == 0 else 0
                    continue
                idle = 0
                claims[i].append((job.id, job.attempt))
                if rng.random() < 0.1:
                    t.release_job(wid)  # a failure: the job goes back for someone else
                    continue
                n = rng.randint(1, 64)
                if t.complete_job(wid, job.id, n, rng.random()):
                    completed[i].append(job.id)
                    samples[i] += n
                    t.record_metrics({"worker": wid, "job": job.id})
        except BaseException as e:  # surfaced below: a thread's failure must fail the test
            errors.append(e)

    def monitor() -> None:
        # The master side at the same time: reads, snapshots, and now and then drops a worker.
        rng = random.Random(99)
        try:
            go.wait()
            while running.is_set():
                master.snapshot()
                master.in_flight()
                if rng.random() < 0.2:
                    master.remove_worker(f"w{rng.randrange(n_workers)}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_workers)]
    watcher = threading.Thread(target=monitor)
    for th in [*threads, watcher]:
        th.start()
    for th in threads:
        th.join(120)
    running.clear()
    watcher.join(30)
    assert not errors, errors
    assert not any(th.is_alive() for th in [*threads, watcher])

    # A job whose worker was removed while it trained goes back to the queue; the queue must end empty
    # with every job completed exactly once.
    assert master.pending_jobs() == 0 and master.in_flight() == {}
    done = Counter(jid for ids in completed for jid in ids)
    assert len(done) == n_jobs and set(done.values()) == {1}
    handed = Counter(c for ids in claims for c in ids)
    assert set(handed.values()) == {1}  # no (job, attempt) was handed out twice
    ledger = master.trained_batches("finetune", 0)
    assert ledger == {p: 1 for p in range(n_jobs * k)}
    run = master.run_state()
    assert run.batches_run == n_jobs * k and run.samples_run == sum(samples)
    assert sum(w.jobs_done for w in master.workers().values()) <= n_jobs  # removed workers take theirs along
    assert len(master.metrics()) == n_jobs
    for t in trackers:
        t.close()
    master.purge()
    master.close()


def test_heartbeats_racing_a_removal_never_bring_the_worker_back(server, tracker, job_name):
    tracker.add_worker("w", {})
    go = threading.Barrier(17)
    answers: list[bool] = []

    def beat() -> None:
        go.wait()
        while tracker.heartbeat("w"):
            pass
        answers.append(False)

    threads = [threading.Thread(target=beat) for _ in range(16)]
    for th in threads:
        th.start()
    go.wait()
    tracker.remove_worker("w")
    for th in threads:
        th.join(30)
    assert answers == [False] * 16
    assert tracker.workers() == {}
    with server.client() as r:
        assert not r.exists(f"deepgrid:{job_name}:worker:w")  # no half-written hash left behind


# -- the command line ------------------------------------------------------------------------


def test_cli_status_reads_a_run_from_redis(server, tracker, job_name, capsys, monkeypatch):
    from deepgrid.cli import build_parser, main

    tracker.update_run(job_name=job_name, status="training", phase="finetune", started_at=time.time(), begun=True)
    tracker.add_worker("worker-a", {"host": "node-1"})
    tracker.enqueue_jobs(jobs(3))
    tracker.claim_job("worker-a")
    assert main(["status", "--state", server.url, "--job", job_name]) == 0
    out = capsys.readouterr().out
    assert f"job {job_name}" in out and "worker-a" in out and "jobs: 2 pending, 1 in flight" in out
    assert tracker.pending_jobs() == 2  # reading never clears

    assert main(["status", "--state", server.url, "--job", "no-such-run"]) == 2
    err = capsys.readouterr().err
    assert "No run named 'no-such-run'" in err and PASSWORD not in err
    assert main(["status", "--state", "memory://", "--job", job_name]) == 2
    assert "memory://" in capsys.readouterr().err

    for command in (["train"], ["master", "conf.yaml"]):
        args = build_parser().parse_args([*command, "--state", server.url])
        assert args.state == server.url
