"""Every data source kind trains end to end: 2 worker actors reading the files themselves
(data_feed: files), a learnable generated data set, held-out accuracy above 0.9; and the CLI's
train and evaluate on a user's CSV files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepgrid import Conf
from deepgrid.data.mnist import load_splits
from deepgrid.distributed import engine
from deepgrid.distributed.runner import ActorNetworkRunner
from tests.source_files import KINDS, write_source

SCRIPT = Path(sys.executable).parent / "deepgrid"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    os.environ["DEEPGRID_HOME"] = str(tmp_path_factory.mktemp("home"))
    # Worker processes import tests.source_files (dataset: callable) as the master does.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    engine.start_local(num_cpus=4)
    yield
    engine.shutdown()


def conf_for(fields: dict[str, Any], **changes: Any) -> Conf:
    network = {"hidden_layer_sizes": [32], "activation": "relu", "finetune_lr": 0.05, **fields["network"]}
    base = dict(model="mlp", workers=2, batch_size=16, averaging_frequency=4, epochs=3, data_feed="files",
                validation_fraction=0.1, **{k: v for k, v in fields.items() if k != "network"})
    return Conf(network=network, **{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_trains_with_two_workers_reading_their_files(kind: str, tmp_path: Path) -> None:
    conf = conf_for(write_source(kind, tmp_path))
    _, test = load_splits(conf)
    runner = ActorNetworkRunner("master", None)  # data_feed: files: the runner and its workers read them
    try:
        runner.setup(conf)
        assert len(runner.workers) == 2
        model = runner.train()
    finally:
        runner.shutdown()
    accuracy = model.score(test.x, test.y)
    assert accuracy > 0.9, f"{kind}: held-out accuracy {accuracy:.3f}"


def test_cli_trains_and_evaluates_a_users_csv(tmp_path: Path) -> None:
    fields = write_source("csv", tmp_path / "data")
    conf = conf_for(fields).to_dict()
    conf.update(state_url="memory://", checkpoint_dir=None)
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(conf))
    env = {k: v for k, v in os.environ.items() if k != "DEEPGRID_DATA"} | {"DEEPGRID_HOME": str(tmp_path / "home")}

    def deepgrid(*args: str) -> dict[str, Any]:
        run = subprocess.run([str(SCRIPT), *args, "--json"], capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=300, stdin=subprocess.DEVNULL)
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads(run.stdout.strip().splitlines()[-1])

    trained = deepgrid("train", str(tmp_path / "conf.yaml"), "--single-process", "-o", str(tmp_path / "run"))
    assert trained["evaluation"]["accuracy"] > 0.9
    evaluated = deepgrid("evaluate", str(tmp_path / "run"))
    assert evaluated["examples"] == 200 and evaluated["test_accuracy"] == round(trained["evaluation"]["accuracy"], 4)
