"""``average``: rounds of sample-weighted parameter averaging with block momentum.

Each worker trains from the round's parameters; the next parameters are the exact mean of the
workers' last parameters, each weighted by the samples it trained this round, plus
``block_momentum`` times the previous round's step (BMUF, Chen & Huo 2016).

A worker given parameters other than its own drops its SGD momentum (``reset_momentum``, as
CNTK's BMUF does by default): its velocity belongs to the path it left, and the block momentum
already carries the round's direction on. Kept, the two momenta compound: with 4 or more
workers and short jobs the parameters grew without bound (``tests/integration/test_momentum_reset.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deepgrid.distributed.strategies.base import JobResult, Strategy, WorkerPlugin

if TYPE_CHECKING:
    from deepgrid.distributed.worker import Worker


class AveragePlugin(WorkerPlugin):
    """The worker's half: whole parameters back, momentum dropped when the round moved it."""

    def __init__(self, reset_momentum: bool = True) -> None:
        self.reset_momentum = reset_momentum

    def take_params(self, worker: Worker, params: np.ndarray) -> None:
        # One worker alone without block momentum gets its own parameters back: it keeps its
        # momentum, and so computes exactly what the single-process loop computes.
        moved = self.reset_momentum and not worker.model.holds_flat_params(params)
        worker.model.set_flat_params(params)
        if moved:
            worker.model.reset_momentum()


class AverageStrategy(Strategy):
    name = "average"

    def __init__(self, block_momentum: float | None = None, reset_momentum: bool = True) -> None:
        self.block_momentum = block_momentum
        self.reset_momentum = reset_momentum
        self.block_step: np.ndarray | None = None  # the last round's step

    def worker_plugin(self) -> WorkerPlugin:
        return AveragePlugin(self.reset_momentum)

    def begin_phase(self) -> None:
        self.block_step = None  # a new phase trains other parameters: no momentum carried over

    def combine(self, params: np.ndarray, results: list[JobResult]) -> np.ndarray:
        # A worker that trained two jobs in the round (pulled jobs) counts once, with its last
        # parameters and all its samples.
        last: dict[str, JobResult] = {}
        samples: dict[str, int] = {}
        for result in results:
            last[result.worker_id] = result
            samples[result.worker_id] = samples.get(result.worker_id, 0) + result.n_samples
        # Summed in job order, not arrival order: float sums depend on their order, and the
        # same seed must give the same parameters however the results raced in.
        order = sorted(last, key=lambda w: last[w].job.index)
        mean = weighted_mean([last[w].update for w in order], [samples[w] for w in order])
        return self.block_update(params, mean, len(last))

    def block_update(self, params: np.ndarray, mean: np.ndarray, n_workers: int) -> np.ndarray:
        """The next parameters from the round's mean.

        Averaging the workers' parameters shrinks each round's step (their directions differ);
        adding ``block_momentum`` times the previous round's step back makes up for it. The
        default, 1 - 1/N for N workers in the round, is the paper's; with one worker it is 0,
        so one worker still computes exactly what the reference loop computes.
        """
        momentum = 1.0 - 1.0 / n_workers if self.block_momentum is None else self.block_momentum
        step = mean - params
        if momentum > 0 and self.block_step is not None:
            step += momentum * self.block_step
        self.block_step = step
        return (params + step).astype(np.float32) if momentum > 0 else mean

    def state_dict(self) -> dict[str, np.ndarray]:
        return {} if self.block_step is None else {"block_step": self.block_step.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.block_step = state.get("block_step")


def weighted_mean(vectors: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """The exact sample-weighted mean of parameter vectors (accumulated in float64)."""
    if len(vectors) == 1:
        return np.array(vectors[0], dtype=np.float32)  # a copy we own: no averaging error at all
    total = np.zeros(vectors[0].shape, dtype=np.float64)
    for vector, weight in zip(vectors, weights, strict=True):
        total += weight * vector.astype(np.float64)
    return (total / sum(weights)).astype(np.float32)
