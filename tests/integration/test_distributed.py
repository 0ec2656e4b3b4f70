"""Distributed training on real Ray actors (one local Ray for the module)."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from deepgrid import Conf, ConfigError, DataError, ModelError
from deepgrid.data.dataset import ArrayDataset
from deepgrid.distributed.runner import ActorNetworkRunner
from deepgrid.distributed.strategies.average import AverageStrategy, weighted_mean
from deepgrid.errors import ClusterError
from deepgrid.models.mlp import MLP
from deepgrid.state.status import read_status, status_path
from deepgrid.train.loop import fit
from tests.integration.local_engine import ray_local  # noqa: F401 (an autouse fixture)
from tests.integration.synthetic import TEST, TRAIN, blobs, mlp_conf, mlp_network


def run(c: Conf, data: ArrayDataset = TRAIN, on_round=None, resume=None) -> tuple[ActorNetworkRunner, MLP]:
    runner = ActorNetworkRunner("master", data)
    runner.on_round = on_round
    try:
        runner.setup(c, resume=resume)
        model = runner.train()
    finally:
        runner.shutdown()
    return runner, model


def test_one_worker_computes_what_the_reference_loop_computes() -> None:
    c = mlp_conf(workers=1)
    runner, model = run(c)
    reference = MLP(c.network)
    fit(reference, TRAIN, epochs=c.epochs, batch_size=c.batch_size, job_size=c.averaging_frequency)
    np.testing.assert_array_equal(model.get_flat_params(), reference.get_flat_params())


def test_two_workers_converge_and_the_ledger_is_complete() -> None:
    runner, model = run(mlp_conf(workers=2))
    assert model.score(TEST.x, TEST.y) > 0.95
    n_batches = TRAIN.n_batches(16)
    for epoch in range(2):
        assert runner_ledger(runner, epoch) == {i: 1 for i in range(n_batches)}


def runner_ledger(runner: ActorNetworkRunner, epoch: int) -> dict[int, int]:
    return runner.ledger[("finetune", epoch)]


def test_a_worker_killed_mid_epoch_loses_no_batch() -> None:
    clean_runner, clean = run(mlp_conf(workers=3))
    killed: list[str] = []

    def kill_one(runner: ActorNetworkRunner) -> None:
        if runner.round == 5 and not killed:
            worker_id = sorted(runner.workers)[0]
            pid = runner.tracker.workers()[worker_id].info["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(worker_id)

    runner, model = run(mlp_conf(workers=3), on_round=kill_one)
    survivors = runner.tracker_snapshot["workers"]
    assert killed and killed[0] not in survivors  # noticed and dropped
    assert len(survivors) == 2
    kinds = {(e.kind, e.worker_id) for e in runner.events.recent(500)}  # what the dashboard lists
    assert ("dropped", killed[0]) in kinds and ("started", None) in kinds
    assert any(e.kind == "checkpoint" for e in runner.events.recent(500)) is False  # no checkpoint_dir here
    n_batches = TRAIN.n_batches(16)
    for epoch in range(2):
        assert runner_ledger(runner, epoch) == {i: 1 for i in range(n_batches)}  # every batch, exactly once
    assert abs(model.score(TEST.x, TEST.y) - clean.score(TEST.x, TEST.y)) <= 0.01


def test_status_lists_the_workers_during_a_run() -> None:
    seen: list[dict] = []

    def look(runner: ActorNetworkRunner) -> None:
        if runner.round == 3:
            runner.status_file.write(force=True)
            seen.append(read_status(status_path(runner.conf.job_name)))

    runner, _ = run(mlp_conf(workers=2, job_name="status-test"), on_round=look)
    assert seen and seen[0]["run"]["status"] == "training"
    assert sorted(seen[0]["workers"]) == sorted(w for w in runner.tracker_snapshot["workers"])
    json.dumps(seen[0])


def test_checkpoint_and_resume_after_a_crash(tmp_path) -> None:
    ckpt = tmp_path / "ckpt"

    def crash(runner: ActorNetworkRunner) -> None:
        if runner.round == 30:
            raise KeyboardInterrupt  # the master dies mid-epoch

    with pytest.raises(KeyboardInterrupt):
        run(mlp_conf(checkpoint_dir=str(ckpt), checkpoint_every=10), on_round=crash)
    saved = sorted(p.name for p in ckpt.iterdir())
    assert saved, "a failing run keeps its last checkpoint"
    from deepgrid.checkpoint import load_run_state

    step = load_run_state(ckpt)["block_step"]  # block momentum's last step goes on after the resume
    resumed = ActorNetworkRunner("master", TRAIN)
    try:
        resumed.setup(mlp_conf(checkpoint_dir=str(ckpt), checkpoint_every=10), resume=ckpt)
        np.testing.assert_array_equal(resumed.strategy.block_step, step)
    finally:
        resumed.shutdown()
    runner, model = run(mlp_conf(checkpoint_dir=str(ckpt), checkpoint_every=10), resume=ckpt)
    full_run_samples = 2 * TRAIN.n_batches(16) * 16
    assert 0 < runner.samples_trained < full_run_samples  # it continued, it did not restart
    assert model.score(TEST.x, TEST.y) > 0.95


def test_resume_from_a_missing_or_damaged_directory_is_refused(tmp_path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        ActorNetworkRunner("master", TRAIN).setup(mlp_conf(), resume=tmp_path / "nope")
    damaged = tmp_path / "damaged" / "ckpt-000000001"
    damaged.mkdir(parents=True)
    (damaged / "model.json").write_text("{not json")
    (damaged / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="damaged"):
        ActorNetworkRunner("master", TRAIN).setup(mlp_conf(), resume=tmp_path / "damaged")
    assert (damaged / "model.json").read_text() == "{not json"  # kept as it was


def test_bad_set_ups_fail_clearly() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA"):
            ActorNetworkRunner("master", TRAIN).setup(mlp_conf(device="cuda"))
    with pytest.raises(DataError, match="larger than a worker's shard"):
        ActorNetworkRunner("master", blobs(100, 3)).setup(mlp_conf(workers=2, batch_size=64))
    with pytest.raises(ConfigError, match="runs the master"):
        ActorNetworkRunner("worker", TRAIN)


def test_weighted_mean_is_exact() -> None:
    a, b = np.array([1.0, 2.0], np.float32), np.array([3.0, 6.0], np.float32)
    np.testing.assert_allclose(weighted_mean([a, b], [1, 3]), [2.5, 5.0])


class SlowMLP(MLP):
    """An MLP whose steps take 20 ms longer: a worker on a slow machine."""

    def train_step(self, phase, batches):  # type: ignore[override]
        import time

        time.sleep(0.02 * len(batches))
        return super().train_step(phase, batches)


def test_a_slow_worker_takes_fewer_jobs() -> None:
    import ray

    from deepgrid.distributed.worker import remote_worker_class

    c = mlp_conf(workers=1, epochs=3)
    runner = ActorNetworkRunner("master", TRAIN)
    try:
        runner.setup(c)
        fast_id = next(iter(runner.workers))
        slow = remote_worker_class().options(num_cpus=1).remote(
            "slow", lambda: SlowMLP(c.network), *runner.group.spec.data_args, batch_size=c.batch_size)
        runner.add_worker("slow", slow, ray.get(slow.info.remote()))
        model = runner.train()
    finally:
        runner.shutdown()
    done = {worker: sum(1 for h in runner.history if h["worker_id"] == worker) for worker in (fast_id, "slow")}
    assert done["slow"] >= 1 and done[fast_id] >= 2 * done["slow"]  # pulled more jobs, not held idle
    n_batches = TRAIN.n_batches(16)
    for epoch in range(3):
        assert runner_ledger(runner, epoch) == {i: 1 for i in range(n_batches)}  # nothing lost or repeated
    assert model.score(TEST.x, TEST.y) > 0.95


def test_a_worker_answers_pings_while_its_rounds_parameters_are_on_their_way(monkeypatch) -> None:
    """A worker still pulling a round's parameters (from a peer host just cut off, say) answers its
    heartbeat: they reach it inside the call. Passed as a bare ObjectRef, Ray held back the master's
    later calls to the actor, pings too, until the fetch was done (ray-project/ray#52825), and the
    worker was dropped as silent. Here the first round's parameters take 4 s to exist, with a
    heartbeat timeout of 2 s."""
    import time

    import ray

    @ray.remote
    def late(value):
        time.sleep(4)
        return value

    put, delayed = ray.put, []

    def slow_first_put(value, **kwargs):
        if delayed or not isinstance(value, np.ndarray):
            return put(value, **kwargs)
        delayed.append(True)
        return late.remote(value)

    c = mlp_conf(workers=1, epochs=1, heartbeat_timeout_s=2.0)
    runner = ActorNetworkRunner("master", TRAIN)
    try:
        runner.setup(c)
        monkeypatch.setattr(ray, "put", slow_first_put)
        runner.train()
    finally:
        runner.shutdown()
    assert delayed, "the round's parameters were never put"
    failures = [e.message for e in runner.events.recent(500) if e.kind in ("dropped", "requeued", "failure")]
    assert not failures, failures
    assert runner_ledger(runner, 0) == {i: 1 for i in range(TRAIN.n_batches(16))}


def test_block_momentum_adds_back_part_of_the_last_step() -> None:
    strategy = AverageStrategy(block_momentum=None)
    zeros = np.zeros(3, dtype=np.float32)
    first = strategy.block_update(zeros, np.ones(3, dtype=np.float32), n_workers=2)  # no earlier step yet
    np.testing.assert_allclose(first, [1, 1, 1])
    second = strategy.block_update(first, np.full(3, 2.0, dtype=np.float32), n_workers=2)  # step 1 + 0.5 x 1
    np.testing.assert_allclose(second, [2.5, 2.5, 2.5])
    strategy.begin_phase()  # a new phase: no step carried over
    np.testing.assert_allclose(strategy.block_update(first, np.full(3, 2.0, dtype=np.float32), n_workers=1), [2, 2, 2])
    plain = AverageStrategy(block_momentum=0.0)  # plain averaging, whatever the worker count
    np.testing.assert_allclose(plain.block_update(first, np.full(3, 3.0, dtype=np.float32), n_workers=4), [3, 3, 3])


def test_resume_keeps_the_early_stopping_state(tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    c = mlp_conf(checkpoint_dir=str(ckpt), epochs=4, validation_fraction=0.2, patience=50)

    def crash(runner: ActorNetworkRunner) -> None:
        if runner.progress.epoch >= 2:  # two validations have run
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(c, on_round=crash)
    saved = json.loads(sorted(ckpt.glob("ckpt-*/model.json"))[-1].read_text())
    best = saved["best_loss"]
    assert best is not None and best > 0  # validation had run before the crash
    resumed = ActorNetworkRunner("master", TRAIN)
    try:
        resumed.setup(c, resume=ckpt)
        resumed.on_round = lambda r: (_ for _ in ()).throw(KeyboardInterrupt)  # stop at the first round
        with pytest.raises(KeyboardInterrupt):
            resumed.train()
        assert resumed.progress.best_loss == pytest.approx(best)
    finally:
        resumed.shutdown()


def test_a_stopped_worker_is_caught_by_its_heartbeat() -> None:
    """SIGSTOP: Ray still sees the process, but it answers no ping; the round deadline is far off."""
    stopped: list[int] = []

    def stop_one(runner: ActorNetworkRunner) -> None:
        if runner.round == 2 and not stopped:
            worker_id = sorted(runner.workers)[0]
            pid = runner.tracker.workers()[worker_id].info["pid"]
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    c = mlp_conf(workers=2, epochs=1, averaging_frequency=8, heartbeat_timeout_s=2.0, round_deadline_s=600.0,
                 network=mlp_network())
    slow = MLPThatSleeps.factory(c)
    runner = ActorNetworkRunner("master", TRAIN, model_factory=slow)
    runner.on_round = stop_one
    try:
        runner.setup(c)
        model = runner.train()
    finally:
        runner.shutdown()
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert stopped and len(runner.tracker_snapshot["workers"]) == 1  # the silent one was dropped
    assert set(runner_ledger(runner, 0)) == set(range(TRAIN.n_batches(16)))  # its job was trained by the other
    assert model.score(TEST.x, TEST.y) > 0.9


class MLPThatSleeps(MLP):
    """Jobs long enough (0.5 s) that the master pings the workers while they train."""

    @staticmethod
    def factory(c: Conf):
        return lambda: MLPThatSleeps(c.network)

    def train_step(self, phase, batches):  # type: ignore[override]
        import time

        time.sleep(0.5)
        return super().train_step(phase, batches)


class MLPThatOverrunsOnce(MLP):
    """One worker's fifth job takes 7 s, past the round deadline (5 s at least, once the master
    knows a typical job's time); every train_step that starts while another runs in the same
    worker is noted in ``overlaps``."""

    def __init__(self, conf, marks: str) -> None:
        super().__init__(conf)
        self._marks = marks
        self._active = 0
        self._calls = 0

    def train_step(self, phase, batches):  # type: ignore[override]
        import time

        self._active += 1
        self._calls += 1
        try:
            if self._active > 1:
                with open(os.path.join(self._marks, "overlaps"), "a") as f:
                    f.write(f"{os.getpid()}\n")
            try:  # only one worker, once: whoever creates the file first
                if self._calls == 5:
                    os.close(os.open(os.path.join(self._marks, "slept"), os.O_CREAT | os.O_EXCL))
                    time.sleep(7.0)
            except FileExistsError:
                pass
            return super().train_step(phase, batches)
        finally:
            self._active -= 1


def test_a_worker_past_the_deadline_gets_no_job_until_its_call_ends(tmp_path) -> None:
    """Issue 8, defect 1: with the default deadline and heartbeat settings, a worker whose job overran
    the deadline is kept but gets no new job while that job still runs: never two jobs at once on
    one model; its late result is not counted; each batch is trained exactly once."""
    c = mlp_conf(workers=2, epochs=2)
    marks = str(tmp_path)
    runner = ActorNetworkRunner("master", TRAIN, model_factory=lambda: MLPThatOverrunsOnce(c.network, marks))
    try:
        runner.setup(c)
        model = runner.train()
    finally:
        runner.shutdown()
    assert os.path.exists(tmp_path / "slept")
    assert not os.path.exists(tmp_path / "overlaps"), "a worker trained two jobs at once"
    for epoch in range(2):
        assert runner_ledger(runner, epoch) == {i: 1 for i in range(TRAIN.n_batches(16))}
    assert len(runner.tracker_snapshot["workers"]) == 2  # a slow worker is kept (disabled while busy)
    assert model.score(TEST.x, TEST.y) > 0.9


@pytest.mark.parametrize("changes, fragment", [
    (dict(workers=100), "100 workers with threads_per_worker 1 need 100 CPUs"),
    (dict(workers=3, threads_per_worker=2), "3 workers with threads_per_worker 2 need 6 CPUs"),
])
def test_workers_that_cannot_be_placed_are_refused_up_front(changes, fragment) -> None:
    """Issue 8, defect 4: Ray would wait for room forever (then a traceback after 300 s)."""
    with pytest.raises(ConfigError, match=fragment) as caught:
        run(mlp_conf(**changes))
    assert "use workers:" in str(caught.value) and "\n" not in str(caught.value)


def test_a_round_that_can_hand_out_no_job_stops_instead_of_looping() -> None:
    """Issue 8, defect 7: pending jobs that the tracker will not hand out (an inconsistent state,
    e.g. another master on the same job name) end the run with one line, not an endless loop."""
    rounds_after: list[int] = []

    def break_the_tracker(runner: ActorNetworkRunner) -> None:
        if runner.round == 3:
            runner.tracker.claim_job = lambda worker_id: None  # type: ignore[method-assign]
        if runner.round > 3:
            rounds_after.append(runner.round)
            if len(rounds_after) > 100:  # the old behaviour: empty rounds for ever
                raise AssertionError("the master kept running rounds that handed out no job")

    with pytest.raises(ClusterError, match="handed none"):
        run(mlp_conf(workers=2), on_round=break_the_tracker)
