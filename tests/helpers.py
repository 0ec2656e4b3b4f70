"""Assertions shared by the test modules."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest
import torch

# Set by .ci/run: a test that needs a server (redis-server, ZooKeeper) or its client package fails
# where they are missing instead of skipping, so CI can never pass green without the real servers.
REQUIRE_SERVERS_ENV = "DEEPGRID_REQUIRE_SERVERS"


def servers_required() -> bool:
    return os.environ.get(REQUIRE_SERVERS_ENV, "").strip() not in ("", "0")


def missing_server(reason: str, *, module_level: bool = False) -> NoReturn:
    """Skip the test for want of a server (say which and how to install it), or fail it under
    DEEPGRID_REQUIRE_SERVERS=1."""
    if servers_required():
        pytest.fail(f"{reason}; {REQUIRE_SERVERS_ENV}=1 requires it (install it, or unset the variable "
                    "to skip these tests)", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def import_or_missing(name: str, reason: str, *, module_level: bool = False) -> ModuleType:
    """``pytest.importorskip`` for a server's client package, under the same rule as :func:`missing_server`."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing_server(reason, module_level=module_level)


def assert_user_error(code: int, stderr: str, *fragments: str) -> str:
    """Exit status 2 and exactly one "deepgrid: error:" line, the last on stderr, no traceback;
    each fragment appears in it. Returns the line."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("deepgrid: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


# -- small data for the layer-wise models (RBM, DBN, SdA) -----------------------------------------
PROTOTYPE_FEATURES, PROTOTYPE_CLASSES = 24, 4


def prototypes_data(n: int = 512, seed: int = 0, binary: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of PROTOTYPE_CLASSES random binary prototypes: structure an RBM can learn quickly."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(PROTOTYPE_CLASSES, PROTOTYPE_FEATURES, generator=g) < 0.5).float()
    y = torch.randint(0, PROTOTYPE_CLASSES, (n,), generator=g)
    if not binary:  # real-valued, about zero mean and unit variance: for gaussian visible units
        return 2 * protos[y] - 1 + 0.3 * torch.randn(n, PROTOTYPE_FEATURES, generator=g), y
    flips = (torch.rand(n, PROTOTYPE_FEATURES, generator=g) < 0.05).float()
    return (protos[y] - flips).abs(), y  # (n, PROTOTYPE_FEATURES) in {0, 1}


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x.split(size), y.split(size), strict=True))


# -- the registry tests' environment -------------------------------------------------------------
def isolate_registry_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DEEPGRID_HOME of the test's own and no registry or ZooKeeper settings from the environment."""
    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path / "home"))
    for name in ("DEEPGRID_REGISTRY", "DEEPGRID_ZK_AUTH", "DEEPGRID_ZK_AUTH_FILE", "DEEPGRID_ZK_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
