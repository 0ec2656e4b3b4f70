"""`deepgrid` with a slow checkpoint writer: a master to SIGKILL in the middle of a checkpoint write.

    python tests/integration/slow_checkpoint_master.py MARKER ROUND train CONF [deepgrid options...]

Everything is the installed ``deepgrid`` command, except that the first run checkpoint of round
ROUND or later stalls half-way through its write: its weights are in the staging directory, its
model.json is not, and the directory has not been renamed into place. When it stalls, MARKER gets
``{"round": R, "staging": DIR, "pid": PID}`` (written atomically) and the writer thread sleeps for
an hour, so the test can SIGKILL the master while the write is under way
(tests/integration/test_faults.py). Only run checkpoints (written through a staging directory)
stall; the final model saved to the output directory does not.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import deepgrid.checkpoint as checkpoint
import deepgrid.checkpoint.writer as checkpoint_writer
import deepgrid.models.files as model_files

STALL_S = 3600.0


def install(marker: Path, from_round: int) -> None:
    # Patched where they are called: the writer saves a model's files into its staging directory,
    # each written and fsynced in place (synced_write).
    real_save, real_write = checkpoint_writer.save_model_files, model_files.synced_write
    writing: dict[str, Any] = {}  # the checkpoint being written (only the writer thread writes them)

    def save_model_files(model: Any, directory: Path, extra: dict[str, Any], **options: Any) -> Path:
        writing["round"] = extra.get("round")
        try:
            return real_save(model, directory, extra, **options)
        finally:
            writing.clear()

    def synced_write(path: Path, write: Any) -> None:
        round_ = writing.get("round")
        if (path.name == checkpoint.CONFIG_FILE and path.parent.name.startswith(checkpoint.STAGING_PREFIX)
                and isinstance(round_, int) and round_ >= from_round):
            note = marker.with_name(marker.name + ".tmp")
            note.write_text(json.dumps({"round": round_, "staging": str(path.parent), "pid": os.getpid()}))
            os.replace(note, marker)
            time.sleep(STALL_S)  # the weights are written, model.json is not: SIGKILL comes now
        real_write(path, write)

    checkpoint_writer.save_model_files = save_model_files
    model_files.synced_write = synced_write


if __name__ == "__main__":
    install(Path(sys.argv[1]), int(sys.argv[2]))
    from deepgrid.cli import main

    sys.exit(main(sys.argv[3:]))
