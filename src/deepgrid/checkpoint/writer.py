"""Writing run checkpoints whole and durably, pruning a run's old ones, and the background writer.

See deepgrid.checkpoint for the durability rules: staging directory, fsyncs, rename, then prune.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import save_file as save_numpy

from deepgrid.atomic_files import fsync_path, synced_write
from deepgrid.checkpoint.naming import (
    RUN_STATE_FILE,
    STAGING_PREFIX,
    STALE_STAGING_S,
    TRASH_PREFIX,
    check_run_id,
    checkpoint_name,
    checkpoints_by_run,
    new_run_id,
)
from deepgrid.checkpoint.remote import RemoteCheckpoints
from deepgrid.errors import ModelError, invalid
from deepgrid.models.files import save_model_files
from deepgrid.storage import is_s3

if TYPE_CHECKING:
    from deepgrid.models.base import Model

log = logging.getLogger("deepgrid")


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
        save_model_files(model, staging, meta, staged=True)
        if tensors:
            arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
            synced_write(staging / RUN_STATE_FILE, lambda path: save_numpy(arrays, str(path)))
        fsync_path(staging)
        # The same round saved again (the final save) goes to a new name: the first one stays
        # whole until this one is on the disk.
        mine = checkpoints_by_run(directory).get(run, [])  # one listing: the pruning below uses it too
        generation = 1 + max((g for r, g, _ in mine if r == round_), default=-1)
        target = directory / checkpoint_name(round_, run, generation)
        os.replace(staging, target)  # a directory rename is atomic: a crash leaves the old ones intact
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_path(directory)  # the rename is on the disk: from here the checkpoint counts as written
    # One writer per run (deepgrid.checkpoint): the run's checkpoints are the listed ones and this one.
    _prune(sorted([*mine, (round_, generation, target)], key=lambda item: item[:2]), keep, target)
    return target


def _prune(checkpoints: list[tuple[int, int, Path]], keep: int, written: Path) -> None:
    """Remove, of one run's ``checkpoints`` (round, generation, path; oldest first), those beyond the
    newest ``keep`` rounds, and copies of a round saved again."""
    newest_of_round: dict[int, Path] = {}
    superseded: list[Path] = []
    for round_, _, path in checkpoints:
        if round_ in newest_of_round:
            superseded.append(newest_of_round[round_])
        newest_of_round[round_] = path
    rounds = sorted(newest_of_round)
    old = superseded + [newest_of_round[r] for r in rounds[:-keep]]
    for path in old:
        if path != written:
            _discard(path)


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
    a new run. Only this run's checkpoints are ever pruned (see deepgrid.checkpoint).
    """

    def __init__(self, directory: Path, model: Model, keep: int, *, run_id: str | None = None) -> None:
        # s3://bucket/prefix: written into a local mirror as usual, then uploaded (deepgrid.checkpoint.remote)
        self.remote = RemoteCheckpoints.open(directory) if is_s3(directory) else None
        if self.remote is not None:
            self.remote.scan()  # a missing bucket or bad credentials: one line now, not at the first save
        self.directory = self.remote.mirror if self.remote is not None else Path(directory)
        self.uploaded: dict[Path, tuple[str, float]] = {}  # local checkpoint -> (its s3:// URL, upload s)
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
        self.upload_seconds: list[float] = []  # s3: how long each upload took (included in write_seconds)
        removed = remove_stale_staging(self.directory, self.run_id)
        if removed:
            log.info("removed %d half-written checkpoint(s) in %s", removed, self.directory)
        others = sorted(r or "(no run id)" for r in checkpoints_by_run(self.directory) if r != self.run_id)
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
                if self.remote is not None:
                    self._upload(written)
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


    def _upload(self, written: Path) -> None:
        assert self.remote is not None
        url, seconds = self.remote.publish(written, self.keep)
        self.upload_seconds.append(seconds)
        self.uploaded = {written: (str(url), seconds)}  # the latest: what the run's event log says of it
        size = sum(p.stat().st_size for p in written.iterdir() if p.is_file())
        amount = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
        log.info("checkpoint uploaded to %s in %.3f s (%s)", url, seconds, amount)


def _discard(path: Path) -> None:
    """Remove a checkpoint: renamed out of sight first (atomic), so it is never seen half-deleted."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:6]}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
