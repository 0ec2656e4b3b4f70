"""A model's files: safetensors for the weights, JSON for the configuration; nothing is ever unpickled.

``save_model_files`` writes ``weights.safetensors`` and ``model.json`` (the kind, the network and
whatever the caller adds) through :mod:`deepgrid.atomic_files`, so a crash mid-write leaves the
previous files intact. ``model.json`` never holds a secret: the password of a ``state_url`` in its
``conf`` is masked. Run checkpoints (deepgrid.checkpoint) are directories of these files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from deepgrid.atomic_files import atomic_write, synced_write
from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.config.secrets import public_conf
from deepgrid.errors import ConfigError, ModelError
from deepgrid.models.registry import get

if TYPE_CHECKING:
    import torch

    from deepgrid.models.base import Model

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model.json"
FORMAT_VERSION = 1
USER_MODULE = "module"  # model.json's `model` for a user's torch module (TorchModel): its code is not stored


def save_model_files(model: Model, directory: Path, extra: dict[str, Any], *, staged: bool = False) -> Path:
    """Write ``model``'s weights and ``model.json`` (its config and ``extra``) into ``directory``.

    ``staged``: ``directory`` is a staging directory that the caller fsyncs and renames into place
    (a checkpoint): each file is written under its own name and fsynced, without a temporary file
    and a rename of its own (two fsyncs and a rename fewer per file, on every round's checkpoint)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.module.state_dict().items()}
    if isinstance(extra.get("conf"), dict):
        # Whoever passes a Conf's to_dict(): model.json is read by anyone who can read the run's
        # directory, so a state store's password never goes there.
        extra = {**extra, "conf": public_conf(extra["conf"])}
    meta = {"format": FORMAT_VERSION, **model.get_config(), **extra}
    write = synced_write if staged else atomic_write
    write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
    write(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(meta, indent=2)))
    return directory


def read_model_meta(directory: Path) -> dict[str, Any]:
    """``model.json`` of a saved model, checked to name a kind and a network; ModelError otherwise."""
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
                         f"{short_repr(meta['model'])} and {short_repr(meta['network'])}; restore it or train again.")
    return meta


def network_from_meta(meta: dict[str, Any], directory: Path) -> NeuralNetConfiguration:
    """The network configuration model.json holds; ModelError when it is not a valid one."""
    try:
        return NeuralNetConfiguration.from_dict(meta["network"])
    except (ConfigError, TypeError) as e:
        raise ModelError(f"{directory / CONFIG_FILE} holds an invalid network configuration: {e}") from None


def model_from_meta(meta: dict[str, Any], directory: Path) -> Model:
    """An untrained model of the kind and network model.json names.

    A user's torch module cannot be rebuilt from the files (its code is not stored): TorchModel.load
    builds it from the module the user passes, and hands it to :func:`load_model_files`.
    """
    conf = network_from_meta(meta, directory)
    if meta["model"] == USER_MODULE:
        raise ModelError(f"{directory} holds weights of a user's torch module; load it with TorchModel.load(dir, module=YourModule()).")
    return get(meta["model"])(conf)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{directory / WEIGHTS_FILE} is damaged ({e}); restore it or train again.") from None


def load_weights(model: Model, state: dict[str, torch.Tensor], directory: Path) -> None:
    try:
        model.module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelError(f"{directory / WEIGHTS_FILE} does not fit the configured network ({first}).") from None


def load_model_files(directory: Path, *, model: Model | None = None) -> Model:
    """Rebuild the model named in model.json and load its weights.

    ``model``: load the weights into this model instead (built by the caller, e.g. a runner's model
    factory, or TorchModel.load from the user's module); it must be of the kind saved.
    """
    meta = read_model_meta(directory)
    if model is None:
        model = model_from_meta(meta, directory)
    elif model.name != meta["model"]:
        raise ModelError(f"{directory} holds a {meta['model']!r} model, but the model to load it into is a "
                         f"{model.name!r} model; build the kind it was saved from.")
    load_weights(model, read_weights(directory), directory)
    return model


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a damaged file's value inside a one-line error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
