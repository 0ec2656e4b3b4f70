"""Fault tests that exercise what users hit (issue 8): real Ray actors, real signals, default settings.

1. A worker stopped (SIGSTOP) in the middle of a job, under the default heartbeat and round deadline
   settings: one continued while the master keeps it (disabled), one continued after the master
   dropped it. The run completes, every batch of every epoch is counted exactly once, the continued
   worker trains later rounds, and the model is as good as ever.
2. Workers SIGKILLed inside jobs at seeded random moments, several times in one run (replacements
   join as it goes): nothing lost, nothing counted twice.
3. A chaos run on a real redis-server (appendonly yes): one seeded schedule kills, stops, continues
   and adds workers and restarts Redis once. The model ends within 1 point of an undisturbed run of
   the same Conf, the ledger shows every batch exactly once; the figures are printed.
4. The master SIGKILLed while it writes a checkpoint (a slow writer injected), then --resume: it
   resumes from the last complete checkpoint and finishes with a complete ledger.
5. Redis away in the middle of a round for longer than the round deadline, or than the heartbeat
   timeout, within the default retry window: no worker is timed out or dropped for it.

How a fault lands inside a job: every worker's model (``MarkedMLP``) sleeps ``JOB_S`` in each job
and keeps a mark file, marks/<pid>: "busy N START" while its N-th job trains, "idle N" after. The
fault thread waits for a job's start, waits a seeded fraction of the job, freezes the process with
SIGSTOP (and waits until every thread of it is stopped), and reads the mark again: still "busy N"
means the process is frozen inside that job (else it is continued and the next job is tried). A
stop leaves it frozen; a kill SIGKILLs the frozen process, so it dies at that moment of the job
without running another instruction. No assertion depends on how long anything takes.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deepgrid import Conf
from deepgrid.checkpoint import STAGING_PREFIX, load_latest_checkpoint
from deepgrid.distributed import engine
from deepgrid.distributed.runner import ActorNetworkRunner
from deepgrid.models.mlp import MLP
from tests.integration.synthetic import N_CLASSES, N_IN, TEST, TRAIN
from tests.integration.test_master_recovery import (
    DEEPGRID,
    WORKERS,
    Master,
    Setting,
    assert_ledger_complete,
    end_leftovers,
    newest_checkpoint_round,
    process_tree,
    redis_round,
)
from tests.redis_server import RedisServer, require_redis_server

BATCH = 16
N_BATCHES = TRAIN.n_batches(BATCH)
JOB_S = 0.25  # each job sleeps this long: long enough to land a signal inside it
SLOW_WRITER = Path(__file__).with_name("slow_checkpoint_master.py")


def conf(**changes: object) -> Conf:
    """The Conf of these runs: heartbeat_timeout_s and round_deadline_s stay at their defaults."""
    base = dict(model="mlp", workers=3, batch_size=BATCH, averaging_frequency=4, epochs=3,
                network=dict(n_in=N_IN, n_out=N_CLASSES, hidden_layer_sizes=[32], activation="relu",
                             finetune_lr=0.05))
    base.update(changes)
    c = Conf(**base)  # type: ignore[arg-type]
    assert (c.heartbeat_timeout_s, c.round_deadline_s) == (Conf().heartbeat_timeout_s, Conf().round_deadline_s)
    return c


@pytest.fixture()
def ray_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path / "home"))
    # Logical CPUs: the workers sleep most of the time, and stopped ones hold theirs until dropped.
    engine.start_local(num_cpus=12)
    yield
    engine.shutdown()


# -- workers whose jobs can be hit ----------------------------------------------------------------
class MarkedMLP(MLP):
    """An MLP whose jobs take ``job_s`` longer and leave a mark (marks/<pid>); see the module docstring."""

    def __init__(self, network: Any, marks: str, job_s: float) -> None:
        super().__init__(network)
        self._marks, self._job_s, self._jobs = marks, job_s, 0

    @staticmethod
    def factory(c: Conf, marks: Path, job_s: float = JOB_S) -> Callable[[], MarkedMLP]:
        network, where = c.network, str(marks)
        return lambda: MarkedMLP(network, where, job_s)

    def train_step(self, phase, batches):  # type: ignore[override]
        self._jobs += 1
        mark = os.path.join(self._marks, str(os.getpid()))
        put(mark, f"busy {self._jobs} {time.monotonic():.6f}")
        time.sleep(self._job_s)
        step = super().train_step(phase, batches)
        put(mark, f"idle {self._jobs}")
        return step


def put(path: str, text: str) -> None:
    """Replace a small file atomically: a reader sees the old text or the new, never half."""
    tmp = f"{path}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Mark:
    state: str  # "busy" or "idle"
    job: int  # the worker's job count
    started: float  # time.monotonic() when a busy job started (0.0 for idle)


def read_mark(marks: Path, pid: int) -> Mark | None:
    try:
        parts = (marks / str(pid)).read_text().split()
    except FileNotFoundError:
        return None
    return Mark(parts[0], int(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0)


def process_states(pid: int) -> set[str]:
    """The scheduler states of every thread of ``pid`` (T: stopped); empty once it is gone."""
    states = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return states
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        states.add(stat.rsplit(")", 1)[1].split()[0])  # after "(comm)", which may hold spaces
    return states


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.002)


class RunOver(Exception):
    """The run ended before the fault schedule did."""


# -- the fault thread -----------------------------------------------------------------------------
class Faults:
    """Injects faults into a running ``ActorNetworkRunner`` from a thread of its own.

    ``schedule``: (rounds to wait after the previous fault, action name) pairs. Only the master's
    thread changes its worker table: workers started here are handed to ``on_round`` (set it as the
    runner's hook), which adds them after a round, as the master takes on joining workers.
    """

    def __init__(self, runner: ActorNetworkRunner, c: Conf, marks: Path, factory: Callable[[], Any],
                 seed: int, redis: RedisServer | None = None) -> None:
        self.runner, self.conf, self.marks, self.factory = runner, c, marks, factory
        self.rng = random.Random(seed)
        self.redis = redis
        self.log: list[dict[str, Any]] = []  # one entry per fault injected
        self.pid_of: dict[str, int] = {}
        self.stopped: list[tuple[str, int]] = []  # (worker id, pid) stopped and not yet continued
        self.continued: dict[str, int] = {}  # worker id -> the round it was continued in
        self.finished = threading.Event()  # set by the test once train() has returned
        self.error: BaseException | None = None
        self.unfinished: list[str] = []
        self._joining: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        self._waiting_to_join: list[tuple[str, Any, Any]] = []
        self._known: frozenset[str] = frozenset()
        self._added = 0
        self._hit: set[str] = set()  # workers chosen for a fault so far
        self.outage_s = 0.0  # how long redis_outage() keeps Redis away
        self._thread: threading.Thread | None = None

    # -- on the master's thread -------------------------------------------------------------------
    def on_round(self, runner: ActorNetworkRunner) -> None:
        import ray

        while True:
            try:
                self._waiting_to_join.append(self._joining.get_nowait())
            except queue.Empty:
                break
        for entry in list(self._waiting_to_join):
            worker_id, actor, info_ref = entry
            if ray.wait([info_ref], timeout=0)[0]:  # built: it joins now (never wait here)
                self._waiting_to_join.remove(entry)
                runner.add_worker(worker_id, actor, ray.get(info_ref))
        known = frozenset(runner.workers)
        if known != self._known:  # workers came or went: learn the new ones' process ids
            assert runner.tracker is not None
            for worker_id, state in runner.tracker.workers().items():
                self.pid_of.setdefault(worker_id, int(state.info["pid"]))
            self._known = known

    # -- on the fault thread ----------------------------------------------------------------------
    def start(self, schedule: list[tuple[int, str]]) -> None:
        self._thread = threading.Thread(target=self._drive, args=(schedule,), name="faults", daemon=True)
        self._thread.start()

    def end(self) -> None:
        """After train(): stop the thread and continue whatever is still stopped."""
        self.finished.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        for _, pid in self.stopped:
            self._signal(pid, signal.SIGCONT)
        if self.error is not None:
            raise self.error

    def _drive(self, schedule: list[tuple[int, str]]) -> None:
        done = 0
        try:
            last = self.runner.round
            for gap, action in schedule:
                self._wait(lambda last=last, gap=gap: self.runner.round >= last + gap, f"round {last + gap}")
                getattr(self, action)()
                last = self.runner.round
                done += 1
        except RunOver:
            self.unfinished = [action for _, action in schedule[done:]]
        except BaseException as e:  # raised in the test by end()
            self.error = e

    def _wait(self, condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.finished.is_set():
                raise RunOver(what)
            if time.monotonic() > deadline:
                raise AssertionError(f"fault thread: no {what} within {timeout} s")
            time.sleep(0.002)

    def _note(self, kind: str, worker_id: str | None = None, **details: Any) -> None:
        self.log.append({"fault": kind, "worker": worker_id, "round": self.runner.round, **details})

    def _active(self) -> list[str]:
        """Workers that train: listed by the master, not disabled, not stopped by us, pid known."""
        frozen = {worker_id for worker_id, _ in self.stopped}
        return sorted(worker_id for worker_id, handle in dict(self.runner.workers).items()
                      if handle.overrun is None and worker_id not in frozen and worker_id in self.pid_of)

    def _target(self) -> str:
        """A seeded choice among the active workers, once at least two are active (one must go on);
        one not hit before where there is one."""
        self._wait(lambda: len(self._active()) >= 2, "second active worker")
        active = self._active()
        fresh = [worker_id for worker_id in active if worker_id not in self._hit]
        worker_id = self.rng.choice(fresh or active)
        self._hit.add(worker_id)
        return worker_id

    @staticmethod
    def _signal(pid: int, sig: int) -> bool:
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def _freeze_inside_job(self, worker_id: str) -> tuple[int, Mark] | None:
        """SIGSTOP ``worker_id``'s process at a seeded random moment inside one of its jobs; returns
        its pid and the job's mark, or None if the master dropped the worker first."""
        pid = self.pid_of[worker_id]
        at_fraction = self.rng.uniform(0.2, 0.7)
        while True:
            if self.finished.is_set():
                raise RunOver(f"a job of {worker_id}")
            handle = self.runner.workers.get(worker_id)
            if handle is None or handle.overrun is not None:  # dropped or disabled meanwhile: pick again
                return None
            mark = read_mark(self.marks, pid)
            moment = mark.started + at_fraction * JOB_S if mark is not None and mark.state == "busy" else None
            if moment is None or time.monotonic() > moment:  # idle, or too far into this job: the next one
                time.sleep(0.002)
                continue
            time.sleep(max(0.0, moment - time.monotonic()))
            if not self._signal(pid, signal.SIGSTOP):
                return None
            wait_until(lambda: process_states(pid) <= {"T", "t"}, f"process {pid} stopping", timeout=10)
            if read_mark(self.marks, pid) == mark:  # frozen while that job trains
                return pid, mark
            self._signal(pid, signal.SIGCONT)  # the job ended just before: try the next one

    def kill(self) -> None:
        """SIGKILL a worker at a random moment inside a job."""
        while True:
            worker_id = self._target()
            hit = self._freeze_inside_job(worker_id)
            if hit is not None:
                break
        pid, mark = hit
        self._signal(pid, signal.SIGKILL)
        self._note("kill", worker_id, pid=pid, job=mark.job, into_job_s=round(time.monotonic() - mark.started, 3))

    def stop(self) -> None:
        """SIGSTOP a worker at a random moment inside a job; it stays stopped until continue_()."""
        while True:
            worker_id = self._target()
            hit = self._freeze_inside_job(worker_id)
            if hit is not None:
                break
        pid, mark = hit
        self.stopped.append((worker_id, pid))
        self._note("stop", worker_id, pid=pid, job=mark.job)

    def continue_(self) -> None:
        """SIGCONT the worker stopped first."""
        worker_id, pid = self.stopped.pop(0)
        kept = worker_id in self.runner.workers
        alive = self._signal(pid, signal.SIGCONT)
        self.continued[worker_id] = self.runner.round
        self._note("continue", worker_id, pid=pid, kept_by_master=kept, process_alive=alive)

    def continue_when_disabled(self) -> None:
        """Continue the stopped worker once the master has timed its job out (kept, disabled), two
        rounds later: the run went on without it meanwhile."""
        worker_id, _ = self.stopped[0]
        self._wait(lambda: (h := self.runner.workers.get(worker_id)) is None or h.overrun is not None,
                   f"the master timing out {worker_id}'s job")
        at = self.runner.round + 2
        self._wait(lambda: self.runner.round >= at, f"round {at}")
        self.continue_()

    def continue_when_dropped(self) -> None:
        """Continue the stopped worker as soon as the master has dropped it."""
        worker_id, _ = self.stopped[0]
        self._wait(lambda: worker_id not in self.runner.workers, f"the master dropping {worker_id}")
        self.continue_()

    def add(self) -> None:
        """Start a new worker actor; the master takes it on after the round in which it is ready."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from deepgrid.distributed.worker import remote_worker_class

        self._added += 1
        worker_id = f"added{self._added}"
        actor = remote_worker_class().options(
            num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(self.runner.group.home_node, soft=False),
        ).remote(worker_id, self.factory, *self.runner.group.spec.data_args, batch_size=self.conf.batch_size)
        self._joining.put((worker_id, actor, actor.info.remote()))
        self._note("add", worker_id)

    def restart_redis(self) -> None:
        """Stop redis-server (SIGTERM: its append-only file is complete) and start it again on the same port."""
        assert self.redis is not None
        self.redis.stop()
        down_s = self.rng.uniform(0.5, 2.0)
        time.sleep(down_s)  # Redis stays away this long: the fault itself, not a wait for something
        self.redis.start()
        self._note("redis restart", None, down_s=round(down_s, 2))

    def redis_outage(self) -> None:
        """Stop redis-server for ``outage_s`` while a round's jobs train, then start it again: the
        master's next tracker call, inside the round, retries until it is back."""
        assert self.redis is not None
        self._wait(lambda: any((m := read_mark(self.marks, pid)) is not None and m.state == "busy"
                               for pid in list(self.pid_of.values())), "a job in flight")
        self.redis.stop()
        time.sleep(self.outage_s)  # the fault itself
        self.redis.start()
        self._note("redis restart", None, down_s=self.outage_s)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for entry in self.log:
            found[entry["fault"]] = found.get(entry["fault"], 0) + 1
        return found


def train_with_faults(c: Conf, marks: Path, schedule: list[tuple[int, str]], seed: int,
                      redis: RedisServer | None = None,
                      outage_s: float = 0.0) -> tuple[ActorNetworkRunner, Any, Faults, list[str]]:
    """One run of ``c`` while ``schedule`` is injected; returns the runner, the model, the faults and
    the master's progress lines."""
    said: list[str] = []
    factory = MarkedMLP.factory(c, marks)
    runner = ActorNetworkRunner("master", TRAIN, model_factory=factory, progress=said.append)
    faults = Faults(runner, c, marks, factory, seed, redis)
    faults.outage_s = outage_s
    runner.on_round = faults.on_round
    try:
        runner.setup(c)
        faults.start(schedule)
        model = runner.train()
    finally:
        try:
            faults.end()
        finally:
            runner.shutdown()
    return runner, model, faults, said


def clean_run(c: Conf, marks: Path) -> tuple[ActorNetworkRunner, Any]:
    runner = ActorNetworkRunner("master", TRAIN, model_factory=MarkedMLP.factory(c, marks))
    try:
        runner.setup(c)
        model = runner.train()
    finally:
        runner.shutdown()
    return runner, model


def ledger_counts(runner: ActorNetworkRunner, epochs: int) -> tuple[int, int]:
    """(batches never trained, batch trainings beyond the first) over every epoch."""
    lost = repeated = 0
    for epoch in range(epochs):
        counts = runner.ledger.get(("finetune", epoch), {})
        lost += sum(1 for i in range(N_BATCHES) if counts.get(i, 0) == 0)
        repeated += sum(c - 1 for c in counts.values() if c > 1)
    return lost, repeated


def assert_exact_ledger(runner: ActorNetworkRunner, epochs: int) -> None:
    """Every batch of every epoch trained exactly once: the count dicts, not their keys."""
    for epoch in range(epochs):
        assert runner.ledger[("finetune", epoch)] == dict.fromkeys(range(N_BATCHES), 1), f"epoch {epoch}"


def jobs_of(runner: ActorNetworkRunner, worker_id: str, after_round: int = 0) -> int:
    return sum(1 for h in runner.history if h["worker_id"] == worker_id and h["round"] > after_round)


def seconds(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"


# -- 1. a worker stopped in the middle of a job, default settings ----------------------------------
def test_a_worker_stopped_mid_job_under_the_default_settings(tmp_path: Path, ray_engine: None) -> None:
    """Worker A is stopped inside a job; the master times its job out (the default round deadline,
    5 s at least), re-queues it, keeps A disabled and goes on; A is continued two rounds later,
    finishes its stale job (not counted) and trains later rounds again. Worker B is stopped inside a
    job and continued only once the master has dropped it (no heartbeat for the default 10 s)."""
    started = time.monotonic()
    c = conf(workers=3, epochs=3)
    marks = tmp_path / "marks"
    marks.mkdir()
    schedule = [(3, "stop"), (0, "continue_when_disabled"), (3, "stop"), (0, "continue_when_dropped")]
    runner, model, faults, said = train_with_faults(c, marks, schedule, seed=1)

    assert not faults.unfinished, f"the run ended before {faults.unfinished}"
    (a, b) = [entry["worker"] for entry in faults.log if entry["fault"] == "stop"]
    continues = {entry["worker"]: entry for entry in faults.log if entry["fault"] == "continue"}
    assert continues[a]["kept_by_master"] and not continues[b]["kept_by_master"]
    assert any(f"worker {a} ran past the round deadline" in line for line in said), said
    assert any(f"worker {a} finished its overrun job and gets jobs again" in line for line in said), said
    assert any(f"worker {b} stopped sending heartbeats" in line and "dropped" in line for line in said), said
    survivors = runner.tracker_snapshot["workers"]
    assert a in survivors and b not in survivors
    assert jobs_of(runner, a, after_round=faults.continued[a]) >= 3, "the continued worker trains again"
    assert_exact_ledger(runner, c.epochs)
    accuracy = model.score(TEST.x, TEST.y)
    assert accuracy > 0.98
    with_output(f"\n[stopped mid-job] {a} continued while kept, {b} after being dropped; "
                f"accuracy {accuracy:.4f}; {seconds(started)}")


# -- 2. workers killed inside jobs, several times ---------------------------------------------------
def test_workers_killed_inside_jobs_at_random_moments(tmp_path: Path, ray_engine: None) -> None:
    """Four SIGKILLs, each at a seeded random moment inside a job of a seeded worker; a new worker is
    started after each. Each dead worker's job goes back to the queue and is trained once elsewhere."""
    started = time.monotonic()
    c = conf(workers=3, epochs=5)
    marks = tmp_path / "marks"
    marks.mkdir()
    rng = random.Random(2)
    schedule: list[tuple[int, str]] = []
    for _ in range(4):
        schedule += [(rng.randint(3, 8), "kill"), (0, "add")]
    runner, model, faults, said = train_with_faults(c, marks, schedule, seed=2)

    assert not faults.unfinished, f"the run ended before {faults.unfinished}"
    kills = [entry for entry in faults.log if entry["fault"] == "kill"]
    assert len(kills) == 4 and len({k["pid"] for k in kills}) == 4
    assert all(0 < k["into_job_s"] for k in kills)
    survivors = runner.tracker_snapshot["workers"]
    for k in kills:
        assert k["worker"] not in survivors
        assert any(f"worker {k['worker']} died" in line and "dropped" in line for line in said), said
    added = [entry["worker"] for entry in faults.log if entry["fault"] == "add"]
    assert sum(jobs_of(runner, worker_id) for worker_id in added) > 0, "the new workers got jobs"
    assert_exact_ledger(runner, c.epochs)
    accuracy = model.score(TEST.x, TEST.y)
    assert accuracy > 0.98
    with_output(f"\n[killed inside jobs] {len(kills)} kills at "
                f"{[k['into_job_s'] for k in kills]} s into a job of {JOB_S} s + compute; "
                f"accuracy {accuracy:.4f}; {seconds(started)}")


# -- 3. the chaos run -------------------------------------------------------------------------------
def chaos_schedule(seed: int) -> list[tuple[int, str]]:
    """Two kills, two stops (each continued 0-2 faults later), one Redis restart and two added
    workers in a seeded order, each a seeded 2-6 rounds after the one before; an extra add goes in
    wherever fewer than two workers would be left to train (counting stopped ones as gone)."""
    rng = random.Random(seed)
    main = ["kill", "kill", "stop", "stop", "restart_redis", "add", "add"]
    rng.shuffle(main)
    plan: list[str] = []
    countdowns: list[int] = []  # faults to go before each stopped worker is continued
    active = 3
    for action in main:
        if action in ("kill", "stop") and active < 2:
            plan.append("add")
            active += 1
        plan.append(action)
        active += {"kill": -1, "stop": -1, "add": 1}.get(action, 0)
        countdowns = [n - 1 for n in countdowns]
        while countdowns and countdowns[0] < 0:
            countdowns.pop(0)
            plan.append("continue_")
        if action == "stop":
            countdowns.append(rng.randint(0, 2))
    plan += ["continue_"] * len(countdowns)
    return [(rng.randint(2, 6), action) for action in plan]


@pytest.fixture()
def redis_server(tmp_path: Path):
    require_redis_server()
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


def test_chaos_run(tmp_path: Path, ray_engine: None, redis_server: RedisServer,
                   capsys: pytest.CaptureFixture[str]) -> None:
    """One seeded schedule of faults (chaos_schedule) during one run on Redis; DEEPGRID_CHAOS_SEED
    picks another schedule."""
    started = time.monotonic()
    seed = int(os.environ.get("DEEPGRID_CHAOS_SEED", "3"))
    c = conf(workers=3, epochs=4, state_url=redis_server.url, job_name="chaos")
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "marks-undisturbed").mkdir()
    _, clean = clean_run(c.replace(job_name="chaos-undisturbed"), tmp_path / "marks-undisturbed")
    clean_accuracy = clean.score(TEST.x, TEST.y)
    clean_s = time.monotonic() - started

    schedule = chaos_schedule(seed)
    runner, model, faults, said = train_with_faults(c, marks, schedule, seed=seed, redis=redis_server)

    assert not faults.unfinished, f"the run ended before {faults.unfinished}"
    counts = faults.counts()
    expected = {"kill": 2, "stop": 2, "continue": 2, "redis restart": 1}
    assert {k: counts.get(k, 0) for k in expected} == expected and counts["add"] >= 2, counts
    lost, repeated = ledger_counts(runner, c.epochs)
    assert (lost, repeated) == (0, 0)
    assert_exact_ledger(runner, c.epochs)
    accuracy = model.score(TEST.x, TEST.y)
    with capsys.disabled():
        print(f"\n[chaos run, seed {seed}] faults injected: {len(faults.log)} {counts}; "
              f"batches lost: {lost}, trained twice: {repeated}; test accuracy {accuracy:.4f} "
              f"against {clean_accuracy:.4f} undisturbed; undisturbed run {clean_s:.1f} s, "
              f"whole test {seconds(started)}")
        for entry in faults.log:
            print(f"    {entry}")
    assert abs(accuracy - clean_accuracy) <= 0.01


# -- 4. the master killed while it writes a checkpoint --------------------------------------------
def test_master_killed_during_a_checkpoint_write_resumes_from_the_last_complete_one(
        tmp_path: Path, redis_server: RedisServer) -> None:
    started = time.monotonic()
    job = "killed-mid-checkpoint"
    setting = Setting(tmp_path, job, epochs=3)
    marker, stall_round = tmp_path / "stalled.json", 40
    first = start_master(setting, [sys.executable, str(SLOW_WRITER), str(marker), str(stall_round)],
                         redis_server.url)
    first.wait_for("a stalled checkpoint write", marker.exists)
    stalled = json.loads(marker.read_text())
    staging = Path(stalled["staging"])
    # Mid-write: the weights are in the staging directory, model.json is not, nothing renamed yet.
    assert stalled["round"] == stall_round and stalled["pid"] == first.process.pid
    assert staging.name.startswith(STAGING_PREFIX) and staging.parent == setting.checkpoints
    assert sorted(p.name for p in staging.iterdir()) == ["weights.safetensors"]
    complete = newest_checkpoint_round(setting.checkpoints)
    reached = redis_round(redis_server, job)
    tree = process_tree(first.process.pid)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    end_leftovers(first.process.pid, tree)

    # The half-written checkpoint is left as it was; the newest complete one is the round before it.
    assert staging.is_dir()
    assert complete == stall_round - 1 and reached == stall_round, (complete, reached)
    _, meta = load_latest_checkpoint(setting.checkpoints)
    assert meta["round"] == complete

    second = start_master(setting, DEEPGRID, redis_server.url, "--resume", str(setting.checkpoints))
    assert second.finish() == 0, second.stderr[-3000:]
    assert f"resuming from round {complete}" in second.stderr, second.stderr[-3000:]
    assert not staging.exists(), "the resumed run's writer removes its run's half-written checkpoint"
    assert not any(p.name.startswith(STAGING_PREFIX) for p in setting.checkpoints.iterdir())
    _, final = load_latest_checkpoint(setting.checkpoints)
    assert final["status"] == "done" and final["round"] > reached
    assert final["run_id"] == meta["run_id"]  # one run, carried on
    # Rounds `complete`+1 and the one under way at the kill are trained again, nothing else.
    assert_ledger_complete(redis_server, job, setting.epochs, max_repeats=2 * WORKERS)
    with_output(f"\n[master killed mid-checkpoint] stalled write of round {stall_round}, resumed from round "
                f"{complete}; {seconds(started)}")


def start_master(setting: Setting, command: list[str], url: str, *extra: str) -> Master:
    """``deepgrid train`` of ``setting`` as its own process, started with ``command`` (the
    installed deepgrid, or the slow-writer launcher)."""
    setting.runs += 1
    log = setting.tmp_path / f"run{setting.runs}.err"
    args = ["train", str(setting.conf), "--workers", str(WORKERS), "--state", url,
            "-o", str(setting.tmp_path / "model"), *extra]
    with open(log, "w") as err, open(setting.tmp_path / f"run{setting.runs}.out", "w") as out:
        process = subprocess.Popen(command + args, env=setting.env, stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return Master(process, log)


def with_output(text: str) -> None:
    """What a test shows, in one line (pytest -s prints it)."""
    print(text)


# -- 5. a Redis outage longer than the round deadline or the heartbeat timeout ----------------------
@pytest.mark.parametrize("past", ["round deadline", "heartbeat timeout"])
def test_a_redis_outage_mid_round_costs_no_worker_and_no_result(
        past: str, tmp_path: Path, ray_engine: None, redis_server: RedisServer) -> None:
    """Redis goes away while a round trains, for longer than the round's deadline (5 s or a little
    more here) or than the heartbeat timeout (10 s), yet within the default retry_timeout_s (30 s).
    The master's tracker call retries until Redis is back, while the workers finish their jobs and
    answer their pings: none of them is timed out or dropped, and the run goes on.

    Found by these tests: the master counted the time it was held up in that call against the
    workers, so it timed out results that had come in (7.5 s) or dropped and killed healthy
    workers as silent (12 s); fixed in ActorNetworkRunner._discount_held_up."""
    started = time.monotonic()
    c = conf(workers=3, epochs=2, state_url=redis_server.url, job_name="outage")
    marks = tmp_path / "marks"
    marks.mkdir()
    outage_s = 7.5 if past == "round deadline" else c.heartbeat_timeout_s + 2.0
    runner, model, faults, said = train_with_faults(c, marks, [(4, "redis_outage")], seed=5, redis=redis_server,
                                                    outage_s=outage_s)

    assert not faults.unfinished and faults.counts() == {"redis restart": 1}
    failures = [line for line in said if "deepgrid:" in line and "deepgrid: dashboard at" not in line]
    assert not failures, said  # no failure of any kind
    assert set(runner.tracker_snapshot["workers"]) == set(faults.pid_of)  # the three it started with
    assert_exact_ledger(runner, c.epochs)
    assert model.score(TEST.x, TEST.y) > 0.98
    with_output(f"\n[Redis away {outage_s} s mid-round] no worker lost; {seconds(started)}")
