"""A user's own torch.nn.Module trained by ``deepgrid train`` with two local worker actors, then
``deepgrid evaluate`` on the saved directory, then a resume from the run's checkpoints: the workers
(Ray's processes) import the user's module as the master does, and nothing about it is pickled to disk.

In process (``deepgrid.cli.main``), each run starting and stopping its own local Ray, as the
``deepgrid`` script does.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepgrid.cli import main
from tests.source_files import write_source
from tests.user_models import write_module


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEEPGRID_DATA", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))


def write_conf(tmp_path: Path, model: str, model_args: dict[str, Any], epochs: int) -> Path:
    fields = write_source("npz", tmp_path / "data", n_train=1200, n_test=300)
    conf = {**fields, "model": model, "model_args": model_args, "workers": 2, "batch_size": 16,
            "averaging_frequency": 10, "epochs": epochs, "dashboard": None,
            "network": {**fields["network"], "optimizer": "adam", "finetune_lr": 0.01}}
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main([*args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return json.loads(captured.out.strip().splitlines()[-1])


def test_a_users_class_trains_on_two_workers_evaluates_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]):
    # The user's module lies in the directory they run deepgrid from, which the `deepgrid` script
    # does not put on the Python path: deepgrid looks there as `python -m` would.
    name = write_module(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    conf = write_conf(tmp_path, f"{name}:SmallMLP", {"hidden": 24}, epochs=2)

    trained = run(capsys, "train", str(conf), "--train-limit", "1000", "-o", "run")
    assert trained["workers"] == 2 and trained["model"] == f"{name}:SmallMLP"
    assert trained["evaluation"]["accuracy"] > 0.9
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["import_path"] == f"{name}:SmallMLP" and meta["network"]["model_args"] == {"hidden": 24}

    evaluated = run(capsys, "evaluate", "run")
    assert evaluated["test_accuracy"] == trained["test_accuracy"]

    # One epoch more, from the finished run's newest checkpoint.
    resumed = run(capsys, "train", str(conf), "--train-limit", "1000", "--epochs", "3",
                  "--resume", "run/checkpoints", "-o", "run2")
    assert resumed["evaluation"]["accuracy"] > 0.9
    assert resumed["rounds"] > trained["rounds"]  # the round counter carried on from the checkpoint


def test_a_factory_found_through_sys_path_reaches_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]):
    # Found through sys.path (as a notebook adds a directory), not the working directory that Ray
    # puts on its workers' path itself: the workers see it through PYTHONPATH.
    name = write_module(tmp_path / "code")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    monkeypatch.chdir(tmp_path)
    conf = write_conf(tmp_path, f"{name}:make_mlp", {"hidden": 16}, epochs=2)
    trained = run(capsys, "train", str(conf), "--train-limit", "1000", "-o", "run")
    assert trained["workers"] == 2 and trained["evaluation"]["accuracy"] > 0.9


def test_a_model_a_worker_cannot_build_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]):
    # As on a cluster host where the user's code differs: the master builds the model, the worker
    # actors (other processes) cannot. The run stops before training with one line naming the host
    # and the cause, not Ray's traceback of a dead actor.
    name = write_module(tmp_path)
    path = tmp_path / f"{name}.py"
    path.write_text(path.read_text() + textwrap.dedent(f"""

        import os


        def driver_only(hidden=16):
            if os.getpid() != {os.getpid()}:
                raise RuntimeError("this host lacks the model's weights file")
            return make_mlp(hidden)
        """))
    monkeypatch.chdir(tmp_path)
    conf = write_conf(tmp_path, f"{name}:driver_only", {"hidden": 16}, epochs=1)
    code = main(["train", str(conf), "--train-limit", "500", "-o", "run"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("deepgrid: error:")]
    assert len(lines) == 1 and "could not start" in lines[0] and "lacks the model's weights file" in lines[0], err
    assert "Traceback" not in err, err
