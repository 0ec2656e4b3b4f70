"""A user's own ``torch.nn.Module`` as a model kind a Conf names (``model: pkg.module:ClassOrFactory``).

The name is an import path or the name an installed package registers in the entry-point group
``deepgrid.models``. :func:`user_model_class` imports what it names and gives a :class:`UserModel`
class (a TorchModel) whose ``name`` is that name. Its module is built in ``build()`` from
``network.model_args``, seeded like the built-in models, so the master, every worker, a checkpoint
resume and ``deepgrid evaluate`` each build the same network by importing the same code: model.json
holds the name, the import path and the arguments (JSON), never the code or a pickle.

Where the code is found: the Python path, then the current directory (as ``python -m`` would; the
``deepgrid`` script does not put it on the path). The worker actors this process starts later find
it too: the directory it came from is added to PYTHONPATH, which they inherit. On a cluster every
host must have the package installed (or the same directory on its PYTHONPATH).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import site
import sys
import sysconfig
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from deepgrid.config.model_names import ENTRY_POINT_GROUP, is_import_path
from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.errors import ConfigError
from deepgrid.models.base import Model
from deepgrid.models.module import TorchModel

# Passed to a class or factory that takes them and is not given them in model_args.
NETWORK_ARGS = ("n_in", "n_out")


class UserModel(TorchModel):
    """A TorchModel whose module is built from the configuration: ``target(**network.model_args)``.

    Subclassed once per name by :func:`user_model_class`, which sets the class attributes.
    """

    import_path: ClassVar[str] = ""
    target: ClassVar[Callable[..., Any]]

    def __init__(self, conf: NeuralNetConfiguration | None = None, **fields: Any) -> None:
        # Not TorchModel.__init__, which takes a module built outside: this one is built in build(),
        # after Model.__init__ has seeded torch, so that every process builds the same initial weights.
        self._loss = nn.functional.cross_entropy
        Model.__init__(self, conf, **fields)

    def build(self) -> nn.Module:
        return build_module(self.name, type(self).target, self.conf)

    def get_config(self) -> dict[str, Any]:
        # model.json: `model` (the name, which loads it again) and the code it came from, for the record.
        return {**super().get_config(), "import_path": self.import_path}

    def __repr__(self) -> str:  # the network's hidden_layer_sizes say nothing of a user's module
        return f"UserModel({self.name!r}, {self.n_params} parameters)"


def user_model_class(name: str) -> type[UserModel]:
    """The model class of a user's network named ``name``; a ConfigError when it cannot be had."""
    import_path = resolve_import_path(name)
    target = import_target(name, import_path)
    check_target(name, target)
    return type(f"UserModel[{name}]", (UserModel,),
                {"name": name, "import_path": import_path, "target": staticmethod(target)})


def resolve_import_path(name: str) -> str:
    """``name`` itself when it is ``pkg.module:Attr``, else the import path its entry point gives."""
    if is_import_path(name):
        return name
    found = {f"{ep.module}:{ep.attr}": ep for ep in entry_points(group=ENTRY_POINT_GROUP, name=name)}
    if not found:
        raise ConfigError(f"model {name!r}: no installed package registers it (entry-point group "
                          f"{ENTRY_POINT_GROUP!r}); install the package, or name it as 'pkg.module:ClassOrFactory'.")
    if len(found) > 1:
        raise ConfigError(f"model {name!r} is registered by several installed packages, as {', '.join(sorted(found))}; "
                          "name the one you mean as 'pkg.module:ClassOrFactory'.")
    return next(iter(found))


def import_target(name: str, import_path: str) -> Any:
    """What ``pkg.module:Attr`` names, or a ConfigError saying which part is missing."""
    module_name, _, attribute = import_path.partition(":")
    module = import_user_module(name, module_name)
    target: Any = module
    for depth, part in enumerate(attribute.split(".")):
        if not hasattr(target, part):
            where = module_name if depth == 0 else f"{module_name}:{'.'.join(attribute.split('.')[:depth])}"
            close = difflib.get_close_matches(part, [n for n in dir(target) if not n.startswith("_")], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"model {name!r}: {where} has no attribute {part!r}.{hint}")
        target = getattr(target, part)
    return target


def import_user_module(name: str, module_name: str) -> Any:
    """Import ``module_name`` from the Python path or, failing that, the current directory."""
    try:
        module = _import(module_name)
    except ModuleNotFoundError as e:
        if not _is_missing(e, module_name):
            raise _import_failed(name, module_name, e) from None
        cwd = os.getcwd()
        if cwd in sys.path or "" in sys.path:
            raise _not_found(name, module_name) from None
        # As `python -m` would: the `deepgrid` script's own path does not hold the current directory.
        sys.path.append(cwd)
        try:
            module = _import(module_name)
        except ModuleNotFoundError as e:
            raise (_not_found(name, module_name) if _is_missing(e, module_name)
                   else _import_failed(name, module_name, e)) from None
        except Exception as e:
            raise _import_failed(name, module_name, e) from None
    except Exception as e:  # the user's module runs code at import: whatever it raises, say where
        raise _import_failed(name, module_name, e) from None
    share_with_workers(module_name)
    return module


def _import(module_name: str) -> Any:
    # A file written since this process last looked at its directory (a test, a notebook) is found.
    importlib.invalidate_caches()
    return importlib.import_module(module_name)


def _is_missing(error: ModuleNotFoundError, module_name: str) -> bool:
    """True when the module itself (or a package above it) is missing, not something it imports."""
    parts = module_name.split(".")
    return error.name in {".".join(parts[: i + 1]) for i in range(len(parts))}


def _not_found(name: str, module_name: str) -> ConfigError:
    return ConfigError(f"model {name!r}: no module named {module_name!r} on the Python path or in the current "
                       f"directory {os.getcwd()}; run from the directory that holds it, add that directory to "
                       "PYTHONPATH, or install its package.")


def _import_failed(name: str, module_name: str, error: BaseException) -> ConfigError:
    return ConfigError(f"model {name!r}: importing {module_name!r} raised {type(error).__name__}: {first_line(error)}")


def share_with_workers(module_name: str) -> None:
    """Put the directory ``module_name`` came from on PYTHONPATH, for the processes started from here on.

    The worker actors import the module again; they are Ray's processes, which take this process's
    environment when it starts a local Ray. (Ray adds the driver's current directory to their path
    itself, but not a directory the module was found in through a changed ``sys.path``.)
    """
    root = module_root(module_name)
    if root is None or str(root) in _installed_dirs():
        return  # an installed package: the workers' interpreter finds it on its own
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    if str(root) not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([*entries, str(root)])


def module_root(module_name: str) -> Path | None:
    """The directory on the path that holds ``module_name``'s top-level module or package."""
    top = sys.modules.get(module_name.partition(".")[0])
    file = getattr(top, "__file__", None)
    if file:
        path = Path(file).resolve()
        root = path.parent.parent if path.stem == "__init__" else path.parent
    else:  # a namespace package: no __init__.py, one or more directories
        paths = list(getattr(top, "__path__", []))
        root = Path(paths[0]).resolve().parent if paths else None
    return root if root is not None and root.is_dir() else None


def _installed_dirs() -> set[str]:
    dirs = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "platstdlib")}
    dirs.update(site.getsitepackages())
    return {str(Path(d).resolve()) for d in dirs}


def check_target(name: str, target: Any) -> None:
    """A ``torch.nn.Module`` subclass or a function that returns a module; a ConfigError otherwise."""
    if isinstance(target, nn.Module):
        raise ConfigError(f"model {name!r} is a torch.nn.Module instance; name its class, or a function that "
                          "builds one (every worker builds its own).")
    if inspect.isclass(target):
        if not issubclass(target, nn.Module):
            raise ConfigError(f"model {name!r} is the class {target.__name__}, which is not a torch.nn.Module; name "
                              "a torch.nn.Module subclass or a function that returns one.")
    elif not callable(target):
        raise ConfigError(f"model {name!r} is a {type(target).__name__} object, not a torch.nn.Module class or a "
                          "function that returns one.")


def build_module(name: str, target: Callable[..., Any], conf: NeuralNetConfiguration) -> nn.Module:
    """``target(**model_args)`` (with n_in/n_out when it takes them), checked against the network."""
    kwargs = dict(conf.model_args)
    accepted = _parameter_names(target)
    for key in NETWORK_ARGS:
        if key not in kwargs and key in accepted:
            kwargs[key] = getattr(conf, key)
    call = f"{getattr(target, '__name__', name)}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        module = target(**kwargs)
    except Exception as e:  # the user's code
        raise ConfigError(f"model {name!r}: {call} raised {type(e).__name__}: {first_line(e)} "
                          "(its arguments are model_args).") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model {name!r}: {call} returned a value of type {type(module).__name__}, not a torch.nn.Module.")
    if not any(p.requires_grad for p in module.parameters()):
        raise ConfigError(f"model {name!r}: {call} has no trainable parameters.")
    check_shapes(name, module, conf)
    warn_of_buffers(name, module)
    return module


_warned: set[str] = set()


def warn_of_buffers(name: str, module: nn.Module) -> None:
    """Workers exchange parameters only (Model.get_flat_params): a buffer such as BatchNorm's running
    statistics stays as built in the model the master saves, which then predicts with wrong statistics."""
    buffers = [key for key, _ in module.named_buffers()]
    if buffers and name not in _warned:
        _warned.add(name)
        logging.getLogger("deepgrid").warning(
            f"deepgrid: warning: model {name!r} has buffers ({', '.join(buffers[:3])}{', ...' if len(buffers) > 3 else ''}), "
            "which a distributed run does not exchange (only parameters): the master's saved model keeps them as "
            "built. Use LayerNorm or GroupNorm, or BatchNorm(track_running_stats=False).")


def _parameter_names(target: Callable[..., Any]) -> set[str]:
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass only model_args
        return set()
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_shapes(name: str, module: nn.Module, conf: NeuralNetConfiguration) -> None:
    """One forward pass on a batch of zeros, (2, n_in) -> (2, n_out): a mismatch with the network's
    sizes is one line now instead of a shape error deep inside the first job of every worker."""
    was_training = module.training
    module.eval()  # dropout off, batch-norm statistics untouched
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, conf.n_in))
    except Exception as e:
        raise ConfigError(f"model {name!r} does not take inputs of network.n_in={conf.n_in} features: a batch of "
                          f"shape (2, {conf.n_in}) raised {type(e).__name__}: {first_line(e)}; set network.n_in to "
                          "the features the model takes (and the data have).") from None
    finally:
        module.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (2, conf.n_out):
        got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise ConfigError(f"model {name!r} gives {got} for a batch of shape (2, {conf.n_in}); expected (2, "
                          f"{conf.n_out}): one score per class (network.n_out={conf.n_out}).")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"
