"""Resuming a run: the newest checkpoint's model, metadata and run state, each checked first.

A damaged checkpoint or a Conf that would cut the data or the jobs differently is one clear error,
and nothing is touched. See deepgrid.checkpoint for which checkpoint a resume loads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy

from deepgrid.checkpoint.naming import RUN_ID, RUN_STATE_FILE, list_checkpoints, newest_checkpoint
from deepgrid.checkpoint.remote import RemoteCheckpoints
from deepgrid.config.conf import Conf
from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.errors import ConfigError, ModelError
from deepgrid.models.files import (
    CONFIG_FILE,
    USER_MODULE,
    load_weights,
    model_from_meta,
    read_model_meta,
    read_weights,
    short_repr,
)
from deepgrid.storage import is_s3

if TYPE_CHECKING:
    from deepgrid.models.base import Model


def load_latest_checkpoint(directory: Path, *, model_factory: Callable[[], Model] | None = None,
                           conf: Conf | None = None) -> tuple[Model, dict[str, Any]]:
    """The newest checkpoint's model and metadata; a clear error (and nothing touched) otherwise.

    ``model_factory``: builds the model the weights are loaded into (a runner's factory; needed for a
    user's torch module, whose code is not stored). Without one the model is rebuilt from model.json.
    ``conf``: the resuming run's Conf, checked against the checkpoint's (:func:`check_resume_conf`)
    before any weights are loaded.
    """
    newest = newest_checkpoint(local_checkpoints(directory))
    try:
        meta = read_model_meta(newest)
        check_checkpoint_meta(meta, newest / CONFIG_FILE)
        state = read_weights(newest)
    except ModelError as e:
        raise _damaged(newest, e) from None
    if conf is not None:
        check_resume_conf(meta.get("conf"), conf)
    if model_factory is not None:
        model = model_factory()
        if model.name != meta["model"]:
            raise ModelError(f"The newest checkpoint {newest} holds a {meta['model']!r} model but this run builds a "
                             f"{model.name!r} model; resume with the model it was trained with.")
    elif meta["model"] == USER_MODULE:
        raise ModelError(f"The newest checkpoint {newest} holds a user's torch module (TorchModel), whose code is not "
                         "stored; resume it with the run's model factory (ActorNetworkRunner(..., model_factory=...)).")
    else:
        try:
            model = model_from_meta(meta, newest)
        except ModelError as e:
            raise _damaged(newest, e) from None
    load_weights(model, state, newest)
    return model, meta


def local_checkpoints(directory: Path) -> Path:
    """``directory`` itself, or for ``s3://...`` the downloaded checkpoint a resume loads (see
    deepgrid.checkpoint.remote): its newest complete one, or the one the URL names."""
    if not is_s3(directory):
        return directory
    return RemoteCheckpoints.open(directory).resolve()


def _damaged(newest: Path, error: ModelError) -> ModelError:
    return ModelError(f"The newest checkpoint is damaged: {error} Nothing was changed; move {newest.name} "
                      "aside to resume from the one before it.")


# What a checkpoint's metadata must hold, beyond model.json's `model` and `network`: a resume
# reads these, and a wrong type must be one line, not a traceback in the middle of set-up.
_META_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "round": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "phase": ("a phase name", lambda v: isinstance(v, str)),
    "phase_index": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "epoch": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "param_version": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "done_jobs": ("a list of job indices", lambda v: isinstance(v, list) and all(_is_int(i) and i >= 0 for i in v)),
    "status": ("a status name", lambda v: isinstance(v, str)),
    "best_loss": ("a number or null", lambda v: v is None or (_is_number(v) and math.isfinite(v))),
    "bad_checks": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "conf": ("a mapping of Conf fields", lambda v: isinstance(v, dict)),
    "run_id": ("a run id", lambda v: isinstance(v, str) and (v == "" or RUN_ID.fullmatch(v) is not None)),
    "saved_at": ("a time in seconds", lambda v: _is_number(v) and math.isfinite(v)),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_checkpoint_meta(meta: dict[str, Any], path: Path) -> None:
    """ModelError naming the first entry of a checkpoint's model.json that has the wrong type."""
    if "round" not in meta:
        raise ModelError(f"{path} is damaged: it lacks the `round` entry of a run checkpoint.")
    for key, (expected, ok) in _META_TYPES.items():
        if key in meta and not ok(meta[key]):
            raise ModelError(f"{path} is damaged: `{key}` must be {expected}, not {short_repr(meta[key])}.")


# The Conf fields a resumed run must share with its checkpoint, and what each defines. Changing one
# would skip or repeat mini-batches (the job cut), train on other data, or load weights into
# another network. Anything else may change on resume: workers, state_url, checkpointing,
# deadlines, epochs (a run may be extended), data_dir (the same data elsewhere), ...
RESUME_FIELDS: dict[str, str] = {
    "model": "the network",
    "network": "the network",
    "dataset": "the data",
    "binarize": "the data",
    "train_limit": "the data",
    "validation_fraction": "the data (the validation split)",
    "batch_size": "the job cut",
    "averaging_frequency": "the job cut",
}


def check_resume_conf(saved_conf: Any, conf: Conf) -> None:
    """Refuse to resume under a Conf that cuts the data or the jobs differently, or builds another
    network, than the checkpoint's: one ConfigError naming the field, both values and the fix."""
    if not isinstance(saved_conf, dict):
        raise ModelError("The checkpoint holds no `conf` entry (the configuration it was trained with), so a resume "
                         "cannot be checked; resume from a checkpoint written by a deepgrid run, or train afresh.")
    defaults = _json_value(Conf().to_dict())
    current = _json_value(conf.to_dict())
    for name, what in RESUME_FIELDS.items():
        if name != "network":
            _compare(name, saved_conf.get(name, defaults[name]), current[name], what)
            continue
        saved_network = saved_conf.get("network", defaults["network"])
        try:
            saved_network = NeuralNetConfiguration.from_dict(saved_network).to_dict()  # defaults filled in
        except (ConfigError, TypeError) as e:
            raise ModelError(f"The checkpoint's `conf` holds an invalid network configuration ({e}); "
                             "it cannot be checked: train afresh.") from None
        saved_network = _json_value(saved_network)
        for field_name, value in current["network"].items():
            _compare(f"network.{field_name}", saved_network.get(field_name), value, what)


def _compare(name: str, saved: Any, current: Any, what: str) -> None:
    saved = _json_value(saved)
    if saved != current:
        raise ConfigError(
            f"Cannot resume: the checkpoint was trained with {name}={saved!r} but this run has {name}={current!r}; "
            f"{name} defines {what}, so resuming with another value would skip, repeat or misread mini-batches. "
            f"Set {name} back to {saved!r} to resume, or train afresh with another checkpoint_dir (or job_name).")


def _json_value(value: Any) -> Any:
    """The value as JSON gives it back (tuples as lists): how a checkpoint's conf reads."""
    return json.loads(json.dumps(value))


def load_run_state(directory: Path) -> dict[str, np.ndarray]:
    """The run-state arrays of the checkpoint a resume loads from ``directory`` (a checkpoint directory
    also works); empty when it saved none."""
    directory = local_checkpoints(directory)
    if (directory / CONFIG_FILE).is_file():
        checkpoint: Path | None = directory
    else:
        found = list_checkpoints(directory)
        checkpoint = found[-1] if found else None
    path = checkpoint / RUN_STATE_FILE if checkpoint is not None else None
    if checkpoint is None or path is None or not path.is_file():
        return {}
    try:
        return dict(load_numpy(str(path)))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path} is damaged ({e}); move {checkpoint.name} aside to resume from the one before it.") from None
