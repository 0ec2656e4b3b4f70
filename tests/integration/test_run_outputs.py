"""What a real distributed run leaves and says (issue 10): metrics.jsonl, evaluation.json, TensorBoard
files and `deepgrid report`'s plots; plain progress lines when stderr is not a terminal; nothing
but errors with -q; and a wrong server as the last line, with no configuration printed above it.

Each test runs the installed `deepgrid` script: a local engine with worker actors, on the tiny
synthetic data set, as a user would.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_user_error, import_or_missing

SCRIPT = Path(sys.executable).parent / "deepgrid"
EPOCHS = 3
CONF = f"""\
model: mlp
batch_size: 32
epochs: {EPOCHS}
averaging_frequency: 2
validation_fraction: 0.2
network:
  hidden_layer_sizes: [16]
  activation: relu
  optimizer: adam
  finetune_lr: 0.005
"""
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def deepgrid(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DEEPGRID_DATA"}
    env["DEEPGRID_HOME"] = str(cwd / "home")
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def conf_file(tmp_path) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(CONF)
    return path


def test_a_run_writes_its_metrics_evaluation_and_plots(tmp_path, conf_file, fashion_dir):
    out = tmp_path / "run"
    run = deepgrid(["train", str(conf_file), "--data-dir", str(fashion_dir), "-w", "2", "--threads", "1",
                    "--json", "-o", str(out)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])

    lines = [json.loads(text) for text in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [line for line in lines if line["kind"] == "round"]
    validations = [line for line in lines if line["kind"] == "validation"]
    assert len(rounds) == summary["rounds"] > EPOCHS  # one line per round
    assert [line["round"] for line in rounds] == list(range(1, summary["rounds"] + 1))
    assert all(math.isfinite(line["loss"]) and line["samples"] > 0 and line["workers"] >= 1 for line in rounds)
    assert [line["elapsed_s"] for line in lines] == sorted(line["elapsed_s"] for line in lines)
    assert {line["epoch"] for line in rounds} == set(range(1, EPOCHS + 1))
    assert [v["epoch"] for v in validations] == list(range(1, EPOCHS + 1))  # validation_fraction > 0
    assert all(math.isfinite(v["validation_loss"]) and 0 <= v["accuracy"] <= 1 for v in validations)

    evaluation = json.loads((out / "evaluation.json").read_text())
    matrix = evaluation["confusion_matrix"]
    assert len(matrix) == 10 and sum(map(sum, matrix)) == evaluation["n_examples"] > 0
    assert summary["evaluation"] == evaluation
    assert summary["test_accuracy"] == pytest.approx(evaluation["accuracy"], abs=1e-4)

    # stderr is a pipe: plain progress lines, timestamped like every line deepgrid logs; the
    # configuration comes once the Conf, the data and the servers were checked.
    err = run.stderr.splitlines()
    assert any(TIMESTAMP.match(line) and re.search(r" round \d+/\d+ \(\d+%\), .* samples/s, \d+ workers, ETA ", line)
               for line in err), run.stderr[-3000:]
    assert "\r" not in run.stderr  # no bar drawn into a pipe
    configuration = next(i for i, line in enumerate(err) if line.endswith("deepgrid: effective configuration"))
    started = next(i for i, line in enumerate(err) if "started 2 worker(s)" in line)
    assert started < configuration

    # The extras (make setup installs them): TensorBoard's files read back with its own reader...
    import_or_missing("tensorboard", "the tensorboard extra is not installed (pip install 'deepgrid[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("loss/finetune")] == [line["round"] for line in rounds]
    assert len(accumulator.Scalars("validation/loss/finetune")) == EPOCHS

    # ... and `deepgrid report`'s plots, which decode as PNG images.
    import_or_missing("matplotlib", "the plots extra is not installed (pip install 'deepgrid[plots]')")
    report = deepgrid(["report", str(out), "--json"], tmp_path, timeout=120)
    assert report.returncode == 0, report.stderr
    plots = [Path(p) for p in json.loads(report.stdout.strip().splitlines()[-1])["plots"]]
    assert {p.name for p in plots} == {"loss_by_round.png", "loss_by_time.png", "confusion_matrix.png"}
    from PIL import Image

    for path in plots:
        with Image.open(path) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 300


def test_quiet_prints_nothing_but_errors(tmp_path, conf_file, fashion_dir):
    run = deepgrid(["-q", "train", str(conf_file), "--data-dir", str(fashion_dir), "-w", "2", "--threads", "1",
                    "--json"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr == ""
    assert len(run.stdout.strip().splitlines()) == 1 and json.loads(run.stdout)["workers"] == 2
    assert (tmp_path / "runs" / "deepgrid" / "metrics.jsonl").is_file()  # quiet, not idle


def test_an_unreachable_redis_is_the_last_line_with_no_configuration_above(tmp_path, fashion_dir):
    run = deepgrid(["train", "--model", "mlp", "--epochs", "1", "-w", "1", "--threads", "1",
                    "--data-dir", str(fashion_dir), "--state", "redis://:wrong@127.0.0.1:1/0"], tmp_path)
    line = assert_user_error(run.returncode, run.stderr, "Redis", "127.0.0.1:1")
    assert run.stderr.strip().splitlines() == [line], run.stderr[-3000:]
    assert "wrong" not in run.stderr  # the password stays masked
    assert not (tmp_path / "runs" / "deepgrid" / "metrics.jsonl").exists()
