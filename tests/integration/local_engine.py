"""The local engine shared by the test modules that run ``ActorNetworkRunner`` in this process.

A module imports ``ray_local`` (``from tests.integration.local_engine import ray_local  # noqa:
F401``); being autouse, it then starts one local Ray (4 CPUs, a DEEPGRID_HOME of its own) before
the module's first test and stops it after the last.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from deepgrid.distributed import engine


@pytest.fixture(scope="module", autouse=True)
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ["DEEPGRID_HOME"] = str(tmp_path_factory.mktemp("home"))
    engine.start_local(num_cpus=4)
    yield
    engine.shutdown()
