"""Run checkpoints: a model directory per checkpoint, named by round and run.

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

Modules: ``naming`` (names, run ids, which checkpoints are there), ``writer`` (``save_checkpoint``,
pruning, the background ``CheckpointWriter``), ``resume`` (``load_latest_checkpoint``, the checks a
resume makes, ``load_run_state``), ``remote`` (``checkpoint_dir: s3://...``: each checkpoint written
locally, then uploaded with its manifest last; pruning of this run's only; resume from S3). A model's own files (``model.json``, ``weights.safetensors``) are
deepgrid.models.files, a layer below; their names are importable from here too.
"""

from deepgrid.atomic_files import atomic_write, fsync_path
from deepgrid.checkpoint.naming import (
    CHECKPOINT_PREFIX,
    RUN_STATE_FILE,
    STAGING_PREFIX,
    STALE_STAGING_S,
    TRASH_PREFIX,
    check_run_id,
    list_checkpoints,
    new_run_id,
    newest_checkpoint,
)
from deepgrid.checkpoint.resume import (
    RESUME_FIELDS,
    check_checkpoint_meta,
    check_resume_conf,
    load_latest_checkpoint,
    load_run_state,
)
from deepgrid.checkpoint.writer import CheckpointWriter, remove_stale_staging, save_checkpoint
from deepgrid.config.secrets import public_conf
from deepgrid.models.files import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    load_model_files,
    read_model_meta,
    save_model_files,
)

__all__ = [
    "CHECKPOINT_PREFIX",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "RESUME_FIELDS",
    "RUN_STATE_FILE",
    "STAGING_PREFIX",
    "STALE_STAGING_S",
    "TRASH_PREFIX",
    "WEIGHTS_FILE",
    "CheckpointWriter",
    "atomic_write",
    "check_checkpoint_meta",
    "check_resume_conf",
    "check_run_id",
    "fsync_path",
    "list_checkpoints",
    "load_latest_checkpoint",
    "load_model_files",
    "load_run_state",
    "new_run_id",
    "newest_checkpoint",
    "public_conf",
    "read_model_meta",
    "remove_stale_staging",
    "save_checkpoint",
    "save_model_files",
]
