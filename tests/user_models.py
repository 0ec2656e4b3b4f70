"""The source of a user's own model module, written under a fresh name for each test that imports it.

The unit tests (tests/unit/test_user_model.py) build, save and load its models in one process; the
integration tests (tests/integration/test_user_model.py) train them on worker actors, which import it
as the master does.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

USER_CODE = """\
import torch
from torch import nn


class SmallMLP(nn.Module):
    def __init__(self, n_in, n_out, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))

    def forward(self, x):
        return self.body(x)


def make_mlp(hidden=8, width=16):
    # A factory that takes neither n_in nor n_out: the sizes are its own.
    return nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, 4))


def make_broken(hidden=8):
    raise ValueError("hidden must be even")


def make_nothing():
    return 42


def make_frozen():
    return nn.ReLU()


def make_batchnorm():
    return nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))


class NotAModule:
    pass


INSTANCE = nn.Linear(16, 4)
"""


def write_module(directory: Path, code: str = USER_CODE) -> str:
    """Write ``code`` as a module of a fresh name into ``directory``; return the name."""
    name = f"user_nets_{uuid.uuid4().hex[:8]}"  # fresh: Python caches imported modules by name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(textwrap.dedent(code))
    return name
