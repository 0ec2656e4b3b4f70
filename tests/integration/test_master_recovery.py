"""Master recovery, end to end: `deepgrid train --state redis://...` as its own OS process.

(a) The master is SIGKILLed mid-run and started again with --resume: it loses at most one round,
    the Redis ledger shows every mini-batch of every epoch trained, and the dead run's workers
    are gone from the tracker. The time from the kill to the resumed run's first round is printed.
(b) Redis restarts (append-only file, same port) during a run: the run retries, then completes.
(c) Redis goes away for good: the run stops with one ClusterError line, exit status 2, and a
    checkpoint that --resume continues from.

The data are a tiny fake Fashion-MNIST (the CLI reads IDX files of 28x28 images), so each run
takes seconds; most of a test's time is Ray starting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from deepgrid.checkpoint import list_checkpoints, load_latest_checkpoint
from deepgrid.state.redis import RedisStateTracker
from tests.integration.test_master_worker_cli import fake_fashion_mnist
from tests.redis_server import RedisServer, require_redis_server

DEEPGRID = [sys.executable, "-m", "deepgrid.cli"]
N_TRAIN, BATCH, WORKERS, K = 2000, 32, 2, 1
N_BATCHES = N_TRAIN // BATCH  # a ragged last batch is dropped
RUN_TIMEOUT_S = 240.0


class Setting:
    def __init__(self, tmp_path: Path, job: str, epochs: int) -> None:
        self.tmp_path, self.job, self.epochs = tmp_path, job, epochs
        data = tmp_path / "data"
        data.mkdir()
        fake_fashion_mnist(data, n_train=N_TRAIN, n_test=200)
        self.checkpoints = tmp_path / "checkpoints"
        self.conf = tmp_path / "conf.yaml"
        self.conf.write_text(f"""
model: mlp
job_name: {job}
data_dir: {data}
batch_size: {BATCH}
epochs: {epochs}
averaging_frequency: {K}
checkpoint_dir: {self.checkpoints}
network:
  hidden_layer_sizes: [16]
  activation: relu
""")
        self.env = {**os.environ, "DEEPGRID_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
        self.runs = 0

    def train(self, url: str, *extra: str) -> Master:
        self.runs += 1
        log = self.tmp_path / f"run{self.runs}.err"
        args = ["train", str(self.conf), "--workers", str(WORKERS), "--state", url,
                "-o", str(self.tmp_path / "model"), *extra]
        with open(log, "w") as err, open(self.tmp_path / f"run{self.runs}.out", "w") as out:
            # Its own session: the Ray processes it starts can be found (and ended) by session id.
            process = subprocess.Popen(DEEPGRID + args, env=self.env, stdout=out, stderr=err,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        return Master(process, log)


class Master:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process, self.log = process, log

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the master did not finish within {timeout} s:\n{self.stderr[-3000:]}") from None

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = RUN_TIMEOUT_S) -> None:
        """Poll ``condition`` (the wait on the process is the poll interval); fail if the master exits."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the master exited ({self.process.returncode}) before {what}:\n"
                                     f"{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s:\n{self.stderr[-3000:]}")
            try:
                self.process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass


# -- processes ----------------------------------------------------------------------------------
def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command) for every process on the machine."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,sid=,args="], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3:
            table[int(parts[0])] = (int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else "")
    return table


def process_tree(root: int) -> set[int]:
    """``root``, its descendants, and everything in its session (Ray starts some processes detached)."""
    table = processes()
    found = {root} | {pid for pid, (_, sid, _) in table.items() if sid == root}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def end_leftovers(root: int, pids: set[int], timeout: float = 10.0) -> list[str]:
    """Give the processes of a killed master ``timeout`` seconds to go by themselves (Ray's
    processes notice their driver died), then SIGKILL those still there. ``pids`` is its process
    tree taken before the kill; processes started since are found by its session. Returns what was killed."""
    def alive() -> dict[int, str]:
        return {pid: cmd for pid, (_, sid, cmd) in processes().items()
                if pid != root and (pid in pids or sid == root) and "<defunct>" not in cmd}

    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)  # polling, bounded by the deadline
    killed = []
    for pid, cmd in alive().items():
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(cmd[:100])
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while alive():
        assert time.monotonic() < deadline, f"processes of the killed master survive SIGKILL: {alive()}"
        time.sleep(0.1)
    return killed


# -- Redis --------------------------------------------------------------------------------------
@pytest.fixture()
def redis_server(tmp_path: Path):
    require_redis_server()
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


def reader(server: RedisServer, job: str) -> RedisStateTracker:
    return RedisStateTracker(server.url, job_name=job)


def redis_round(server: RedisServer, job: str) -> int:
    """The round the tracker shows; 0 while Redis is unreachable or the run has not started."""
    try:
        with server.client() as client:
            value = client.hget(f"deepgrid:{job}:run", "round")
    except Exception:
        return 0
    return int(json.loads(value)) if value else 0


def metrics_count(server: RedisServer, job: str) -> int:
    with server.client() as client:
        return int(client.llen(f"deepgrid:{job}:metrics"))


def newest_checkpoint_round(directory: Path) -> int:
    found = list_checkpoints(directory)
    return int(found[-1].name.split("-")[1]) if found else -1


def assert_ledger_complete(server: RedisServer, job: str, epochs: int, max_repeats: int) -> None:
    """Every mini-batch of every epoch trained at least once; at most ``max_repeats`` trained twice."""
    tracker = reader(server, job)
    try:
        repeats = 0
        for epoch in range(epochs):
            ledger = tracker.trained_batches("finetune", epoch)
            assert sorted(ledger) == list(range(N_BATCHES)), f"epoch {epoch}: missing batches"
            assert min(ledger.values()) >= 1
            repeats += sum(count - 1 for count in ledger.values())
        assert repeats <= max_repeats, f"{repeats} batches trained again; at most {max_repeats} expected"
        run = tracker.run_state()
        assert run.status == "done" and run.done
    finally:
        tracker.close()


# -- the tests ----------------------------------------------------------------------------------
def test_master_killed_and_resumed_loses_at_most_one_round(tmp_path: Path, redis_server: RedisServer) -> None:
    job = "recover-kill"
    setting = Setting(tmp_path, job, epochs=6)
    first = setting.train(redis_server.url)
    first.wait_for("checkpoint of round 40", lambda: newest_checkpoint_round(setting.checkpoints) >= 40)
    tree = process_tree(first.process.pid)
    first.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    first.process.wait()

    reached = redis_round(redis_server, job)
    saved = newest_checkpoint_round(setting.checkpoints)
    before_kill = metrics_count(redis_server, job)
    tracker = reader(redis_server, job)
    stale_workers = set(tracker.workers())
    tracker.close()
    assert len(stale_workers) == WORKERS
    assert 0 <= reached - saved <= 1, f"the tracker shows round {reached}, the newest checkpoint is {saved}"

    second = setting.train(redis_server.url, "--resume", str(setting.checkpoints))
    second.wait_for("a round of the resumed run", lambda: metrics_count(redis_server, job) > before_kill)
    resumed_s = time.monotonic() - killed_at
    leftovers = end_leftovers(first.process.pid, tree)
    assert second.finish() == 0, second.stderr[-3000:]
    print(f"\nmaster killed at round {reached} (newest checkpoint: round {saved}); the resumed run trained its "
          f"first round {resumed_s:.1f} s after the kill; Ray processes that outlived the master and "
          f"were killed: {len(leftovers)} {leftovers}")

    assert f"resuming from round {saved}" in second.stderr
    assert "trained again" in second.stderr or reached == saved
    # Two rounds at most are trained twice: the one after the checkpoint and the one under way.
    assert_ledger_complete(redis_server, job, setting.epochs, max_repeats=2 * WORKERS * K)
    tracker = reader(redis_server, job)
    live = set(tracker.workers())
    tracker.close()
    assert live and not live & stale_workers, "the dead master's workers are still listed"
    status = subprocess.run(DEEPGRID + ["status", "--state", redis_server.url, "--job", job], env=setting.env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert not any(worker_id in status.stdout for worker_id in stale_workers)
    # A zombie (<defunct>) is only a pid-table entry waiting for this container's pid 1 to reap it.
    left = {pid for pid in process_tree(first.process.pid) - {first.process.pid}
            if "<defunct>" not in processes().get(pid, (0, 0, "<defunct>"))[2]}
    assert not left, f"the killed master left processes behind: {[processes().get(pid) for pid in left]}"


def test_redis_restarted_during_a_run(tmp_path: Path, redis_server: RedisServer) -> None:
    job = "recover-redis-restart"
    setting = Setting(tmp_path, job, epochs=4)
    master = setting.train(redis_server.url)
    master.wait_for("round 10", lambda: redis_round(redis_server, job) >= 10)
    redis_server.stop()
    master.wait_for("the master noticing the outage", lambda: "Lost the connection to Redis" in master.stderr)
    redis_server.start()  # same port, same directory: the append-only file brings the run's keys back
    assert master.finish() == 0, master.stderr[-3000:]
    assert "is back after" in master.stderr
    assert_ledger_complete(redis_server, job, setting.epochs, max_repeats=0)


def test_redis_gone_for_good_stops_cleanly_with_a_checkpoint(tmp_path: Path, redis_server: RedisServer) -> None:
    job = "recover-redis-gone"
    setting = Setting(tmp_path, job, epochs=4)
    short = redis_server.url + "?retry_timeout_s=3"
    master = setting.train(short)
    master.wait_for("round 10 and a checkpoint", lambda: redis_round(redis_server, job) >= 10
                    and newest_checkpoint_round(setting.checkpoints) >= 9)
    redis_server.stop()
    code = master.finish(timeout=120)
    errors = [line for line in master.stderr.splitlines() if line.startswith("deepgrid: error:")]
    assert code == 2, master.stderr[-3000:]
    assert len(errors) == 1 and "Lost the connection to Redis" in errors[0], master.stderr[-3000:]
    assert f"--resume {setting.checkpoints}" in errors[0]
    assert "Traceback" not in master.stderr
    _, meta = load_latest_checkpoint(setting.checkpoints)
    assert meta["status"] == "failed" and meta["round"] >= 9

    redis_server.start()  # Redis is back (its append-only file too): the run continues from the checkpoint
    resumed = setting.train(short, "--resume", str(setting.checkpoints))
    assert resumed.finish() == 0, resumed.stderr[-3000:]
    assert f"resuming from round {meta['round']}" in resumed.stderr
    assert_ledger_complete(redis_server, job, setting.epochs, max_repeats=2 * WORKERS * K)
