"""The package is layered: no module imports a higher layer, not even inside a function (issue 9).

Every module under src/deepgrid is parsed (nothing is imported): each ``import deepgrid.x``,
``from deepgrid.x import y`` and relative import anywhere in it (top level, ``if TYPE_CHECKING:``,
inside functions) is an edge of the import graph. A lazy import of a higher layer is the import
cycle this test exists to keep out, so lazy imports count like any other.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "deepgrid"

# Lowest first. A module may import its own layer and the layers before it, never one after it. A
# module's layer is its first name under deepgrid (deepgrid.models.rbm: "models"); "deepgrid" is the
# package's own __init__, a facade at the top: it re-exports config and errors, and the master and fit
# on first use (issue 11), so no module may import the bare package, only its modules. distributed and
# cli are checked only as the top two (their insides are being restructured); report is the CLI's
# report of a finished run; sklearn is scikit-learn's estimator interface over train's fit.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "atomic_files"),  # nothing of deepgrid
    ("config",),
    ("storage",),  # where files live: local paths and s3:// (issue 12); data and checkpoints use it
    ("data",),
    ("models",),  # knows nothing of training loops, run checkpoints or distribution
    ("train",),
    ("sklearn",),
    ("checkpoint",),  # run checkpoints; a model's own files are models.files
    ("state", "registry"),
    ("distributed", "dashboard"),  # dashboard: the master's live page, started by the runner
    # __main__: python -m deepgrid, the CLI; predict: `deepgrid predict|export` on a saved model;
    # cloud: `deepgrid cluster ...` on AWS (issue 12)
    ("cli", "report", "deepgrid", "__main__", "predict", "export", "cloud"),
)
LAYER_OF: dict[str, int] = {name: index for index, names in enumerate(LAYERS) for name in names}

# Module pairs that must not import each other, directly or through any other module, even lazily.
NO_CYCLE: tuple[tuple[str, str], ...] = (
    ("deepgrid.distributed.engine", "deepgrid.distributed.cluster"),
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module (or the package an imported name is taken from), dotted
    where: str  # path:line


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(source: str, text: str, where: str, known: set[str], is_package: bool) -> list[Import]:
    """The deepgrid modules ``text`` (the code of module ``source``) imports, wherever in it."""
    found: list[Import] = []
    package = source if is_package else source.rpartition(".")[0]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, from .. import z
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from deepgrid import checkpoint` imports the module deepgrid.checkpoint.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        found += [Import(source, t, f"{where}:{node.lineno}") for t in targets if t.split(".")[0] == "deepgrid"]
    return found


def import_graph() -> list[Import]:
    modules = all_modules()
    known = set(modules)
    edges: list[Import] = []
    for name, path in modules.items():
        edges += imports_of(name, path.read_text(), str(path.relative_to(SRC.parent)), known,
                            path.name == "__init__.py")
    return edges


def layer_name(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "deepgrid"


def test_every_module_has_a_layer():
    missing = sorted({layer_name(m) for m in all_modules()} - set(LAYER_OF))
    assert not missing, f"modules under src/deepgrid with no layer: {missing}; add them to LAYERS in {__file__}"


def test_no_module_imports_a_higher_layer():
    wrong = []
    for edge in import_graph():
        source, target = layer_name(edge.source), layer_name(edge.target)
        if LAYER_OF.get(target, -1) > LAYER_OF.get(source, len(LAYERS)):
            wrong.append(f"{edge.where}: {edge.source} (layer {source!r}) imports {edge.target} "
                         f"(layer {target!r}, higher)")
    assert not wrong, "a lower layer imports a higher one (see LAYERS in tests/unit/test_layers.py):\n" + "\n".join(wrong)


def path_between(edges: list[Import], start: str, goal: str) -> list[Import] | None:
    """The imports leading from module ``start`` to module ``goal`` (breadth first), or None."""
    out: dict[str, list[Import]] = {}
    for edge in edges:
        out.setdefault(edge.source, []).append(edge)
    came_by: dict[str, Import | None] = {start: None}
    queue = [start]
    while queue:
        module = queue.pop(0)
        if module == goal:
            path: list[Import] = []
            while (step := came_by[module]) is not None:
                path.insert(0, step)
                module = step.source
            return path
        for edge in out.get(module, []):
            if edge.target not in came_by:
                came_by[edge.target] = edge
                queue.append(edge.target)
    return None


@pytest.mark.parametrize(("first", "second"), NO_CYCLE)
def test_no_import_cycle_between(first, second):
    edges = import_graph()
    there, back = path_between(edges, first, second), path_between(edges, second, first)
    if there is not None and back is not None:
        steps = "\n".join(f"{e.where}: {e.source} imports {e.target}" for e in there + back)
        pytest.fail(f"{first} and {second} import each other:\n{steps}")


def test_the_check_sees_every_kind_of_import():
    """Top level, TYPE_CHECKING, inside a function, `import deepgrid.x`, relative, `from deepgrid import x`."""
    code = '''
from typing import TYPE_CHECKING
import deepgrid.train.loop
from deepgrid import checkpoint
if TYPE_CHECKING:
    from deepgrid.state.base import Job
def f():
    from deepgrid.distributed.runner import ActorNetworkRunner
    from ..cli import main
    from . import files
'''
    known = {"deepgrid.checkpoint", "deepgrid.models.files"}
    found = {i.target for i in imports_of("deepgrid.models.base", code, "x.py", known, is_package=False)}
    assert found == {"deepgrid.train.loop", "deepgrid.checkpoint", "deepgrid.state.base",
                     "deepgrid.distributed.runner", "deepgrid.cli", "deepgrid.models.files"}


def test_builtin_model_names_match_the_registered_kinds():
    """config lists the built-in kinds a Conf may name (it may not import the models): the same as
    the kinds deepgrid's model modules register."""
    from deepgrid.config.model_names import BUILTIN_MODELS
    from deepgrid.models import registry

    registry.names()  # imports the built-in kinds
    builtin = {name for name, cls in registry._MODELS.items() if cls.__module__.startswith("deepgrid.models.")}
    assert builtin == set(BUILTIN_MODELS)


def test_no_module_is_over_400_lines() -> None:
    """Small modules whose names say what they hold (issue 9): a file past 400 lines holds too much."""
    big = {str(path.relative_to(SRC)): n for path in SRC.rglob("*.py")
           if (n := len(path.read_text().splitlines())) > 400}
    assert not big, f"split these modules: {big}"
