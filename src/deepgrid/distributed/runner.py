"""The master: ActorNetworkRunner, as in the seed.

    runner = ActorNetworkRunner("master", train_data)
    runner.setup(conf)      # engine, model, workers, state tracker
    model = runner.train()  # every phase, round by round
    runner.shutdown()

It puts the parts together: the worker group (actors and where they run), the dispatcher (a
round of jobs on the group), the strategy (what the round's results make of the parameters),
the shared phase/epoch loop (``train.schedule.run_phases``), and the callbacks that checkpoint,
record and show each round. Each epoch of each phase is cut into jobs of ``averaging_frequency``
mini-batches, in the same fixed order the reference loop uses. With one worker a run computes
exactly what ``deepgrid.train.loop.fit`` computes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepgrid.checkpoint import CheckpointWriter, load_latest_checkpoint, load_run_state
from deepgrid.config.conf import Conf
from deepgrid.dashboard.plugin import start_dashboard, stop_dashboard
from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.shards import ShardLayout
from deepgrid.distributed import engine
from deepgrid.distributed.callbacks import (
    Callback,
    Checkpointer,
    History,
    RoundReport,
    StatusFile,
    TrackerRecorder,
)
from deepgrid.distributed.dispatch import Dispatcher
from deepgrid.distributed.events import EventLog
from deepgrid.distributed.locality import attach_shards, epoch_jobs, n_batches, training_data
from deepgrid.distributed.metrics_file import call_hook
from deepgrid.distributed.policy import FailurePolicy
from deepgrid.distributed.progress import RunProgressDisplay
from deepgrid.distributed.strategies import JobResult, Strategy, make_strategy
from deepgrid.distributed.worker import build_named_model
from deepgrid.distributed.workers import (
    NODE_CHECK_EVERY_S,
    WorkerGroup,
    WorkerHandle,
    check_device,
    check_room,
)
from deepgrid.errors import ClusterError, ConfigError, DataError
from deepgrid.models.base import Model, Phase
from deepgrid.state.base import StateTracker, tracker_from_url
from deepgrid.train.logs import install_default_handler
from deepgrid.train.loop import phase_seed, validation_loss
from deepgrid.train.schedule import RunProgress, run_phases

log = logging.getLogger("deepgrid")


class ActorNetworkRunner:
    """The master. ``iterator`` is the training data: an ArrayDataset, (x, y) arrays,
    a torch Dataset, an iterable of (x, y) batches, or None to load the Conf's data set."""

    def __init__(self, role: str = "master", iterator: Any = None, *,
                 model_factory: Callable[[], Model] | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        if role != "master":
            raise ConfigError(f"ActorNetworkRunner runs the master; got role {role!r}. Start workers with `deepgrid worker`.")
        self.iterator = iterator
        self._model_factory = model_factory
        if progress is None:
            install_default_handler()  # the API shows its progress unless logging was set up (train/logs.py)
        # Every part reports through one event log: printed through ``progress``, kept for the dashboard.
        self.events = EventLog(progress or (lambda message: log.info(message)))
        self._say = self.events
        self.conf: Conf | None = None
        self.model: Model | None = None
        self.tracker: StateTracker | None = None
        self.group: WorkerGroup | None = None
        self.dispatcher: Dispatcher | None = None
        self.strategy: Strategy | None = None
        self.params: np.ndarray | None = None
        # Where the run stands, kept here (not only in the tracker) so that a checkpoint can be
        # written when the tracker is unreachable: that is when one is needed most.
        self.progress = RunProgress()
        self.stopped_reason: str | None = None
        self.resumed_from_round: int | None = None  # the checkpoint's round when setup(resume=...)
        self.callbacks: list[Callback] = []
        self.checkpointer: Checkpointer | None = None
        self.status_file: StatusFile | None = None
        self._history = History()
        # ((phase, epoch, round), accuracy): one validation pass however many callbacks ask (metrics_file)
        self.accuracy_cache: tuple[tuple[str, int, int], float | None] | None = None
        self._resuming = False
        self._samples_trained = 0
        self._train_seconds = 0.0
        self._started_engine = False
        # Kept after shutdown, for reports and tests: which batches each epoch trained, and the last state.
        self.ledger: dict[tuple[str, int], dict[int, int]] = {}
        self.tracker_snapshot: dict[str, Any] = {}
        self._worker_hosts: dict[str, str] = {}
        self.shards: ShardLayout | None = None  # a sharded split the workers read (data.shards)
        self.on_round: Callable[[ActorNetworkRunner], None] | None = None  # called after each round
        self.node_check_every_s = NODE_CHECK_EVERY_S  # how often a round looks for nodes that joined

    # -- context manager ---------------------------------------------------------
    def __enter__(self) -> ActorNetworkRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- what reports and tests read -----------------------------------------------
    @property
    def round(self) -> int:
        return self.progress.round

    @property
    def workers(self) -> dict[str, WorkerHandle]:
        return self.group.workers if self.group is not None else {}

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._history.entries

    @property
    def checkpoint_wait_s(self) -> float:
        """Time rounds spent waiting for the background checkpoint writer."""
        return self.checkpointer.wait_s if self.checkpointer is not None else 0.0

    # -- setup ---------------------------------------------------------------------
    def setup(self, conf: Conf, *, resume: str | Path | None = None, local_workers: int | None = None,
              accept_workers: bool = False) -> ActorNetworkRunner:
        """Start or join the engine, build the model, start the workers, hand out parameters.

        ``local_workers`` overrides ``conf.workers`` (``deepgrid master`` may start none);
        ``accept_workers`` opens the mailbox through which ``deepgrid worker`` processes join.
        """
        import ray

        self.conf = conf
        check_device(conf.device)
        factory = self._model_factory or functools.partial(build_named_model, conf.model, conf.network.to_dict())
        self.model = factory()
        self.strategy = make_strategy(conf)
        resumed: dict[str, Any] = {}
        if resume is not None:
            restored, resumed = load_latest_checkpoint(Path(resume), model_factory=factory, conf=conf)
            self.strategy.load_state_dict(load_run_state(Path(resume)))  # momentum goes on as it was
            self.model.set_flat_params(restored.get_flat_params())
            # Carry on the round counter: checkpoint names sort by round, so a resumed run that
            # counted from 0 again would write checkpoints older than the one it started from.
            self.progress = RunProgress.from_meta(resumed)
            self.resumed_from_round, self._resuming = self.progress.round, True
            self._say(f"resuming from round {self.progress.round} "
                      f"({self.progress.phase or 'first phase'} epoch {self.progress.epoch + 1})", "resumed")
        self.params = self.model.get_flat_params()
        self.train_data, self.validation = self._training_data(conf)

        if conf.engine_address:
            engine.join(conf.engine_address)
        elif not ray.is_initialized():
            engine.start_local()
            self._started_engine = True
        # The master's own workers (and its mailbox) run on its own machine's node, never on a
        # node that a `deepgrid worker` machine brought to the cluster.
        home_node = ray.get_runtime_context().get_node_id()
        # Resuming keeps the tracker's state: the ledger of the epoch under way, the metrics, the
        # round reached. A fresh run starts empty.
        self.tracker = tracker = tracker_from_url(conf.state_url, job_name=conf.job_name, fresh=resume is None,
                                                  master=True)
        recorder = TrackerRecorder(tracker)
        recorder.start_run(conf, self.progress if resume is not None else None, self._say)
        self.status_file = StatusFile(tracker, conf.job_name)
        if conf.checkpoint_dir is not None:
            writer = CheckpointWriter(Path(conf.checkpoint_dir), factory(), conf.keep_checkpoints,
                                      run_id=resumed.get("run_id"))
            self.checkpointer = Checkpointer(writer, conf.to_dict(mask_secrets=True), conf.checkpoint_every, self.events)
            self.checkpointer.commit(self.params, self.progress, self.strategy.state_dict())
        self.callbacks = [c for c in (self.checkpointer, recorder, self._history, self.status_file,
                                      RunProgressDisplay(self.events.say)) if c is not None]
        if conf.data_feed == "files" and self.iterator is not None:
            raise ConfigError("data_feed: files makes each worker read the Conf's data set from its own disk, "
                              "but this master was given its own data; use data_feed: object_store.")
        self.group = WorkerGroup.for_run(conf, factory, self.strategy.worker_plugin(), tracker, home_node,
                                         self.train_data, self._say)
        self.group.hosts, self.group.node_check_every_s = self._worker_hosts, self.node_check_every_s
        self.dispatcher = Dispatcher(self.group, tracker, conf, FailurePolicy(min_workers=1), self._say)
        self.dispatcher.pull_jobs = conf.pull_jobs and not self.strategy.lockstep
        attach_shards(self.shards, self.group, self.dispatcher)
        if accept_workers:
            from deepgrid.distributed.cluster import open_mailbox

            self.group.mailbox = open_mailbox({
                "algorithm": conf.model, "job_name": conf.job_name, "threads": conf.threads_per_worker,
                "data_digest": self.group.data_digest, "examples": len(self.train_data), "spec": self.group.spec},
                node_id=home_node)
        count = conf.effective_workers if local_workers is None else local_workers
        if count:
            check_room(count, conf.threads_per_worker, conf.device, home_node)
            self.group.start(count)
        self.group.remember_nodes()
        start_dashboard(self)  # a callback too: it sees each round's end
        self.status_file.write(force=True)
        return self

    def _training_data(self, conf: Conf) -> tuple[ArrayDataset, ArrayDataset | None]:
        self.shards, data, train, validation = training_data(conf, self.iterator)
        share = len(data) // conf.effective_workers  # each worker's shard of an epoch
        if conf.batch_size > share:
            raise DataError(f"Batch size {conf.batch_size} is larger than a worker's shard ({share} of "
                            f"{len(data)} examples over {conf.effective_workers} workers); use a batch size "
                            f"of at most {max(share, 1)}, fewer workers, or more data.")
        return train, validation

    def add_worker(self, worker_id: str, actor: Any, info: dict[str, Any]) -> None:
        """Take on a worker started elsewhere (``deepgrid worker``); it gets jobs from the next round."""
        assert self.group is not None
        self.group.add(worker_id, actor, info)

    def accept_joined(self) -> int:
        """Take on the workers that registered through the mailbox since the last look."""
        return self.group.accept_joined() if self.group is not None else 0

    def wait_for_workers(self, minimum: int, hint: str = "") -> None:
        """Block until ``minimum`` workers are present (``deepgrid master --min-workers``)."""
        assert self.group is not None and self.status_file is not None
        self.group.wait_for(minimum, hint, on_wait=self.status_file.write)

    # -- training --------------------------------------------------------------------
    def train(self) -> Model:
        """Run every phase to the end (or to early stopping) and return the trained model."""
        conf, model, tracker, group = self.conf, self.model, self.tracker, self.group
        if conf is None or model is None or tracker is None or group is None:
            raise ClusterError("ActorNetworkRunner.train() called before setup(conf); call setup first.")
        start = time.perf_counter()
        tracker.update_run(status="training")
        group.publish("training", self.round)
        try:
            finished = run_phases(model, conf.epochs, self._train_epoch, self.progress, resume=self._resuming,
                                  validate=self._validate if self.validation is not None else None,
                                  patience=conf.patience, min_improvement=conf.min_improvement,
                                  on_phase=lambda phase: self.strategy.begin_phase(), on_epoch=self._epoch_done)
            if not finished:
                self.stopped_reason = "early stopping"
                self._say(f"stopped early: no validation gain in {conf.patience} epoch(s)", "stopped")
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            call_hook(self.callbacks, "on_train_end", self)
        self._train_seconds = time.perf_counter() - start
        model.set_flat_params(self.params)
        status = "stopped early" if self.stopped_reason == "early stopping" else "done"
        if self.checkpointer is not None:
            self.checkpointer.save(status)  # first: it must not depend on the tracker still answering
        tracker.update_run(status=status, done=True)
        group.publish(status, self.round)
        self.status_file.write(force=True)
        return model

    def _fail(self, error: BaseException) -> None:
        """Save the last whole round and record the failure; a failing save must not hide the error."""
        saved = None
        if self.checkpointer is not None:
            try:
                saved = self.checkpointer.save("failed")
            except Exception as e:
                self._say(f"deepgrid: could not write the failure checkpoint: {e}")
        self.group.publish("failed", self.round)
        if not self._tracker_down():
            try:
                self.tracker.update_run(status="failed")
                self.status_file.write(force=True)
            except ClusterError as e:  # the tracker went away too: the run's own error matters more
                self._say(f"deepgrid: could not record the failure in the state tracker: {e}")
        if isinstance(error, ClusterError) and saved is not None:
            committed = self.checkpointer.committed_round
            raise ClusterError(f"{error} The last checkpoint (round {committed}) is in "
                               f"{saved.parent}: continue with --resume {saved.parent}.") from None

    def _train_epoch(self, phase_index: int, phase: Phase, epoch: int, skip: set[int]) -> float:
        """One epoch on the workers: its jobs in the tracker's queue, rounds until none is left."""
        conf, tracker = self.conf, self.tracker
        tracker.update_run(phase=phase.name, epoch=epoch)
        tracker.clear_jobs()  # jobs name batch positions: the workers know the order
        tracker.enqueue_jobs(epoch_jobs(self.shards, self.train_data, phase.name, epoch,
                                        phase_seed(self.model.conf.seed, phase_index), conf.batch_size,
                                        conf.averaging_frequency, skip))
        seen, loss_sum = 0, 0.0
        while tracker.pending_jobs() or tracker.in_flight():
            for result in self._round(phase):
                seen += result.n_samples
                loss_sum += result.n_samples * result.loss
        self.ledger[(phase.name, epoch)] = tracker.trained_batches(phase.name, epoch)
        mean_loss = loss_sum / max(seen, 1)
        self._say(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: loss {mean_loss:.4f} "
                  f"({len(self.workers)} workers, round {self.round})", "epoch")
        return mean_loss

    def _validate(self) -> float:
        self.model.set_flat_params(self.params)
        return validation_loss(self.model, self.validation)

    def _epoch_done(self, phase: Phase, epoch: int, loss: float, validation: float | None) -> None:
        if validation is not None:
            self.tracker.update_run(best_loss=self.progress.best_loss, bad_checks=self.progress.bad_checks)
            self._say(f"  validation loss {validation:.4f} (best {self.progress.best_loss:.4f})", "validation")
        call_hook(self.callbacks, "on_epoch_end", self, phase, epoch, loss, validation)

    def _round(self, phase: Phase) -> list[JobResult]:
        """One round: the dispatcher runs jobs on the workers, the strategy combines their results."""
        group, dispatcher = self.group, self.dispatcher
        group.check_new_nodes()
        if not group.workers:
            group.accept_joined()
        if not group.workers:
            raise ClusterError("No live workers are left; the last checkpoint is kept. Start workers and --resume.")
        strategy = self.strategy
        dispatcher.watch_overruns()  # first: a worker it re-enables is one the strategy must plan for
        strategy.before_round(group)
        started = time.monotonic()
        if strategy.barrier:
            results = dispatcher.run_round(self.params)
            if results:
                self.params = strategy.combine(self.params, results)
        else:  # each result is applied as it comes; a "round" is as many results as workers
            results = dispatcher.run_async(lambda: (self.params, strategy.version), self._apply, len(group.workers))
        if results is None:  # every worker was busy with an overrun job: no round
            return []
        self.progress.round += 1
        self.progress.done_jobs.update(r.job.index for r in results)
        report = RoundReport(self.progress.round, phase.name, results, time.monotonic() - started)
        self._samples_trained += report.n_samples
        for callback in self.callbacks:
            callback.on_round_end(self, report)
        if self.on_round is not None:
            self.on_round(self)
        return results

    def _apply(self, result: JobResult) -> None:
        self.params = self.strategy.apply(self.params, result)

    def _tracker_down(self) -> bool:
        """True while the (Redis) tracker is in an outage it gave up on: skip courtesy writes then."""
        return bool(getattr(self.tracker, "unreachable", False))

    # -- reports ---------------------------------------------------------------------
    def jobs_by_host(self) -> dict[str, int]:
        """Jobs trained per machine (its address), over the whole run, dropped workers included."""
        return self._history.by_host(self._worker_hosts)

    def ledger_summary(self) -> list[dict[str, Any]]:
        """Per phase and epoch: how many mini-batches there were, how many were never trained and
        how many more than once (a resumed run retrains the round its master lost)."""
        n = n_batches(self.shards, self.train_data, self.conf.batch_size)
        return [{"phase": phase, "epoch": epoch, "batches": n, "missing": sum(counts.get(i, 0) == 0 for i in range(n)),
                 "repeated": sum(c > 1 for c in counts.values())} for (phase, epoch), counts in self.ledger.items()]

    @property
    def samples_per_s(self) -> float:
        return self._samples_trained / self._train_seconds if self._train_seconds else 0.0

    @property
    def samples_trained(self) -> int:
        return self._samples_trained

    @property
    def train_seconds(self) -> float:
        return self._train_seconds

    def shutdown(self) -> None:
        """Stop the workers and flush the state; the engine stays up if we joined it."""
        stop_dashboard(self)
        if self.group is not None:
            self.group.stop_all()
        if self.checkpointer is not None:
            checkpointer, self.checkpointer = self.checkpointer, None
            checkpointer.close()
        if self.tracker is not None:
            try:
                if not self._tracker_down():  # else each call would retry for the whole retry window
                    self.status_file.write(force=True)
                    self.tracker_snapshot = self.tracker.snapshot()
            finally:  # the engine must stop even when the tracker's last answer fails
                self.tracker.close()
                self.tracker = None
        if self._started_engine:
            engine.shutdown()
            self._started_engine = False
