"""The master: ActorNetworkRunner, as in the seed.

    runner = ActorNetworkRunner("master", train_data)
    runner.setup(conf)      # engine, model, workers, state tracker
    model = runner.train()  # every phase, round by round
    runner.shutdown()

Training goes in rounds of parameter averaging. Each epoch of each phase is
cut into jobs of ``averaging_frequency`` mini-batches, in the same fixed order
the reference loop uses. In a round every live worker pulls a job from the
state tracker, trains it from the current parameters with its own optimizer
state, and returns new parameters; the master takes their sample-weighted
mean. A worker that dies or overruns the round's deadline loses its job back
to the queue and another worker trains it: the run goes on, and the tracker's
ledger shows every mini-batch trained. With one worker a run computes exactly
what ``deepgrid.train.loop.fit`` computes.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepgrid.checkpoint import CheckpointWriter, load_latest_checkpoint, load_run_state
from deepgrid.config.conf import Conf
from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.mnist import training_split
from deepgrid.distributed import engine
from deepgrid.distributed.host import EXTERNAL_RESOURCE
from deepgrid.distributed.policy import Failure, FailureKind, FailurePolicy
from deepgrid.distributed.worker import build_named_model, remote_worker_class
from deepgrid.errors import ClusterError, ConfigError, DataError
from deepgrid.models.base import Model, Phase
from deepgrid.state.base import Job, StateTracker, tracker_from_url
from deepgrid.state.status import status_path, write_status
from deepgrid.train.loop import EarlyStopping, jobs, validation_loss

log = logging.getLogger("deepgrid")

STATUS_EVERY_S = 0.5  # how often the status file is rewritten
NODE_CHECK_EVERY_S = 2.0  # how often the master looks for nodes that joined (runner.node_check_every_s)
MIN_DEADLINE_S = 5.0  # a round's deadline is never shorter than this ...
DEADLINE_FACTOR = 20.0  # ... nor than this many times a typical job's time
PING_EVERY_S = 1.0  # how often a worker busy with a job is asked whether it still answers


@dataclass
class WorkerHandle:
    worker_id: str
    actor: Any
    node_id: str | None = None
    failures: int = 0
    # A call that ran past its round's deadline and is still running. Until it ends the worker is
    # disabled in the tracker and gets no job: its model and optimizer are busy with the old one.
    overrun: Any = None
    overrun_ping: Any = None
    last_seen: float = 0.0


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
        self._say = progress or (lambda message: log.info(message))
        self.conf: Conf | None = None
        self.model: Model | None = None
        self.tracker: StateTracker | None = None
        self.workers: dict[str, WorkerHandle] = {}
        self.params: np.ndarray | None = None
        self.round = 0
        self.stopped_reason: str | None = None
        self._job_seconds: deque[float] = deque(maxlen=50)  # recent jobs' seconds, for the round deadline
        self._batch_seconds: dict[str, float] = {}  # each worker's seconds per mini-batch, last job
        self._block_step: np.ndarray | None = None  # the last round's step, for block momentum
        self._stopper: EarlyStopping | None = None  # the phase's early stopping, saved in checkpoints
        self._last_status = 0.0
        self._last_node_check = 0.0
        self._known_nodes: set[str] = set()
        self._resume: dict[str, Any] | None = None
        # Where the run stands, kept here (not only in the tracker) so that a checkpoint can be
        # written when the tracker is unreachable: that is when one is needed most.
        self._phase_name = ""
        self._phase_index = 0
        self._epoch = 0
        self._done_jobs: set[int] = set()
        # The state at the end of the last whole round: parameters (a copy) and checkpoint metadata.
        # A failure mid-round checkpoints this, never a half-averaged round.
        self._committed: tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]] | None = None
        self._conf_dict: dict[str, Any] = {}
        self._writer: CheckpointWriter | None = None
        self.resumed_from_round: int | None = None  # the checkpoint's round when setup(resume=...)
        self.checkpoint_wait_s = 0.0  # time rounds spent waiting for the background checkpoint writer
        self._samples_trained = 0
        self._train_seconds = 0.0
        self._started_engine = False
        self.node_check_every_s = NODE_CHECK_EVERY_S
        # Kept after shutdown, for reports and tests: which batches each epoch trained, and the last state.
        self.ledger: dict[tuple[str, int], dict[int, int]] = {}
        self.tracker_snapshot: dict[str, Any] = {}
        self.mailbox: Any = None  # set when deepgrid worker processes may join
        self._worker_hosts: dict[str, str] = {}  # worker id -> its machine's address, for reports
        self.history: list[dict[str, Any]] = []  # one entry per job trained: round, worker, job, samples, loss
        self.on_round: Callable[[ActorNetworkRunner], None] | None = None  # called after each round

    # -- context manager ---------------------------------------------------------
    def __enter__(self) -> ActorNetworkRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

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
        factory = self._model_factory or _named_factory(conf)
        self.model = factory()
        if resume is not None:
            restored, self._resume = load_latest_checkpoint(Path(resume), model_factory=factory, conf=conf)
            self._block_step = load_run_state(Path(resume)).get("block_step")  # momentum goes on as it was
            self.model.set_flat_params(restored.get_flat_params())
            # Carry on the round counter: checkpoint names sort by round, so a resumed run that
            # counted from 0 again would write checkpoints older than the one it started from.
            self.round = self.resumed_from_round = int(self._resume.get("round", 0))
            self._phase_name = str(self._resume.get("phase") or "")
            self._phase_index = int(self._resume.get("phase_index", 0))
            self._epoch = int(self._resume.get("epoch", 0))
            self._done_jobs = set(self._resume.get("done_jobs", []))
            self._say(f"resuming from round {self.round} "
                      f"({self._phase_name or 'first phase'} epoch {self._epoch + 1})")
        self.params = self.model.get_flat_params()
        self.train_data, self.validation = self._training_data(conf)

        if conf.engine_address:
            engine.join(conf.engine_address)
        elif not ray.is_initialized():
            engine.start_local()
            self._started_engine = True
        # The master's own workers (and its mailbox) run on its own machine's node, never on a
        # node that a `deepgrid worker` machine brought to the cluster.
        self._home_node = ray.get_runtime_context().get_node_id()
        # Resuming keeps the tracker's state: the ledger of the epoch under way, the metrics, the
        # round reached. A fresh run starts empty.
        self.tracker = tracker_from_url(conf.state_url, job_name=conf.job_name, fresh=resume is None, master=True)
        run_fields: dict[str, Any] = dict(
            job_name=conf.job_name, status="starting", batch_size=conf.batch_size, patience=conf.patience,
            min_improvement=conf.min_improvement, begun=True, done=False)
        if resume is not None:
            self._take_over_tracker(run_fields)
        else:
            run_fields["started_at"] = time.time()
        self.tracker.update_run(**run_fields)
        self._conf_dict = conf.to_dict(mask_secrets=True)
        if conf.checkpoint_dir is not None:
            self._writer = CheckpointWriter(Path(conf.checkpoint_dir), factory(), conf.keep_checkpoints,
                                            run_id=(self._resume or {}).get("run_id"))
        self._commit()
        self.policy = FailurePolicy(min_workers=1)
        self._worker_class = remote_worker_class()
        self._factory = factory
        if conf.data_feed == "files" and self.iterator is not None:
            raise ConfigError("data_feed: files makes each worker read the Conf's data set from its own disk, "
                              "but this master was given its own data; use data_feed: object_store.")
        self._data_digest: str | None = None
        if conf.data_feed == "object_store":
            # Put once; each node fetches it once and its workers map the same shared memory.
            self._data_args = (ray.put(self.train_data.x.numpy()), ray.put(self.train_data.y.numpy()))
        else:
            self._data_args = (conf.to_dict(), None)
            # Each host reads its own files: the master refuses a host whose examples differ.
            self._data_digest = self.train_data.digest()
        if accept_workers:
            from deepgrid.distributed.cluster import open_mailbox

            self.mailbox = open_mailbox({
                "algorithm": conf.model, "job_name": conf.job_name, "factory": self._factory,
                "data_args": list(self._data_args), "batch_size": conf.batch_size,
                "threads": conf.threads_per_worker, "device": conf.device,
                "data_digest": self._data_digest, "examples": len(self.train_data)}, node_id=self._home_node)
        count = conf.effective_workers if local_workers is None else local_workers
        if count:
            check_room(count, conf.threads_per_worker, conf.device, self._home_node)
            self._start_workers(count)
        self._known_nodes = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        self._write_status(force=True)
        return self

    def _take_over_tracker(self, run_fields: dict[str, Any]) -> None:
        """Resuming: adopt what the previous master left in the tracker, and drop its workers.

        Its workers lived in its engine (a local Ray dies with the master, and `deepgrid worker`
        processes lose the head they joined), so their entries would show dead workers as live;
        workers of this run register afresh. The ledger and the metrics are kept.
        """
        tracker = self.tracker
        assert tracker is not None
        before = tracker.run_state()
        stale = sorted(tracker.workers())
        for worker_id in stale:
            tracker.remove_worker(worker_id)
        if stale:
            self._say(f"removed {len(stale)} worker(s) of the previous master from the state tracker: "
                      f"{', '.join(stale)}")
        if before.round > self.round:
            self._say(f"the previous master had reached round {before.round}; "
                      f"{before.round - self.round} round(s) after the checkpoint are trained again")
        run_fields.update(round=self.round, param_version=self.round, phase=self._phase_name, epoch=self._epoch)
        if not before.started_at:
            run_fields["started_at"] = time.time()

    def _training_data(self, conf: Conf) -> tuple[ArrayDataset, ArrayDataset | None]:
        data = as_dataset(self.iterator, conf) if self.iterator is not None else _load_conf_data(conf)
        train, validation = training_split(data, conf)
        share = len(data) // conf.effective_workers  # each worker's shard of an epoch
        if conf.batch_size > share:
            raise DataError(f"Batch size {conf.batch_size} is larger than a worker's shard ({share} of "
                            f"{len(data)} examples over {conf.effective_workers} workers); use a batch size "
                            f"of at most {max(share, 1)}, fewer workers, or more data.")
        return train, validation

    def _start_workers(self, count: int, node_id: str | None = None) -> list[str]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        conf = self.conf
        assert conf is not None
        options: dict[str, Any] = {"num_cpus": conf.threads_per_worker, "scheduling_strategy":
                                   NodeAffinitySchedulingStrategy(node_id or self._home_node, soft=False)}
        if conf.device == "cuda":
            options["num_gpus"] = 1
        started = []
        for _ in range(count):
            worker_id = f"w{len(self.workers) + len(started) + 1}-{uuid.uuid4().hex[:4]}"
            actor = self._worker_class.options(**options).remote(
                worker_id, self._factory, *self._data_args, batch_size=conf.batch_size,
                threads=conf.threads_per_worker, device=conf.device)
            started.append((worker_id, actor))
        # Wait until each is built (model made, data mapped): a worker that
        # cannot start is a set-up error, reported now rather than mid-run.
        infos = ray.get([actor.info.remote() for _, actor in started], timeout=300)
        ids = []
        for (worker_id, actor), info in zip(started, infos, strict=True):
            if not self._same_data(worker_id, actor, info):
                continue
            self.workers[worker_id] = WorkerHandle(worker_id, actor, node_id)
            self._worker_hosts[worker_id] = str(info.get("ip") or info.get("host"))
            assert self.tracker is not None
            self.tracker.add_worker(worker_id, info)
            ids.append(worker_id)
        self._say(f"started {len(ids)} worker(s): {', '.join(ids)}")
        return ids

    def _same_data(self, worker_id: str, actor: Any, info: dict[str, Any]) -> bool:
        """With ``data_feed: files`` every host reads its own copy: refuse (and stop) a worker whose
        copy differs from the master's, naming its host, instead of averaging over other data."""
        if self._data_digest is None or info.get("data_digest") == self._data_digest:
            return True
        self._say(f"deepgrid: refused worker {worker_id} on host {info.get('host', '?')} ({info.get('ip', '?')}): "
                  f"its data files hold {info.get('examples')} examples with another checksum than the master's "
                  f"{len(self.train_data)}; copy the master's data files to that host.")
        _kill(actor)
        return False

    def add_worker(self, worker_id: str, actor: Any, info: dict[str, Any]) -> None:
        """Take on a worker started elsewhere (``deepgrid worker``); it gets jobs from the next round."""
        assert self.tracker is not None
        if not self._same_data(worker_id, actor, info):
            return
        self.workers[worker_id] = WorkerHandle(worker_id, actor, info.get("node_id"))
        self._worker_hosts[worker_id] = str(info.get("ip") or info.get("host"))
        self.tracker.add_worker(worker_id, info)
        self._say(f"worker {worker_id} joined from {info.get('host', '?')} ({info.get('ip', '?')})")

    def accept_joined(self) -> int:
        """Take on the workers that registered through the mailbox since the last look."""
        import ray

        if self.mailbox is None:
            return 0
        joined = ray.get(self.mailbox.drain.remote(), timeout=30)
        for worker_id, actor, info in joined:
            self.add_worker(worker_id, actor, info)
        return len(joined)

    def wait_for_workers(self, minimum: int, hint: str = "") -> None:
        """Block until ``minimum`` workers are present (``deepgrid master --min-workers``)."""
        last_said = 0.0
        while len(self.workers) < minimum:
            self.accept_joined()
            self._write_status()
            if time.monotonic() - last_said > 10 and len(self.workers) < minimum:
                self._say(f"waiting for workers: {len(self.workers)} of {minimum} present. {hint}".rstrip())
                last_said = time.monotonic()
            time.sleep(0.2)

    def _publish(self, status: str) -> None:
        if self.mailbox is not None:
            try:
                self.mailbox.set_status.remote({"status": status, "round": self.round})
            except Exception:  # the mailbox is a courtesy to workers: never fail a run over it
                pass

    # -- training --------------------------------------------------------------------
    def train(self) -> Model:
        """Run every phase to the end (or to early stopping) and return the trained model."""
        conf, model, tracker = self.conf, self.model, self.tracker
        if conf is None or model is None or tracker is None:
            raise ClusterError("ActorNetworkRunner.train() called before setup(conf); call setup first.")
        start = time.perf_counter()
        tracker.update_run(status="training")
        self._publish("training")
        try:
            for phase_index, phase in enumerate(model.phases(conf.epochs)):
                if self._resume and phase_index < int(self._resume.get("phase_index", 0)):
                    continue
                if not self._run_phase(phase_index, phase):
                    break
        except BaseException as error:
            saved = self._checkpoint_after_failure()
            self._publish("failed")
            if not self._tracker_down():
                try:
                    tracker.update_run(status="failed")
                    self._write_status(force=True)
                except ClusterError as e:  # the tracker went away too: the run's own error matters more
                    self._say(f"deepgrid: could not record the failure in the state tracker: {e}")
            if isinstance(error, ClusterError) and saved is not None:
                raise ClusterError(f"{error} The last checkpoint (round {self._committed_round()}) is in "
                                   f"{saved.parent}: continue with --resume {saved.parent}.") from None
            raise
        self._train_seconds = time.perf_counter() - start
        model.set_flat_params(self.params)
        status = "stopped early" if self.stopped_reason == "early stopping" else "done"
        self._checkpoint(status)  # first: it must not depend on the tracker still answering
        tracker.update_run(status=status, done=True)
        self._publish(status)
        self._write_status(force=True)
        return model

    def _checkpoint_after_failure(self) -> Path | None:
        """Save the last whole round while the run fails; a failing save must not hide the run's error."""
        try:
            return self._checkpoint("failed")
        except Exception as e:
            self._say(f"deepgrid: could not write the failure checkpoint: {e}")
            return None

    def _committed_round(self) -> int:
        return int(self._committed[1]["round"]) if self._committed is not None else self.round

    def _run_phase(self, phase_index: int, phase: Phase) -> bool:
        """All epochs of one phase; False when the run stops early."""
        conf, tracker = self.conf, self.tracker
        assert conf is not None and tracker is not None
        stopper = self._stopper = EarlyStopping(conf.patience, conf.min_improvement)
        n_batches = self.train_data.n_batches(conf.batch_size)
        first_epoch = 0
        done_jobs: set[int] = set()
        resuming_here = bool(self._resume) and phase_index == int(self._resume.get("phase_index", 0))
        if resuming_here:
            first_epoch = int(self._resume.get("epoch", 0))
            done_jobs = set(self._resume.get("done_jobs", []))
            # Early stopping carries on where it was: best validation loss and checks without gain.
            best = self._resume.get("best_loss")
            stopper.best = float(best) if best is not None else stopper.best
            stopper.bad_checks = int(self._resume.get("bad_checks", 0))
            self._resume = None
        for epoch in range(first_epoch, phase.epochs):
            tracker.update_run(phase=phase.name, epoch=epoch)
            order = np.arange(n_batches)  # positions only: workers compute the same order themselves
            epoch_jobs = [Job(phase.name, epoch, i, int(chunk[0]), int(chunk[-1]) + 1)
                          for i, chunk in enumerate(jobs(order, conf.averaging_frequency)) if i not in done_jobs]
            self._phase_index, self._done_jobs = phase_index, set(done_jobs)
            self._phase_name, self._epoch = phase.name, epoch
            if epoch == first_epoch and not resuming_here:
                self._block_step = None  # a new phase trains other parameters: no momentum carried over
            tracker.clear_jobs()
            tracker.enqueue_jobs(epoch_jobs)
            losses: list[tuple[int, float]] = []
            while tracker.pending_jobs() or tracker.in_flight():
                losses += self._round(phase)
            done_jobs = set()
            self.ledger[(phase.name, epoch)] = tracker.trained_batches(phase.name, epoch)
            seen = sum(n for n, _ in losses)
            mean_loss = sum(n * loss for n, loss in losses) / max(seen, 1)
            self._say(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: loss {mean_loss:.4f} "
                      f"({len(self.workers)} workers, round {self.round})")
            if self.validation is not None and phase.supervised:
                assert self.model is not None
                self.model.set_flat_params(self.params)
                val = validation_loss(self.model, self.validation)
                stop = stopper.should_stop(val)
                tracker.update_run(best_loss=stopper.best, bad_checks=stopper.bad_checks)
                self._say(f"  validation loss {val:.4f} (best {stopper.best:.4f})")
                if stop:
                    self.stopped_reason = "early stopping"
                    return False
        return True

    def _round(self, phase: Phase) -> list[tuple[int, float]]:
        """One round: each live worker trains a job from the same parameters; then average.

        Jobs are pulled: a worker that finishes while a slower one will still be busy for longer
        than its own next job takes another job, continuing from its own parameters, so a slow
        worker trains fewer jobs instead of holding the others idle. Each worker's last
        parameters count by the samples it trained this round.
        """
        import ray

        tracker, conf = self.tracker, self.conf
        assert tracker is not None and conf is not None
        self._check_new_nodes()
        if not self.workers:
            self.accept_joined()
        if not self.workers:
            raise ClusterError("No live workers are left; the last checkpoint is kept. Start workers and --resume.")
        self._watch_overruns()
        free = [(worker_id, handle) for worker_id, handle in self.workers.items() if handle.overrun is None]
        if not free:  # every worker is still busy with an overrun job: wait for one, count no round
            self._watch_overruns(wait_s=PING_EVERY_S)
            return []
        params_ref = ray.put(self.params)  # one copy in the object store, read by every worker
        calls: dict[Any, tuple[str, Job]] = {}
        for worker_id, handle in free:
            job = tracker.claim_job(worker_id)
            if job is None:
                break
            calls[handle.actor.train.remote(params_ref, job.to_dict())] = (worker_id, job)
        if not calls:  # jobs are pending (the caller checked) yet none could be handed out
            raise ClusterError(f"The state tracker holds {tracker.pending_jobs()} pending job(s) but handed none "
                               f"to {len(free)} free worker(s); its state is inconsistent (another master on "
                               "the same job name?). The last checkpoint is kept: resume with --resume.")
        started = time.monotonic()
        call_started = dict.fromkeys(calls, started)
        deadline = self._deadline()
        results: list[dict[str, Any]] = []  # every job's result, for the losses and the history
        latest: dict[str, tuple[int, dict[str, Any]]] = {}  # each worker's last job index and result
        samples: dict[str, int] = {}  # samples each worker trained this round: its weight in the mean
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
                try:
                    result = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                    # ObjectLostError: the job's result was on the worker's machine, gone before we read it.
                    self._failure(Failure(worker_id, FailureKind.DIED, job, _first_line(e)))
                    continue
                except ray.exceptions.RayTaskError as e:
                    handle = self.workers.get(worker_id)
                    count = handle.failures + 1 if handle else 1
                    if handle:
                        handle.failures = count
                    self._failure(Failure(worker_id, FailureKind.ERROR, job, _first_line(e), count))
                    continue
                if tracker.complete_job(worker_id, result["job_id"], result["n_samples"], result["loss"]):
                    results.append(result)
                    latest[worker_id] = (job.index, result)
                    samples[worker_id] = samples.get(worker_id, 0) + result["n_samples"]
                    self._batch_seconds[worker_id] = result["seconds"] / job.n_batches
                    self.history.append({"round": self.round + 1, "worker_id": worker_id, "job_id": job.id,
                                         "n_samples": result["n_samples"], "loss": result["loss"],
                                         "seconds": result["seconds"]})
                    self._job_seconds.append(result["seconds"])
                    self._done_jobs.add(job.index)
                    ref = self._pull_another(worker_id, pending, calls, call_started)
                    if ref is not None:
                        pending.append(ref)
            since, looked = self._discount_held_up(since, looked, seen)
            pending = self._check_heartbeats(pending, calls, pings, seen)
        for ref in pending:  # past the deadline: the job moves on, the worker may stay
            worker_id, job = calls[ref]
            handle = self.workers.get(worker_id)
            if handle:
                handle.failures += 1
            self._failure(Failure(worker_id, FailureKind.TIMEOUT, job, f"no result after {deadline:.1f} s",
                                  handle.failures if handle else 1))
            if worker_id in self.workers:  # kept: no new job until this call ends
                handle = self.workers[worker_id]
                handle.overrun, handle.last_seen = ref, seen.get(worker_id, time.monotonic())
                tracker.set_enabled(worker_id, False)
        if latest:
            # Summed in job order, not arrival order: float sums depend on their order, and the
            # same seed must give the same parameters however the results raced in.
            order = sorted(latest, key=lambda w: latest[w][0])
            mean = weighted_mean([latest[w][1]["params"] for w in order], [samples[w] for w in order])
            self.params = self._block_update(mean, len(latest))
        self.round += 1
        n = sum(r["n_samples"] for r in results)
        loss = sum(r["loss"] * r["n_samples"] for r in results) / n if n else float("nan")
        self._samples_trained += n
        self._settle_checkpoint()  # the last round's checkpoint is on disk before the tracker moves on
        tracker.update_run(round=self.round, param_version=self.round, last_loss=loss if n else None)
        tracker.record_metrics({"round": self.round, "phase": phase.name, "loss": loss if n else None,
                                "samples": n, "workers": len(results),
                                "seconds": round(time.monotonic() - started, 4)})
        self._round_done()
        self._write_status()
        if self.on_round is not None:
            self.on_round(self)
        return [(r["n_samples"], r["loss"]) for r in results]

    def _block_update(self, mean: np.ndarray, n_workers: int) -> np.ndarray:
        """The next parameters from the round's average: block momentum (BMUF, Chen & Huo 2016).

        Averaging the workers' parameters shrinks each round's step (their directions differ);
        adding ``block_momentum`` times the previous round's step back makes up for it. The
        default, 1 - 1/N for N workers in the round, is the paper's; with one worker it is 0,
        so one worker still computes exactly what the reference loop computes. The last step is
        checkpointed with the parameters, so a resumed run goes on with it.
        """
        assert self.conf is not None and self.params is not None
        momentum = self.conf.block_momentum
        momentum = 1.0 - 1.0 / n_workers if momentum is None else momentum
        step = mean - self.params
        if momentum > 0 and self._block_step is not None:
            step += momentum * self._block_step
        self._block_step = step
        return (self.params + step).astype(np.float32) if momentum > 0 else mean

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
        assert self.conf is not None
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
                self._failure(Failure(worker_id, FailureKind.STALE, calls[ref][1], silent))
                pending = [r for r in pending if r != ref]
            elif worker_id not in pinged and now - seen.get(worker_id, now) >= PING_EVERY_S:
                pings[handle.actor.ping.remote()] = worker_id
        return pending

    def _end_overruns(self) -> None:
        """Re-enable the workers whose overrun call has ended (its result is stale: dropped)."""
        import ray

        for worker_id, handle in list(self.workers.items()):
            if handle.overrun is None or not ray.wait([handle.overrun], timeout=0)[0]:
                continue
            try:
                ray.get(handle.overrun)
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                self._failure(Failure(worker_id, FailureKind.DIED, None, _first_line(e)))
                continue
            except ray.exceptions.RayError:
                pass  # its job was re-queued already; the error is the stale job's
            handle.overrun = handle.overrun_ping = None
            assert self.tracker is not None
            self.tracker.set_enabled(worker_id, True)
            self._say(f"deepgrid: worker {worker_id} finished its overrun job and gets jobs again")

    def _watch_overruns(self, wait_s: float = 0.0) -> None:
        """Ping the workers busy with an overrun call and drop one silent for ``heartbeat_timeout_s``
        (hung, stopped, cut off: Ray may take a minute to declare its node dead). ``wait_s``: how
        long to wait for one of them to answer or finish, when no other worker is free."""
        import ray

        assert self.conf is not None
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
                self._failure(Failure(handle.worker_id, FailureKind.STALE, None,
                                      f"no heartbeat for {now - handle.last_seen:.1f} s"))
        self._end_overruns()

    def _pull_another(self, worker_id: str, pending: list[Any], calls: dict[Any, tuple[str, Job]],
                      call_started: dict[Any, float]) -> Any:
        """Give ``worker_id`` another job of this round if the slowest worker still busy will take
        longer than that job; return its call, or None. Unknown speeds never pull."""
        tracker, handle = self.tracker, self.workers.get(worker_id)
        own = self._batch_seconds.get(worker_id)
        if (tracker is None or handle is None or own is None or not pending or not tracker.pending_jobs()
                or (self.conf is not None and not self.conf.pull_jobs)):
            return None
        now = time.monotonic()
        busy_for = 0.0  # how long the slowest in-flight job still needs, by its worker's past speed
        for ref in pending:
            other, job = calls[ref]
            speed = self._batch_seconds.get(other)
            if speed is None:
                return None
            busy_for = max(busy_for, speed * job.n_batches - (now - call_started[ref]))
        next_job = own * (self.conf.averaging_frequency if self.conf else 1)
        if busy_for < next_job:
            return None
        job = tracker.claim_job(worker_id)
        if job is None:
            return None
        ref = handle.actor.train.remote(None, job.to_dict())  # None: go on from its own parameters
        calls[ref], call_started[ref] = (worker_id, job), now
        return ref

    def _deadline(self) -> float:
        """Seconds a round may take: long enough for a slow job, short enough to notice a hung worker."""
        assert self.conf is not None
        typical = statistics.median(self._job_seconds) if self._job_seconds else self.conf.round_deadline_s / DEADLINE_FACTOR
        return min(self.conf.round_deadline_s, max(MIN_DEADLINE_S, DEADLINE_FACTOR * typical))

    def _failure(self, failure: Failure) -> None:
        """Apply the policy's decision: re-queue the job, drop the worker, or stop."""
        tracker = self.tracker
        assert tracker is not None
        decision = self.policy.decide(failure, live_workers=len(self.workers))
        self._say(f"deepgrid: {decision.reason}")
        if decision.requeue_job:
            tracker.release_job(failure.worker_id)
        if decision.drop_worker:
            handle = self.workers.pop(failure.worker_id, None)
            tracker.remove_worker(failure.worker_id)
            if handle is not None:
                _kill(handle.actor)
        if decision.stop:
            raise ClusterError(decision.reason)

    def _check_new_nodes(self) -> None:
        """Take on workers that joined since the last look (elastic scale-out): those registered
        by ``deepgrid worker``, and new ones started on nodes that joined the engine."""
        import ray

        now = time.monotonic()
        if now - self._last_node_check < self.node_check_every_s:
            return
        self._last_node_check = now
        self.accept_joined()
        for node in ray.nodes():
            node_id = node["NodeID"]
            if not node.get("Alive") or node_id in self._known_nodes:
                continue
            self._known_nodes.add(node_id)
            resources = node.get("Resources", {})
            if resources.get(EXTERNAL_RESOURCE):  # a `deepgrid worker` node brings its own actors
                continue
            assert self.conf is not None
            address = node.get("NodeManagerAddress")
            count = int(resources.get("CPU", 0) // self.conf.threads_per_worker)
            if self.conf.device == "cuda":
                count = min(count, int(resources.get("GPU", 0)))
            if count <= 0:
                self._say(f"deepgrid: node {address} joined but cannot host a worker ({resources.get('CPU', 0):g} "
                          f"CPUs, {resources.get('GPU', 0):g} GPUs); skipped")
                continue
            self._say(f"node {address} joined: starting {count} worker(s) on it")
            try:
                self._start_workers(count, node_id)
            except (ray.exceptions.RayError, ConfigError, DataError) as e:  # the run goes on without it
                self._say(f"deepgrid: node {address} joined but its workers did not start ({_first_line(e)}); skipped")

    # -- checkpoints and status -------------------------------------------------------
    def _commit(self) -> None:
        """Record the state at a round boundary: what a checkpoint of this round holds.

        The parameters are copied (about 0.1 ms for 2 MB) because the next round replaces them
        while the writer thread may still be saving these.
        """
        if self.params is None or self._writer is None:  # no checkpoints: nothing to copy each round
            return
        self._committed = (np.array(self.params, dtype=np.float32, copy=True), {
            "conf": self._conf_dict, "phase": self._phase_name, "phase_index": self._phase_index,
            "epoch": self._epoch, "round": self.round, "param_version": self.round,
            "done_jobs": sorted(self._done_jobs), "status": "training",
            # JSON has no infinity: an early stopper with no validation yet saves null.
            "best_loss": None if self._stopper is None or math.isinf(self._stopper.best) else self._stopper.best,
            "bad_checks": 0 if self._stopper is None else self._stopper.bad_checks,
        }, {} if self._block_step is None else {"block_step": self._block_step.copy()})

    def _settle_checkpoint(self) -> None:
        """Wait for the checkpoint of the previous round, which was written while this round trained.

        It is almost always on disk already (a write takes milliseconds); waiting for it before
        the tracker records this round means the newest checkpoint is never more than one round
        behind the round the tracker shows, so a killed master loses at most one round.
        """
        if self._writer is not None:
            started = time.perf_counter()
            self._writer.flush()
            self.checkpoint_wait_s += time.perf_counter() - started

    def _round_done(self) -> None:
        """End of a whole round: commit it and, every ``checkpoint_every`` rounds, save it in the
        background while the next round trains (so a killed master loses at most one round)."""
        assert self.conf is not None
        self._commit()
        if self.round % self.conf.checkpoint_every == 0:
            self._checkpoint(wait=False)

    def _checkpoint(self, status: str | None = None, *, wait: bool = True) -> Path | None:
        """Save the last whole round (never the tracker's view: it may be unreachable).

        ``wait`` blocks until it is on disk (the final and the failure checkpoints) and returns its path.
        """
        if self._writer is None or self._committed is None:
            return None
        params, meta, tensors = self._committed
        self._writer.submit(params, meta if status is None else {**meta, "status": status}, tensors)
        return self._writer.flush() if wait else None

    def _tracker_down(self) -> bool:
        """True while the (Redis) tracker is in an outage it gave up on: skip courtesy writes then."""
        return bool(getattr(self.tracker, "unreachable", False))

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tracker is None or self.conf is None or (not force and now - self._last_status < STATUS_EVERY_S):
            return
        self._last_status = now
        write_status(status_path(self.conf.job_name), self.tracker.snapshot())

    def _let_worker_processes_go(self, wait_s: float = 5.0) -> None:
        """Wait (briefly) until each `deepgrid worker` process has seen that the run ended,
        so that it exits cleanly instead of reporting a vanished master."""
        import ray

        if self.mailbox is None:
            return
        deadline = time.monotonic() + wait_s
        try:
            while ray.get(self.mailbox.unacknowledged.remote(), timeout=wait_s) and time.monotonic() < deadline:
                time.sleep(0.1)
        except Exception:  # best effort: the run itself is over
            pass
        self.mailbox = None

    def jobs_by_host(self) -> dict[str, int]:
        """Jobs trained per machine (its address), over the whole run, dropped workers included."""
        counts: dict[str, int] = {}
        for entry in self.history:
            host = self._worker_hosts.get(entry["worker_id"], "?")
            counts[host] = counts.get(host, 0) + 1
        return counts

    def ledger_summary(self) -> list[dict[str, Any]]:
        """Per phase and epoch: how many mini-batches there were, how many were never trained and
        how many more than once (a resumed run retrains the round its master lost)."""
        assert self.conf is not None
        n_batches = self.train_data.n_batches(self.conf.batch_size)
        rows = []
        for (phase, epoch), counts in self.ledger.items():
            rows.append({"phase": phase, "epoch": epoch, "batches": n_batches,
                         "missing": sum(1 for i in range(n_batches) if counts.get(i, 0) == 0),
                         "repeated": sum(1 for c in counts.values() if c > 1)})
        return rows

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
        self._let_worker_processes_go()
        for handle in self.workers.values():
            _kill(handle.actor)
        self.workers.clear()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()  # whatever is queued gets written; errors were raised to train() already
        if self.tracker is not None:
            try:
                if not self._tracker_down():  # else each call would retry for the whole retry window
                    self._write_status(force=True)
                    self.tracker_snapshot = self.tracker.snapshot()
            finally:  # the engine must stop even when the tracker's last answer fails
                self.tracker.close()
                self.tracker = None
                if self._started_engine:
                    engine.shutdown()
                    self._started_engine = False
        if self._started_engine:
            engine.shutdown()
            self._started_engine = False


def weighted_mean(vectors: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """The exact sample-weighted mean of parameter vectors (accumulated in float64)."""
    if len(vectors) == 1:
        return np.array(vectors[0], dtype=np.float32)  # a copy we own: no averaging error at all
    total = np.zeros(vectors[0].shape, dtype=np.float64)
    for vector, weight in zip(vectors, weights, strict=True):
        total += weight * vector.astype(np.float64)
    return (total / sum(weights)).astype(np.float32)


def as_dataset(iterator: Any, conf: Conf) -> ArrayDataset:
    """The master's iterator as an in-memory data set (the seed's DataSetIterator, materialised)."""
    import torch

    n_in, n_out = conf.network.n_in, conf.network.n_out
    if isinstance(iterator, ArrayDataset):
        return iterator
    if isinstance(iterator, tuple) and len(iterator) == 2:
        return ArrayDataset.from_any(iterator[0], iterator[1], n_in=n_in, n_classes=n_out)
    if isinstance(iterator, torch.utils.data.Dataset):
        return ArrayDataset.from_any(iterator, n_in=n_in, n_classes=n_out)
    xs, ys = [], []
    for x, y in iterator:
        batch = ArrayDataset.from_any(x, y, n_in=n_in, n_classes=n_out)
        xs.append(batch.x)
        ys.append(batch.y)
    if not xs:
        raise DataError("The master's iterator gave no data; pass an iterator of (x, y) batches.")
    return ArrayDataset(torch.cat(xs), torch.cat(ys))


def check_room(count: int, threads: int, device: str, node_id: str) -> None:
    """The master's own workers must fit on its node: Ray would otherwise wait for room forever."""
    from deepgrid.distributed.host import node_resources

    resources = node_resources(node_id)
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if count * threads > cpus:
        fit = max(int(cpus // threads), 0)
        raise ConfigError(f"{count} workers with threads_per_worker {threads} need {count * threads} CPUs, but this "
                          f"machine's engine node offers {cpus:g}; use workers: {fit} or fewer"
                          + (", or fewer threads_per_worker" if threads > 1 else "")
                          + " (other machines add theirs with `deepgrid worker`).")
    if device == "cuda" and count > gpus:
        raise ConfigError(f"{count} workers with device: cuda need one GPU each, but this machine's engine node "
                          f"offers {gpus:g}; use workers: {int(gpus)} or fewer.")


def check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was asked for but this machine has no usable CUDA GPU; "
                              "set device: cpu or run on a machine with a GPU.")


def _load_conf_data(conf: Conf) -> ArrayDataset:
    from deepgrid.data.mnist import load_splits

    return load_splits(conf)[0]


def _named_factory(conf: Conf) -> Callable[[], Model]:
    import functools

    return functools.partial(build_named_model, conf.model, conf.network.to_dict())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # Ray's task errors carry the traceback; the exception's own line is the last one.
    return (lines[-1] if lines else type(error).__name__)[:300]


def _kill(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead: nothing to stop
        pass
