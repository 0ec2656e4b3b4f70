"""The validation accuracy for the dashboard's chart, computed off the training thread.

The master validates (a loss) on its training thread between epochs; an accuracy pass there would
cost as much again (an MLP's forward pass over 10% held out is several % of an epoch with 2
workers). So the dashboard copies the parameters at each validation (a memcpy) and a thread of its
own, at the lowest CPU priority (nice 19, which the OpenMP threads it starts inherit), runs a model
of its own (built by the workers' factory) on the validation set when the machine has a moment. The chart shows the loss at once, the accuracy a
little later.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from deepgrid.train.metrics_file import validation_accuracy


class AccuracyWorker:
    """Computes ``validation_accuracy`` for parameter copies in a background thread, in order."""

    def __init__(self, factory: Callable[[], Any], validation: Any, done: Callable[[int, float | None], None]) -> None:
        with torch.random.fork_rng(devices=[]):  # a model seeds torch as it is built: not the master's RNG
            self.model = factory()  # a model of its own: the master validates and evaluates with its
        self.validation, self.done = validation, done
        self._queue: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="deepgrid-dashboard-accuracy", daemon=True)
        self._thread.start()

    def submit(self, index: int, params: np.ndarray) -> None:
        self._queue.put((index, np.array(params, dtype=np.float32, copy=True)))

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # only where the OS lets a thread be niced
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while (item := self._queue.get()) is not None:
            index, params = item
            try:
                self.model.set_flat_params(params)
                accuracy = validation_accuracy(self.model, self.validation)
            except Exception:  # the chart shows the loss alone: the run must not notice
                accuracy = None
            self.done(index, accuracy)
