"""Saving and loading models: safetensors for weights, JSON for configuration.

Nothing is ever unpickled. Files are written to a temporary name and renamed
into place, so a crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from deepgrid.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from deepgrid.models.base import Model

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
