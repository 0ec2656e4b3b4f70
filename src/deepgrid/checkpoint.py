"""Saving and loading models: safetensors for weights, JSON for configuration.

Nothing is ever unpickled. Files are written to a temporary name, flushed to the disk (fsync) and
renamed into place, and the directory is flushed after the rename, so a crash (or a power cut)
mid-write leaves the previous file intact and a file that counts as written is on the disk.
``model.json`` never holds a secret: the password of a ``state_url`` in its ``conf`` is masked.

Run checkpoints
---------------
A run writes ``ckpt-<round>-<run id>`` directories (model.json, weights.safetensors and the run's
own arrays in run_state.safetensors) into its checkpoint directory, keeping the newest
``keep_checkpoints`` of them.

*Which checkpoints are whose: run ids.* Every run has a run id (12 hex digits), stored in each
checkpoint's model.json (``run_id``) and in its directory name. A fresh run takes a new one; a
resumed run carries on the id of the checkpoint it resumed from, so its checkpoints and the dead
master's are one run. A writer prunes only its own run's checkpoints, so a fresh run into a
directory that holds another run's checkpoints neither deletes them nor is deleted by them.
``--resume DIR`` (:func:`load_latest_checkpoint`) loads the newest checkpoint of one run: the run
whose newest checkpoint was written last (``saved_at``), and in it the highest round; the model,
the metadata and the run state all come from that one directory.

Why not refuse a non-empty directory instead: every example and every ``deepgrid train`` without
a ``job_name`` writes into ``runs/deepgrid/checkpoints``, so a refusal would make the second
``make run`` fail until the user deletes a directory by hand; run ids keep each run's checkpoints
apart with no step asked of the user. Checkpoints of earlier runs are kept (they are the user's:
deepgrid deletes only its own run's), and the writer says so when it finds some.

*Durability.* A checkpoint is written into a staging directory (``.staging-<run id>-*``), each file
fsynced, the staging directory fsynced, renamed to its final name and the checkpoint directory
fsynced; only then does it count as written, and only then are older checkpoints removed. A
second save of the same round (the final save, with its status) gets a new name
(``ckpt-<round>-<run id>.1``) instead of replacing the first: the only complete checkpoint is never
deleted before its replacement is on the disk, whatever ``keep_checkpoints`` is. A checkpoint is
removed by renaming it to ``.trash-*`` first (atomic), so a crash never leaves a half-deleted one
that looks like the newest; leftovers are cleared when the next writer starts.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from deepgrid.errors import ConfigError, ModelError, invalid

if TYPE_CHECKING:
    import torch

    from deepgrid.config.conf import Conf
    from deepgrid.models.base import Model

log = logging.getLogger("deepgrid")

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model.json"
FORMAT_VERSION = 1


# -- files that reach the disk -------------------------------------------------------------


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # A few file systems cannot fsync a directory (EINVAL): nothing more can be done there.
        if not (path.is_dir() and e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync it, rename it onto ``path`` (atomic on POSIX), fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_path(Path(tmp))  # the data first: a rename that reaches the disk before it leaves an empty file
        os.replace(tmp, path)
        fsync_path(path.parent)  # the rename itself
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def public_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """A Conf's dict with every URL's password masked (``***``): what may be stored at rest."""
    from deepgrid.config.conf import URL_FIELDS
    from deepgrid.state.base import mask_url

    return {k: mask_url(v) if k in URL_FIELDS and isinstance(v, str) else v for k, v in conf.items()}


def save_model_files(model: Model, directory: Path, extra: dict[str, Any]) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    if isinstance(extra.get("conf"), dict):
        # Whoever passes a Conf's to_dict(): model.json is read by anyone who can read the run's
        # directory, so a state store's password never goes there.
        extra = {**extra, "conf": public_conf(extra["conf"])}
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
    if not isinstance(meta["model"], str) or not isinstance(meta["network"], dict):
        raise ModelError(f"{meta_path} is damaged: `model` must be a name and `network` a mapping, not "
                         f"{_short(meta['model'])} and {_short(meta['network'])}; restore it or train again.")
    return meta


def _model_from_meta(meta: dict[str, Any], directory: Path, **kwargs: Any) -> Model:
    """An untrained model of the kind and network model.json names."""
    from deepgrid.config.network import NeuralNetConfiguration
    from deepgrid.models.registry import get

    try:
        conf = NeuralNetConfiguration.from_dict(meta["network"])
    except (ConfigError, TypeError) as e:
        raise ModelError(f"{directory / CONFIG_FILE} holds an invalid network configuration: {e}") from None
    if meta["model"] == "module":
        from deepgrid.models.module import TorchModel

        if kwargs.get("module") is None:
            raise ModelError(f"{directory} holds weights of a user's torch module; load it with TorchModel.load(dir, module=YourModule()).")
        return TorchModel(kwargs["module"], kwargs.get("loss"), conf)
    return get(meta["model"])(conf)


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{directory / WEIGHTS_FILE} is damaged ({e}); restore it or train again.") from None


def _load_weights(model: Model, state: dict[str, torch.Tensor], directory: Path) -> None:
    try:
        model.module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelError(f"{directory / WEIGHTS_FILE} does not fit the configured network ({first}).") from None


def load_model_files(directory: Path, *, model: Model | None = None, **kwargs: Any) -> Model:
    """Rebuild the model named in model.json and load its weights.

    ``model``: load the weights into this model instead (built by the caller, e.g. a runner's model
    factory, which is how a user's torch module is rebuilt); it must be of the kind saved.
    """
    meta = read_model_meta(directory)
    if model is None:
        model = _model_from_meta(meta, directory, **kwargs)
    elif model.name != meta["model"]:
        raise ModelError(f"{directory} holds a {meta['model']!r} model, but the model to load it into is a "
                         f"{model.name!r} model; build the kind it was saved from.")
    _load_weights(model, _read_weights(directory), directory)
    return model


# -- run checkpoints: a model directory per checkpoint, named by round and run --------------
CHECKPOINT_PREFIX = "ckpt-"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
RUN_STATE_FILE = "run_state.safetensors"  # the run's own arrays beside the model's (block momentum's step)
# Another run's staging directory older than this is a killed writer's leftover (a save takes
# milliseconds to seconds); a younger one may be a live writer's, and is left alone.
STALE_STAGING_S = 3600.0
# ckpt-<round>[-<run id>[.<generation>]]: no run id is a checkpoint written before run ids existed.
_CHECKPOINT_NAME = re.compile(r"ckpt-(\d+)(?:-([0-9A-Za-z_]+))?(?:\.(\d+))?")
_RUN_ID = re.compile(r"[0-9A-Za-z_]{1,64}")


def new_run_id() -> str:
    """A fresh run's id: 12 random hex digits."""
    return uuid.uuid4().hex[:12]


def check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not (run_id == "" or _RUN_ID.fullmatch(run_id)):
        raise ModelError(invalid("run_id", run_id, "1 to 64 letters, digits or underscores",
                                 "Pass the run_id of a checkpoint's model.json, or none for a fresh run."))
    return run_id


def _parse_name(name: str) -> tuple[int, str, int] | None:
    """(round, run id, generation) of a checkpoint directory's name; None for anything else."""
    match = _CHECKPOINT_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match[1]), match[2] or "", int(match[3] or 0)


def _checkpoint_name(round_: int, run_id: str, generation: int) -> str:
    name = f"{CHECKPOINT_PREFIX}{round_:09d}"
    if run_id:
        name += f"-{run_id}"
    return f"{name}.{generation}" if generation else name


def _checkpoints_by_run(directory: Path) -> dict[str, list[tuple[int, int, Path]]]:
    """Each run's checkpoints as (round, generation, path), oldest first."""
    runs: dict[str, list[tuple[int, int, Path]]] = {}
    if not directory.is_dir():
        return runs
    for path in directory.iterdir():
        parsed = _parse_name(path.name)
        if parsed is not None and path.is_dir():
            round_, run_id, generation = parsed
            runs.setdefault(run_id, []).append((round_, generation, path))
    for found in runs.values():
        found.sort(key=lambda item: (item[0], item[1]))
    return runs


def _saved_at(path: Path) -> float:
    """When a checkpoint was written: its model.json's ``saved_at``, else the file's modification time."""
    meta_path = path / CONFIG_FILE
    try:
        value = json.loads(meta_path.read_text()).get("saved_at")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    except (OSError, ValueError, AttributeError):
        pass  # damaged or unreadable: when it was written is still known to the file system
    try:
        return (meta_path if meta_path.exists() else path).stat().st_mtime
    except OSError:
        return 0.0


def list_checkpoints(directory: Path, run_id: str | None = None) -> list[Path]:
    """Checkpoint directories, oldest first: ``run_id``'s only (by round), or every run's, the run
    written last at the end (see the module docstring), so ``[-1]`` is what a resume loads."""
    runs = _checkpoints_by_run(directory)
    if run_id is not None:
        return [path for _, _, path in runs.get(run_id, [])]
    ordered = sorted(runs.values(), key=lambda found: (_saved_at(found[-1][2]), found[-1][0]))
    return [path for found in ordered for _, _, path in found]


def newest_checkpoint(directory: Path) -> Path:
    """The checkpoint a resume loads; a clear error when there is none."""
    if not directory.is_dir():
        raise ModelError(f"Resume directory {str(directory)!r} does not exist; pass the checkpoint directory of an earlier run.")
    found = list_checkpoints(directory)
    if not found:
        raise ModelError(f"Resume directory {directory} holds no checkpoint ({CHECKPOINT_PREFIX}*); nothing to resume from.")
    return found[-1]


def save_checkpoint(directory: Path, model: Model, meta: dict[str, Any], keep: int,
                    tensors: dict[str, np.ndarray] | None = None, *, run_id: str | None = None) -> Path:
    """Write checkpoint ``ckpt-<round>-<run id>`` whole and durably, then keep only the run's newest ``keep``.

    ``tensors``: arrays of the run's state (not the model's) to keep with it, in ``run_state.safetensors``.
    ``run_id`` (else ``meta["run_id"]``) names the run whose checkpoints are pruned; without either the
    checkpoint belongs to the unnamed run (``ckpt-<round>``, as written before run ids existed).
    """
    if keep < 1:
        raise ModelError(invalid("keep_checkpoints", keep, "a positive integer"))
    run = check_run_id(run_id if run_id is not None else meta.get("run_id", ""))
    round_ = int(meta["round"])
    meta = {**meta, "run_id": run, "saved_at": meta.get("saved_at", time.time())}
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f"{STAGING_PREFIX}{run}-"))
    try:
        save_model_files(model, staging, meta)
        if tensors:
            run_state = staging / RUN_STATE_FILE
            save_numpy({name: np.ascontiguousarray(array) for name, array in tensors.items()}, str(run_state))
            fsync_path(run_state)
        fsync_path(staging)
        # The same round saved again (the final save) goes to a new name: the first one stays
        # whole until this one is on the disk.
        mine = _checkpoints_by_run(directory).get(run, [])
        generation = 1 + max((g for r, g, _ in mine if r == round_), default=-1)
        target = directory / _checkpoint_name(round_, run, generation)
        os.replace(staging, target)  # a directory rename is atomic: a crash leaves the old ones intact
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_path(directory)  # the rename is on the disk: from here the checkpoint counts as written
    _prune(directory, run, keep, target)
    return target


def _prune(directory: Path, run_id: str, keep: int, written: Path) -> None:
    """Remove this run's checkpoints beyond the newest ``keep`` rounds, and copies of a round saved again."""
    newest_of_round: dict[int, Path] = {}
    superseded: list[Path] = []
    for round_, _, path in _checkpoints_by_run(directory).get(run_id, []):  # oldest first
        if round_ in newest_of_round:
            superseded.append(newest_of_round[round_])
        newest_of_round[round_] = path
    rounds = sorted(newest_of_round)
    old = superseded + [newest_of_round[r] for r in rounds[:-keep]]
    for path in old:
        if path != written:
            _discard(path)


def load_latest_checkpoint(directory: Path, *, model_factory: Callable[[], Model] | None = None,
                           conf: Conf | None = None) -> tuple[Model, dict[str, Any]]:
    """The newest checkpoint's model and metadata; a clear error (and nothing touched) otherwise.

    ``model_factory``: builds the model the weights are loaded into (a runner's factory; needed for a
    user's torch module, whose code is not stored). Without one the model is rebuilt from model.json.
    ``conf``: the resuming run's Conf, checked against the checkpoint's (:func:`check_resume_conf`)
    before any weights are loaded.
    """
    newest = newest_checkpoint(directory)
    try:
        meta = read_model_meta(newest)
        check_checkpoint_meta(meta, newest / CONFIG_FILE)
        state = _read_weights(newest)
    except ModelError as e:
        raise _damaged(newest, e) from None
    if conf is not None:
        check_resume_conf(meta.get("conf"), conf)
    if model_factory is not None:
        model = model_factory()
        if model.name != meta["model"]:
            raise ModelError(f"The newest checkpoint {newest} holds a {meta['model']!r} model but this run builds a "
                             f"{model.name!r} model; resume with the model it was trained with.")
    elif meta["model"] == "module":
        raise ModelError(f"The newest checkpoint {newest} holds a user's torch module (TorchModel), whose code is not "
                         "stored; resume it with the run's model factory (ActorNetworkRunner(..., model_factory=...)).")
    else:
        try:
            model = _model_from_meta(meta, newest)
        except ModelError as e:
            raise _damaged(newest, e) from None
    _load_weights(model, state, newest)
    return model, meta


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
    "run_id": ("a run id", lambda v: isinstance(v, str) and (v == "" or _RUN_ID.fullmatch(v) is not None)),
    "saved_at": ("a time in seconds", lambda v: _is_number(v) and math.isfinite(v)),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_checkpoint_meta(meta: dict[str, Any], path: Path) -> None:
    """ModelError naming the first entry of a checkpoint's model.json that has the wrong type."""
    if "round" not in meta:
        raise ModelError(f"{path} is damaged: it lacks the `round` entry of a run checkpoint.")
    for key, (expected, ok) in _META_TYPES.items():
        if key in meta and not ok(meta[key]):
            raise ModelError(f"{path} is damaged: `{key}` must be {expected}, not {_short(meta[key])}.")


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
    from deepgrid.config.conf import Conf
    from deepgrid.config.network import NeuralNetConfiguration

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


def remove_stale_staging(directory: Path, run_id: str | None = None, *, older_than_s: float = STALE_STAGING_S) -> int:
    """Delete what killed writers left: half-written staging directories and half-removed
    checkpoints (``.trash-*``); returns how many.

    A staging directory of ``run_id`` (this writer's own run: one writer per run) goes at once;
    another run's only when older than ``older_than_s``, as a live writer of another run may be
    filling it. ``run_id=None``: every staging directory (only where no other writer works).
    """
    if not directory.is_dir():
        return 0
    removed = 0
    now = time.time()
    for path in directory.iterdir():
        if not path.is_dir():
            continue
        if path.name.startswith(TRASH_PREFIX):
            stale = True
        elif path.name.startswith(STAGING_PREFIX):
            own = run_id is None or path.name.startswith(f"{STAGING_PREFIX}{run_id}-")
            try:
                stale = own or now - path.stat().st_mtime > older_than_s
            except OSError:
                stale = False  # gone already
        else:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


class CheckpointWriter:
    """Writes checkpoints in one background thread, so that a round never waits for the disk.

    ``submit(params, meta)`` hands over a snapshot; the caller gives a copy of the parameters it will
    not touch again. A snapshot not yet started is replaced by a newer one, so the writer never
    falls behind by more than the checkpoint it is writing, and the disk sees at most one write at a
    time (``save_checkpoint``'s staging and rename keep each one whole). ``flush()`` waits until
    everything submitted is on disk and raises the error of a write that failed. The writer owns
    ``model`` (it loads each snapshot's parameters into it to save them): give it a model of its own.

    ``run_id``: the run the checkpoints belong to (the resumed checkpoint's ``run_id``); None starts
    a new run. Only this run's checkpoints are ever pruned (see the module docstring).
    """

    def __init__(self, directory: Path, model: Model, keep: int, *, run_id: str | None = None) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.run_id = check_run_id(run_id) if run_id is not None else new_run_id()
        self._model = model
        self._cond = threading.Condition()
        self._pending: tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray] | None] | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self.last_written: Path | None = None
        self.write_seconds: list[float] = []  # how long each write took, for reports
        removed = remove_stale_staging(self.directory, self.run_id)
        if removed:
            log.info("removed %d half-written checkpoint(s) in %s", removed, self.directory)
        others = sorted(r or "(no run id)" for r in _checkpoints_by_run(self.directory) if r != self.run_id)
        if others:
            log.info("%s holds checkpoints of %d other run(s) (%s); they are kept, and this run (%s) "
                     "writes and prunes only its own", self.directory, len(others), ", ".join(others), self.run_id)
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
                meta = {**meta, "run_id": self.run_id, "saved_at": time.time()}
                written = save_checkpoint(self.directory, self._model, meta, keep=self.keep, tensors=tensors,
                                          run_id=self.run_id)
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


def _discard(path: Path) -> None:
    """Remove a checkpoint: renamed out of sight first (atomic), so it is never seen half-deleted."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:6]}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
