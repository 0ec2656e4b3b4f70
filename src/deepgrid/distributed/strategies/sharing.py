"""``sharing``: rounds of compressed update sharing (Strom 2015; DL4J's threshold encoding).

Each worker trains a job from the round's parameters as with ``average``, but sends back only
part of what it changed. Its update is ``end - start`` plus its residual (what earlier jobs did
not send). The ``sharing_sparsity`` share of entries largest in magnitude is sent, each as
``+tau`` or ``-tau`` where ``tau`` is the smallest magnitude sent (one int32 an entry: the sign
rides on the index); the rest, and what the quantisation left over, stays in the residual for
later jobs (error feedback). An encoding no smaller than the dense vector is sent dense.

The master adds the sample-weighted mean of the decoded updates to its parameters: the scale of
``average`` (the mean of the workers' parameters is the parameters plus the mean of their
deltas). Block momentum is off unless ``block_momentum`` is set: the residual already carries
each step on, and 1 - 1/N on top of it cost 1-2.5 points of test accuracy (bench_sharing.py).
Only the upward direction is compressed: the master still sends whole parameters each round (a
production version would broadcast the round's summed sparse update and let every worker apply
it to its own copy, which then must stay bit-identical to the master's).

The residual lives in the worker: a worker that dies loses it (what its jobs had not sent yet),
and so does a worker whose result is dropped because its job was given to another worker.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

import numpy as np

from deepgrid.distributed.strategies.base import JobResult, Strategy, WorkerPlugin

if TYPE_CHECKING:
    from collections.abc import Callable

    from deepgrid.distributed.worker import Worker

DEFAULT_SPARSITY = 0.01  # share of entries a job sends (see Conf.sharing_sparsity)
MAX_INDEX = 2**31 - 2  # signed int32 indices carry i + 1 (0 has no sign): larger models go dense


class SharingPlugin(WorkerPlugin):
    """The worker's half: the residual, the threshold, and the encoding of each job's update."""

    wants_start = True

    def __init__(self, sparsity: float = DEFAULT_SPARSITY, quantise: bool = True) -> None:
        self.sparsity = sparsity
        # True: Strom's +-tau (4 bytes an entry). False: the entries' own values (index and float32,
        # 8 bytes an entry). At equal bytes (1/100 +-tau, 1/200 values), 5 epochs of the MLP on
        # Fashion-MNIST, K = 10: 0.8789, 0.8787, 0.8768, 0.8783 against 0.8747, 0.8774, 0.8737, 0.8771.
        self.quantise = quantise
        self.residual: np.ndarray | None = None
        self.tau = 0.0  # the last job's threshold (reports)
        self.phase: str | None = None
        self.last_sent = 0  # entries the last job sent (tests and reports)

    def gradient_hook(self, worker: Worker, phase: str) -> Callable[[int], None] | None:
        # Called before each job with its phase: a new phase trains other parameters, so what
        # the last phase did not send is dropped. No hook is returned: training runs as usual.
        if phase != self.phase:
            self.phase, self.residual = phase, None
        return None

    def encode(self, start: np.ndarray | None, end: np.ndarray) -> dict[str, np.ndarray]:
        assert start is not None  # wants_start: the worker passes the parameters the job began with
        update = np.subtract(end, start, dtype=np.float32)
        if self.residual is not None:
            update += self.residual
        encoding, self.residual = self.compress(update)
        return encoding

    def compress(self, update: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The encoding of ``update`` and what stays behind (None: nothing)."""
        n = update.size
        target = min(n, max(1, round(n * self.sparsity)))
        magnitude = np.abs(update)
        # tau: the target-th largest magnitude of this job's update, found anew each job (an
        # O(n) partition, a few ms for 235,000 parameters). A threshold carried from job to job
        # and scaled by sent / target (DL4J's adaptive threshold) swung between the cap and
        # almost nothing on alternate jobs here: with error feedback, what one job leaves behind
        # piles up above the threshold for the next one.
        chosen = np.argpartition(magnitude, n - target)[n - target:]
        chosen = np.sort(chosen[magnitude[chosen] > 0])
        self.tau = float(magnitude[chosen].min()) if len(chosen) else 0.0
        self.last_sent = len(chosen)
        if self.quantise:  # Strom's +-tau: a sent entry keeps its sign in the residual
            values = np.where(update[chosen] > 0, np.float32(self.tau), np.float32(-self.tau))
            signed = (chosen + 1).astype(np.int32) * np.sign(values).astype(np.int32)
            encoding = {"signed_index": signed, "tau": np.array(self.tau, dtype=np.float32)}
        else:
            values = update[chosen]
            encoding = {"index": chosen.astype(np.int32), "value": values}
        if n > MAX_INDEX or sum(a.nbytes for a in encoding.values()) >= update.nbytes:
            self.last_sent = n  # no smaller than the dense vector: send that, exactly
            return {"dense": update}, None
        update[chosen] -= values  # the residual: what was not sent
        return encoding, update


def decode(encoding: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of an encoded update of ``n`` entries; indices are distinct."""
    if "dense" in encoding:
        return np.arange(n), encoding["dense"]
    if "signed_index" in encoding:
        signed = encoding["signed_index"].astype(np.int64)
        return np.abs(signed) - 1, np.sign(signed).astype(np.float32) * encoding["tau"]
    return encoding["index"].astype(np.int64), encoding["value"]


def wire_bytes(encoding: dict[str, np.ndarray]) -> int:
    """Bytes of the encoding as serialised (pickle protocol 5, what Ray's serialiser builds on)."""
    return len(pickle.dumps(encoding, protocol=5))


class SharingStrategy(Strategy):
    """The master's half: the mean of the decoded updates, block momentum, and the byte counts."""

    name = "sharing"
    barrier = True

    def __init__(self, sparsity: float = DEFAULT_SPARSITY, block_momentum: float | None = None,
                 quantise: bool = True) -> None:
        self.sparsity, self.block_momentum, self.quantise = sparsity, block_momentum, quantise
        self.block_step: np.ndarray | None = None
        self.bytes_sent = 0  # what the workers' updates took, over the run (resumed runs included)
        self.bytes_dense = 0  # what they would have taken dense: 4 bytes a parameter per job
        self.round_bytes_sent = 0
        self.round_bytes_dense = 0

    def worker_plugin(self) -> SharingPlugin:
        return SharingPlugin(self.sparsity, self.quantise)

    def begin_phase(self) -> None:
        self.block_step = None

    def combine(self, params: np.ndarray, results: list[JobResult]) -> np.ndarray:
        # A worker that trained two jobs in the round (a pulled job continues from its own
        # parameters) changed them by the sum of both updates; it weighs with all its samples,
        # as in `average`, so weighting each update by its worker's samples sums the same.
        samples: dict[str, int] = {}
        for result in results:
            samples[result.worker_id] = samples.get(result.worker_id, 0) + result.n_samples
        total = np.zeros(params.shape, dtype=np.float64)
        sent = 0
        # Summed in job order, not arrival order: the same seed gives the same parameters.
        for result in sorted(results, key=lambda r: r.job.index):
            index, values = decode(result.update, params.size)
            total[index] += samples[result.worker_id] * values.astype(np.float64)  # distinct indices
            sent += wire_bytes(result.update)
        step = total / sum(samples.values())
        momentum = self.block_momentum or 0.0
        if momentum > 0 and self.block_step is not None:
            step += momentum * self.block_step
        self.block_step = step.astype(np.float32) if momentum > 0 else None
        self.round_bytes_sent, self.round_bytes_dense = sent, 4 * params.size * len(results)
        self.bytes_sent += self.round_bytes_sent
        self.bytes_dense += self.round_bytes_dense
        return (params + step).astype(np.float32)

    @property
    def round_metrics(self) -> dict[str, Any]:
        """The last round's bytes, for the tracker's metrics line."""
        return {"bytes_sent": self.round_bytes_sent, "bytes_dense": self.round_bytes_dense}

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"bytes": np.array([self.bytes_sent, self.bytes_dense], dtype=np.int64)}
        if self.block_step is not None:
            state["block_step"] = self.block_step.copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.block_step = state.get("block_step")
        if "bytes" in state:
            self.bytes_sent, self.bytes_dense = (int(b) for b in state["bytes"])
