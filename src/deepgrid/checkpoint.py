"""Saving and loading models: safetensors for weights, JSON for configuration.

Nothing is ever unpickled. Files are written to a temporary name and renamed
into place, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from deepgrid.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from deepgrid.models.base import Model

log = logging.getLogger("deepgrid")

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model.json"
FORMAT_VERSION = 1


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename tmp onto ``path`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model_files(model: Model, directory: Path, extra: dict[str, Any]) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    meta = {"format": FORMAT_VERSION, **model.get_config(), **extra}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
    atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(meta, indent=2)))
    return directory


def read_model_meta(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ModelError(f"Model directory {str(directory)!r} does not exist; pass a directory written by `deepgrid train` or model.save().")
    meta_path = directory / CONFIG_FILE
    if not meta_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelError(f"{directory} is not a saved model: it needs {CONFIG_FILE} and {WEIGHTS_FILE}.")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{meta_path} is damaged (not valid JSON: {e}); restore it or train again.") from None
    if not isinstance(meta, dict) or "model" not in meta or "network" not in meta:
        raise ModelError(f"{meta_path} is damaged: it lacks the `model` and `network` entries.")
    return meta


def load_model_files(directory: Path, **kwargs: Any) -> Model:
    """Rebuild the model named in model.json and load its weights."""
    from deepgrid.config.network import NeuralNetConfiguration
    from deepgrid.models.registry import get

    meta = read_model_meta(directory)
    try:
        conf = NeuralNetConfiguration.from_dict(meta["network"])
    except ConfigError as e:
        raise ModelError(f"{directory / CONFIG_FILE} holds an invalid network configuration: {e}") from None
    if meta["model"] == "module":
        from deepgrid.models.module import TorchModel

        if kwargs.get("module") is None:
            raise ModelError(f"{directory} holds weights of a user's torch module; load it with TorchModel.load(dir, module=YourModule()).")
        model: Model = TorchModel(kwargs["module"], kwargs.get("loss"), conf)
    else:
        model = get(meta["model"])(conf)
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{directory / WEIGHTS_FILE} is damaged ({e}); restore it or train again.") from None
    try:
        model.module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelError(f"{directory / WEIGHTS_FILE} does not fit the configured network ({first}).") from None
    return model


# -- run checkpoints: a model directory per checkpoint, named by round ---------------
CHECKPOINT_PREFIX = "ckpt-"
STAGING_PREFIX = ".staging-"


RUN_STATE_FILE = "run_state.safetensors"  # the run's own arrays beside the model's (block momentum's step)


def save_checkpoint(directory: Path, model: Model, meta: dict[str, Any], keep: int,
                    tensors: dict[str, np.ndarray] | None = None) -> Path:
    """Write checkpoint ``ckpt-<round>`` whole or not at all, then keep only the newest ``keep``.

    ``tensors``: arrays of the run's state (not the model's) to keep with it, in ``run_state.safetensors``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{CHECKPOINT_PREFIX}{int(meta['round']):09d}"
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=STAGING_PREFIX))
    save_model_files(model, staging, meta)
    if tensors:
        save_numpy({name: np.ascontiguousarray(array) for name, array in tensors.items()},
                   str(staging / RUN_STATE_FILE))
    if target.exists():  # the same round saved again (the final save): replace it
        _remove_tree(target)
    os.replace(staging, target)  # a directory rename is atomic: a crash leaves the old ones intact
    for old in list_checkpoints(directory)[:-keep]:
        _remove_tree(old)
    return target


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def load_latest_checkpoint(directory: Path) -> tuple[Model, dict[str, Any]]:
    """The newest checkpoint's model and metadata; a clear error (and nothing touched) otherwise."""
    if not directory.is_dir():
        raise ModelError(f"Resume directory {str(directory)!r} does not exist; pass the checkpoint directory of an earlier run.")
    found = list_checkpoints(directory)
    if not found:
        raise ModelError(f"Resume directory {directory} holds no checkpoint ({CHECKPOINT_PREFIX}*); nothing to resume from.")
    newest = found[-1]
    try:
        model = load_model_files(newest)
        meta = read_model_meta(newest)
    except ModelError as e:
        raise ModelError(f"The newest checkpoint is damaged: {e} Nothing was changed; move {newest.name} "
                         "aside to resume from the one before it.") from None
    return model, meta


def load_run_state(directory: Path) -> dict[str, np.ndarray]:
    """The run-state arrays of the newest checkpoint in ``directory`` (empty when it saved none)."""
    found = list_checkpoints(directory)
    path = found[-1] / RUN_STATE_FILE if found else None
    if path is None or not path.is_file():
        return {}
    try:
        return dict(load_numpy(str(path)))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{path} is damaged ({e}); move {found[-1].name} aside to resume from the one before it.") from None


def remove_stale_staging(directory: Path) -> int:
    """Delete staging directories a killed writer left half-written; returns how many.

    Only call this where no other writer works on ``directory`` (one master per run does).
    """
    if not directory.is_dir():
        return 0
    stale = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(STAGING_PREFIX)]
    for path in stale:
        _remove_tree(path)
    return len(stale)


class CheckpointWriter:
    """Writes checkpoints in one background thread, so that a round never waits for the disk.

    ``submit(params, meta)`` hands over a snapshot; the caller gives a copy of the parameters it will
    not touch again. A snapshot not yet started is replaced by a newer one, so the writer never
    falls behind by more than the checkpoint it is writing, and the disk sees at most one write at a
    time (``save_checkpoint``'s staging and rename keep each one whole). ``flush()`` waits until
    everything submitted is on disk and raises the error of a write that failed. The writer owns
    ``model`` (it loads each snapshot's parameters into it to save them): give it a model of its own.
    """

    def __init__(self, directory: Path, model: Model, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self._model = model
        self._cond = threading.Condition()
        self._pending: tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray] | None] | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self.last_written: Path | None = None
        self.write_seconds: list[float] = []  # how long each write took, for reports
        removed = remove_stale_staging(self.directory)
        if removed:
            log.info("removed %d half-written checkpoint(s) in %s", removed, self.directory)
        self._thread = threading.Thread(target=self._run, name="deepgrid-checkpoint-writer", daemon=True)
        self._thread.start()

    def submit(self, params: np.ndarray, meta: dict[str, Any], tensors: dict[str, np.ndarray] | None = None) -> None:
        """Queue a checkpoint (replacing one queued and not yet started); returns at once."""
        with self._cond:
            self._raise_error()
            if self._closed:
                raise ModelError("The checkpoint writer is closed; no more checkpoints can be written.")
            self._pending = (params, meta, tensors)
            self._cond.notify_all()

    def flush(self) -> Path | None:
        """Wait until every submitted checkpoint is written; returns the newest one's path."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._busy)
            self._raise_error()
            return self.last_written

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _raise_error(self) -> None:
        # Called with the lock held. Raised once: a later write may well succeed (space freed).
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return  # closed, nothing left to write
                (params, meta, tensors), self._pending = self._pending, None
                self._busy = True
            try:
                started = time.perf_counter()
                self._model.set_flat_params(params)
                written = save_checkpoint(self.directory, self._model, meta, keep=self.keep, tensors=tensors)
                self.write_seconds.append(time.perf_counter() - started)
            except BaseException as e:  # handed to the training thread at its next submit or flush
                with self._cond:
                    self._error = e
            else:
                with self._cond:
                    self.last_written = written
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
