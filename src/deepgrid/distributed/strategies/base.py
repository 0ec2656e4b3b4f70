"""What a training strategy is: how workers' training turns into the master's next parameters.

A strategy has two halves. On the master, ``Strategy`` decides what the parameters become from
the job results the dispatcher collects, and owns its state (block momentum's last step, a
version counter) for checkpoints through ``state_dict``/``load_state_dict``. Inside each worker
actor, its ``WorkerPlugin`` decides what a job sends back (whole parameters, a delta, a sparse
update) and may take part in every step (combining gradients with the other workers).

``barrier``: True for strategies that work in rounds (every job of a round starts from the same
parameters; ``combine`` sees all of the round's results at once); False for those that apply
each result as it comes (``apply``) and hand the worker its next job at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deepgrid.state.base import Job

if TYPE_CHECKING:
    from deepgrid.distributed.worker import Worker
    from deepgrid.distributed.workers import WorkerGroup


class GroupBroken(Exception):  # noqa: N818 (a state, not a bug: the dispatcher re-queues, blames nobody)
    """Raised inside a worker when a step it shares with other workers cannot finish because one
    of them is gone (a collective timed out or lost its peer). The job is re-queued without
    counting against this worker, and ``WorkerGroup.broken`` tells the strategy to re-form."""


@dataclass(frozen=True)
class JobResult:
    """One job a worker trained: what its plugin sent back, and what it trained."""

    worker_id: str
    job: Job
    update: Any  # the plugin's encoding: the whole parameters for `average`
    n_samples: int
    loss: float
    seconds: float
    version: int = 0  # the parameter version the job started from (strategies without barrier)


class WorkerPlugin:
    """The strategy's half inside a worker actor; this default sends back the whole parameters.

    It is pickled to each worker (also to `deepgrid worker` machines), so it holds only plain data.
    """

    # True: ``encode`` gets the parameters the job started from (for a delta), else None.
    wants_start = False

    def setup(self, worker: Worker) -> None:
        """Called once in the actor, after the model and the data are ready."""

    def gradient_hook(self, worker: Worker, phase: str) -> Callable[[int], None] | None:
        """A function the model calls after each backward pass, or None."""
        return None

    def take_params(self, worker: Worker, params: np.ndarray) -> None:
        """Start the job from the round's parameters ``params``."""
        worker.model.set_flat_params(params)

    def encode(self, start: np.ndarray | None, end: np.ndarray) -> Any:
        """What the job sends back to the master, from the parameters it started and ended with."""
        return end


class Strategy:
    """The master's half. Subclasses override what they need."""

    name = ""
    barrier = True
    # True: every worker of a round takes every step together (a shared collective): no worker may
    # pull a second job of the round while the others are done.
    lockstep = False

    def worker_plugin(self) -> WorkerPlugin:
        return WorkerPlugin()

    def before_round(self, group: WorkerGroup) -> None:
        """Called before each round, with the live workers (e.g. to form a process group)."""

    def begin_phase(self) -> None:
        """A new phase trains other parameters: forget what was carried between rounds."""

    def combine(self, params: np.ndarray, results: list[JobResult]) -> np.ndarray:
        """Barrier strategies: the next parameters from the round's results (at least one)."""
        raise NotImplementedError

    version = 0  # strategies without barrier: results applied so far (the parameters' version)

    def apply(self, params: np.ndarray, result: JobResult) -> np.ndarray:
        """Strategies without barrier: the parameters after one job's result (its ``version``
        says which parameters it started from); counts ``version`` on."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint with the parameters (may be empty)."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Take back what ``state_dict`` gave (from a checkpoint)."""
