"""``deepgrid train --single-process``: the reference loop in this process, no engine, no workers."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any


def train_single_process(conf: Any, train_data: Any, say: Callable[[str], None],
                         output: Path | None = None) -> tuple[Any, Any]:
    """Build ``conf.model`` and fit it on ``train_data`` (less the Conf's validation split);
    return the model and the ``FitResult``. ``output``: the run's directory, for ``metrics.jsonl``."""
    from deepgrid.data.mnist import training_split
    from deepgrid.models.registry import get
    from deepgrid.train.logs import show_configuration, shows_progress
    from deepgrid.train.loop import fit
    from deepgrid.train.metrics_file import MetricsFile

    train_data, validation = training_split(train_data, conf)
    model = get(conf.model)(conf.network)
    show_configuration(conf.describe(), checked=True)  # the Conf and its data passed
    say(f"deepgrid: training {conf.model} ({model.n_params:,} parameters) on {len(train_data):,} examples, one process")
    with MetricsFile(output) if output is not None else nullcontext() as metrics:
        result = fit(model, train_data, epochs=conf.epochs, batch_size=conf.batch_size,
                     job_size=conf.averaging_frequency, validation=validation, patience=conf.patience,
                     min_improvement=conf.min_improvement, progress=sys.stderr.isatty() and shows_progress(),
                     on_epoch=lambda phase, epoch, loss: say(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: loss {loss:.4f}"),
                     metrics=metrics)
    return model, result
