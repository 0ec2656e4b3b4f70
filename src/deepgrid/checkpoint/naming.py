"""Run checkpoints' names and where they are: ``ckpt-<round>-<run id>[.<generation>]``.

See deepgrid.checkpoint for which checkpoints are whose (run ids) and which one a resume loads.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from pathlib import Path
from typing import Any

from deepgrid.errors import ModelError, invalid
from deepgrid.models.files import CONFIG_FILE

CHECKPOINT_PREFIX = "ckpt-"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
RUN_STATE_FILE = "run_state.safetensors"  # the run's own arrays beside the model's (block momentum's step)
# Another run's staging directory older than this is a killed writer's leftover (a save takes
# milliseconds to seconds); a younger one may be a live writer's, and is left alone.
STALE_STAGING_S = 3600.0
# ckpt-<round>[-<run id>[.<generation>]]: no run id is a checkpoint written before run ids existed.
_CHECKPOINT_NAME = re.compile(r"ckpt-(\d+)(?:-([0-9A-Za-z_]+))?(?:\.(\d+))?")
RUN_ID = re.compile(r"[0-9A-Za-z_]{1,64}")


def new_run_id() -> str:
    """A fresh run's id: 12 random hex digits."""
    return uuid.uuid4().hex[:12]


def check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not (run_id == "" or RUN_ID.fullmatch(run_id)):
        raise ModelError(invalid("run_id", run_id, "1 to 64 letters, digits or underscores",
                                 "Pass the run_id of a checkpoint's model.json, or none for a fresh run."))
    return run_id


def _parse_name(name: str) -> tuple[int, str, int] | None:
    """(round, run id, generation) of a checkpoint directory's name; None for anything else."""
    match = _CHECKPOINT_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match[1]), match[2] or "", int(match[3] or 0)


parse_checkpoint_name = _parse_name  # public for deepgrid.checkpoint.remote (S3 keys, not directories)


def checkpoint_name(round_: int, run_id: str, generation: int) -> str:
    name = f"{CHECKPOINT_PREFIX}{round_:09d}"
    if run_id:
        name += f"-{run_id}"
    return f"{name}.{generation}" if generation else name


def checkpoints_by_run(directory: Path) -> dict[str, list[tuple[int, int, Path]]]:
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
    written last at the end (see deepgrid.checkpoint), so ``[-1]`` is what a resume loads."""
    runs = checkpoints_by_run(directory)
    if run_id is not None:
        return [path for _, _, path in runs.get(run_id, [])]
    ordered = sorted(runs.values(), key=lambda found: (_saved_at(found[-1][2]), found[-1][0]))
    return [path for found in ordered for _, _, path in found]


def newest_checkpoint(directory: Path) -> Path:
    """The checkpoint a resume loads; a clear error when there is none."""
    if not directory.is_dir():
        raise ModelError(f"Resume directory {str(directory)!r} does not exist; pass the checkpoint directory of an earlier run.")
    if (directory / CONFIG_FILE).is_file() and _parse_name(directory.name) is not None:
        return directory  # one checkpoint named itself (what a resume from s3://.../ckpt-... downloads)
    found = list_checkpoints(directory)
    if not found:
        raise ModelError(f"Resume directory {directory} holds no checkpoint ({CHECKPOINT_PREFIX}*); nothing to resume from.")
    return found[-1]
