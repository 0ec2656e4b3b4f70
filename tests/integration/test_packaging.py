"""The package as a user installs it (issue 11): the wheel and sdist build and pass `twine check`,
and the wheel installs beside a torch that is already there without touching it, then trains.

Nothing is downloaded: the build runs without isolation (this environment's setuptools), and the
fresh virtual environment gets
- torch from the very wheel `make setup` installed, found in pip's find-links folders (this machine's
  pip configuration has one; elsewhere set DEEPGRID_TORCH_WHEEL=/path/to/torch-*.whl). Without one,
  torch is seen from the project's .venv like the other packages (as --system-site-packages would
  show a base's), and the check that pip leaves it alone still holds;
- every other dependency (numpy, Ray, ...) seen, not copied: a folder of links to the project's
  .venv packages except torch and deepgrid, named in a .pth file of the new environment;
- deepgrid from the built wheel only: `pip install --no-index --find-links dist/`.

The run trains an MLP on 2000 Fashion-MNIST images (Debian's dataset-fashion-mnist, which `make
setup` installs) with 2 worker actors. About 1-2 minutes in all, most of it Ray starting.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import deepgrid
from deepgrid.data import mnist
from tests.helpers import missing_server

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(sysconfig.get_path("purelib"))  # this (the project's) environment's site-packages
VERSION = deepgrid.__version__
# torch's version, where it is imported from, and its RECORD file and when that was written: any
# (re)install, even of the same version, writes a new one.
PROBE = ("import importlib.metadata as m, json, os, torch; "
         "r = str(next(f for f in m.distribution('torch').files if f.name == 'RECORD').locate()); "
         "print(json.dumps([torch.__version__, torch.__file__, r, os.stat(r).st_mtime_ns]))")

pytest.importorskip("build", reason="the dev extra installs build")
pytest.importorskip("twine", reason="the dev extra installs twine")


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The wheel and sdist, built from a copy of the source (the shared tree gets no build/ folder)."""
    top = tmp_path_factory.mktemp("packaging")
    source = top / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src" / "deepgrid", source / "src" / "deepgrid",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    began = time.perf_counter()
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(top / "dist"), str(source)])
    print(f"built in {time.perf_counter() - began:.1f} s")
    return top / "dist"


def test_wheel_and_sdist_pass_twine_and_hold_what_they_declare(dist):
    wheel, sdist = dist / f"deepgrid-{VERSION}-py3-none-any.whl", dist / f"deepgrid-{VERSION}.tar.gz"
    assert wheel.exists() and sdist.exists(), sorted(p.name for p in dist.iterdir())
    run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)])

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"deepgrid-{VERSION}.dist-info/METADATA").decode()
    assert {"deepgrid/py.typed", "deepgrid/__main__.py", f"deepgrid-{VERSION}.dist-info/licenses/LICENSE"} <= names
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    torch_requirement = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: torch")]
    assert torch_requirement == ["Requires-Dist: torch>=2.3"]  # a range, never a pin of one build
    assert "Project-URL" not in metadata  # no public home yet: none invented
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"LICENSE", "pyproject.toml", "src/deepgrid/py.typed", "src/deepgrid/cli.py"} <= members
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


def torch_wheel() -> Path | None:
    """The wheel of this environment's torch, if pip has one on this machine (see the module doc)."""
    if given := os.environ.get("DEEPGRID_TORCH_WHEEL"):
        return Path(given)
    version, python_tag = importlib.metadata.version("torch"), f"cp{sys.version_info[0]}{sys.version_info[1]}"
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    folders = re.findall(r"find-links='([^']*)'", config) + os.environ.get("PIP_FIND_LINKS", "").split()
    for folder in {Path(f.removeprefix("file://")) for part in folders for f in part.split()}:
        for candidate in sorted(folder.glob("torch-*.whl")) if folder.is_dir() else ():
            if candidate.name.split("-")[1:3] == [version, python_tag]:
                return candidate
    return None


def top_level_entries(name: str) -> set[str]:
    """What distribution ``name`` put directly in site-packages (packages, modules, dist-info)."""
    files = importlib.metadata.distribution(name).files or []
    return {f.parts[0] for f in files if f.parts[0] != ".."}


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """(the new environment, how torch got there); removed afterwards (torch alone is 750 MB)."""
    top = tmp_path_factory.mktemp("venv")
    venv = top / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])  # pip runs from here: --python
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    wheel = torch_wheel()
    skip = top_level_entries("deepgrid") | {"__pycache__"}
    if wheel is not None:
        run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--no-deps", str(wheel)])
        skip |= top_level_entries("torch")
        how = f"installed from {wheel}"
    else:
        how = f"seen from {SITE} (no torch wheel on this machine)"
    base = top / "base"  # the other dependencies: links, no copies
    base.mkdir()
    for entry in SITE.iterdir():
        if entry.name not in skip and entry.suffix != ".pth" and not entry.name.startswith("__editable__"):
            (base / entry.name).symlink_to(entry)
    (site / "deepgrid_test_base.pth").write_text(f"{base}\n")
    yield venv, how
    shutil.rmtree(venv, ignore_errors=True)


def test_the_wheel_installs_beside_torch_and_trains(dist, fresh_venv):
    venv, how = fresh_venv
    python, pip = venv / "bin" / "python", [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    before = json.loads(run([str(python), "-c", PROBE]).stdout)
    assert before[0] == importlib.metadata.version("torch"), how

    report = venv / "pip-report.json"
    began = time.perf_counter()
    run([*pip, "install", "--no-index", "--find-links", str(dist), "--report", str(report), f"deepgrid=={VERSION}"])
    installed = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert installed == ["deepgrid"], installed  # torch and the rest already satisfied: nothing else
    after = json.loads(run([str(python), "-c", PROBE]).stdout)
    assert after == before, f"pip changed torch ({how}): {before} -> {after}"
    print(f"torch {how}; deepgrid installed in {time.perf_counter() - began:.1f} s")

    # The installed package, not the source tree: run from elsewhere, with the venv's scripts.
    work = venv.parent / "work"
    work.mkdir()
    where = run([str(python), "-c", "import deepgrid; print(deepgrid.__file__)"], cwd=work).stdout.strip()
    assert where.startswith(str(venv)), where
    assert run([str(venv / "bin" / "deepgrid"), "--version"], cwd=work).stdout.strip() == f"deepgrid {VERSION}"
    assert run([str(python), "-m", "deepgrid", "--version"], cwd=work).stdout.strip() == f"deepgrid {VERSION}"

    try:
        mnist.find_data_dir("fashion-mnist")
    except deepgrid.DataError:
        missing_server("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    env = {k: v for k, v in os.environ.items() if k not in ("DEEPGRID_DATA", "PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"DEEPGRID_HOME": str(work / "home"), "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"}
    began = time.perf_counter()
    trained = run([str(venv / "bin" / "deepgrid"), "train", "--model", "mlp", "--train-limit", "2000",
                   "--workers", "2", "--json"], cwd=work, env=env, timeout=600)
    summary = json.loads(trained.stdout.strip().splitlines()[-1])
    print(f"trained in {time.perf_counter() - began:.1f} s: test accuracy {summary['test_accuracy']:.3f}")
    assert summary["test_accuracy"] > 0.6  # 2000 Fashion-MNIST images: well above chance (0.1)
    assert json.loads(run([str(python), "-c", PROBE]).stdout) == before  # and training left torch alone
