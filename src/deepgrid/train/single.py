"""``deepgrid train --single-process``: the reference loop in this process, no engine, no workers."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def train_single_process(conf: Any, train_data: Any, say: Callable[[str], None]) -> tuple[Any, Any]:
    """Build ``conf.model`` and fit it on ``train_data`` (less the Conf's validation split);
    return the model and the ``FitResult``."""
    from deepgrid.data.mnist import training_split
    from deepgrid.models.registry import get
    from deepgrid.train.loop import fit

    train_data, validation = training_split(train_data, conf)
    model = get(conf.model)(conf.network)
    say(f"deepgrid: training {conf.model} ({model.n_params:,} parameters) on {len(train_data):,} examples, one process")
    result = fit(model, train_data, epochs=conf.epochs, batch_size=conf.batch_size,
                 job_size=conf.averaging_frequency, validation=validation, patience=conf.patience,
                 min_improvement=conf.min_improvement, progress=sys.stderr.isatty(),
                 on_epoch=lambda phase, epoch, loss: say(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: loss {loss:.4f}"))
    return model, result
