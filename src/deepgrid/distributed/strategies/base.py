"""What a training strategy is: the rule that turns a round's job results into the next parameters.

The dispatcher runs jobs on the workers and hands back what they returned; a strategy only
decides what the master's parameters become. It owns its own state (block momentum's last step,
a parameter server's version counter, a residual) and gives it to checkpoints through
``state_dict``/``load_state_dict``, so a resumed run goes on exactly where it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from deepgrid.state.base import Job


@dataclass(frozen=True)
class JobResult:
    """One job a worker trained: the parameters it ended with and what it trained."""

    worker_id: str
    job: Job
    params: np.ndarray
    n_samples: int
    loss: float
    seconds: float


class Strategy(Protocol):
    name: str

    def begin_phase(self) -> None:
        """A new phase trains other parameters: forget what was carried between rounds."""

    def combine(self, params: np.ndarray, results: list[JobResult]) -> np.ndarray:
        """The next parameters from the current ones and the round's results (at least one)."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint with the parameters (may be empty)."""

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Take back what ``state_dict`` gave (from a checkpoint)."""
