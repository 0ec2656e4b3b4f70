"""A run's outputs without an engine: metrics.jsonl, evaluation.json, TensorBoard files, the plots,
the progress display and the logging set-up (issue 10).

The distributed run's files, its progress lines and its errors are in
tests/integration/test_run_outputs.py; here everything runs in this process in about a second.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from deepgrid.cli import main
from deepgrid.data.dataset import ArrayDataset
from deepgrid.distributed.progress import RunProgressDisplay, format_eta, run_jobs
from deepgrid.errors import DataError
from deepgrid.models.base import Phase
from deepgrid.models.evaluation import Evaluation
from deepgrid.models.mlp import MLP
from deepgrid.train import logs
from deepgrid.train.loop import fit
from deepgrid.train.metrics_file import (
    EVALUATION_FILE,
    METRICS_FILE,
    TENSORBOARD_DIR,
    MetricsFile,
    read_metrics,
    write_evaluation,
)
from deepgrid.train.plots import PLOTS, write_plots
from deepgrid.train.schedule import RunProgress
from tests.helpers import assert_user_error, import_or_missing

TENSORBOARD_MISSING = "the tensorboard extra is not installed (pip install 'deepgrid[tensorboard]')"
PLOTS_MISSING = "the plots extra is not installed (pip install 'deepgrid[plots]')"

FAST_CONF = """\
model: mlp
batch_size: 32
epochs: 2
validation_fraction: 0.2
network:
  hidden_layer_sizes: [16]
  activation: relu
  optimizer: adam
  finetune_lr: 0.005
"""


@pytest.fixture(autouse=True)
def isolated(no_default_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def deepgrid_logger():
    """The "deepgrid" logger as it was: tests here set its level and handlers."""
    logger = logging.getLogger("deepgrid")
    level, handlers, propagate = logger.level, list(logger.handlers), logger.propagate
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers
    logger.propagate = propagate


def decodes_as_png(path: Path) -> tuple[int, int]:
    """The image's (width, height), read back by PIL: the file is a whole PNG."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


# -- metrics.jsonl ---------------------------------------------------------------------------------


def test_round_and_validation_lines(tmp_path):
    with MetricsFile(tmp_path, tensorboard=False) as metrics:
        metrics.add_round(round=1, phase="finetune", epoch=1, loss=0.5, samples=64, seconds=0.5, workers=2, jobs=2)
        metrics.add_round(round=2, phase="finetune", epoch=1, loss=float("nan"), samples=64, seconds=0.0, workers=2)
        metrics.add_validation(round=2, phase="finetune", epoch=1, loss=0.4, validation_loss=0.3, best_loss=0.3,
                               accuracy=0.9)
    first, second, validation = read_metrics(tmp_path / METRICS_FILE)
    assert first["kind"] == "round" and first["round"] == 1 and first["samples_per_s"] == 128.0
    assert first["workers"] == 2 and first["jobs"] == 2 and first["epoch"] == 1
    assert first["time"] > 1e9 and first["elapsed_s"] >= 0
    assert second["loss"] is None and second["samples_per_s"] is None  # JSON has no NaN
    assert validation == {**validation, "kind": "validation", "round": 2, "validation_loss": 0.3, "accuracy": 0.9}
    for text in (tmp_path / METRICS_FILE).read_text().splitlines():
        json.loads(text)  # strict JSON: no NaN, no Infinity


def test_a_resumed_run_appends_and_its_clock_goes_on(tmp_path):
    with MetricsFile(tmp_path, tensorboard=False) as metrics:
        metrics.add_round(round=1, phase="finetune", epoch=1, loss=0.5, samples=8, seconds=0.1, workers=1)
    with (tmp_path / METRICS_FILE).open("a") as file:
        file.write('{"kind": "round", "rou')  # a line cut short by a kill
    before = read_metrics(tmp_path)[-1]["elapsed_s"]
    with MetricsFile(tmp_path, fresh=False, tensorboard=False) as metrics:
        metrics.add_round(round=2, phase="finetune", epoch=1, loss=0.4, samples=8, seconds=0.1, workers=1)
    lines = read_metrics(tmp_path)
    assert [line["round"] for line in lines] == [1, 2]
    assert lines[1]["elapsed_s"] >= before
    with MetricsFile(tmp_path, tensorboard=False):  # a fresh run starts the file anew
        pass
    assert read_metrics(tmp_path) == []


def test_reading_a_missing_metrics_file_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="No metrics file"):
        read_metrics(tmp_path)


def test_fit_writes_a_line_per_job_and_per_validation(tmp_path, make_class_data):
    train, validation = ArrayDataset(*make_class_data(200, 32)).split(0.25, seed=0)
    model = MLP(n_in=32, n_out=10, hidden_layer_sizes=[16], optimizer="adam", finetune_lr=0.005)
    with MetricsFile(tmp_path, tensorboard=False) as metrics:
        result = fit(model, train, epochs=2, batch_size=16, job_size=3, validation=validation, metrics=metrics)
    lines = read_metrics(tmp_path)
    rounds = [line for line in lines if line["kind"] == "round"]
    validations = [line for line in lines if line["kind"] == "validation"]
    jobs_per_epoch = math.ceil(train.n_batches(16) / 3)
    assert [line["round"] for line in rounds] == list(range(1, 2 * jobs_per_epoch + 1))
    assert all(math.isfinite(line["loss"]) and line["samples"] > 0 for line in rounds)
    assert sum(line["samples"] for line in rounds) == result.samples
    assert [(v["epoch"], v["round"]) for v in validations] == [(1, jobs_per_epoch), (2, 2 * jobs_per_epoch)]
    assert [v["validation_loss"] for v in validations] == pytest.approx([h["validation_loss"] for h in result.history],
                                                                         abs=1e-6)
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in validations)


def test_evaluation_json(tmp_path):
    evaluation = Evaluation([[3, 1], [0, 4]], labels=["cat", "dog"])
    path = write_evaluation(tmp_path, evaluation)
    assert path == tmp_path / EVALUATION_FILE
    data = json.loads(path.read_text())
    assert data["confusion_matrix"] == [[3, 1], [0, 4]] and data["accuracy"] == pytest.approx(7 / 8)
    assert [c["label"] for c in data["per_class"]] == ["cat", "dog"]
    assert Evaluation.from_dict(data).confusion_matrix.tolist() == [[3, 1], [0, 4]]


def test_tensorboard_scalars_read_back(tmp_path):
    import_or_missing("tensorboard", TENSORBOARD_MISSING)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsFile(tmp_path) as metrics:
        for r in (1, 2, 3):
            metrics.add_round(round=r, phase="finetune", epoch=1, loss=1.0 / r, samples=10, seconds=0.1, workers=1)
        metrics.add_validation(round=3, phase="finetune", epoch=1, loss=0.3, validation_loss=0.25, accuracy=0.75)
    accumulator = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    accumulator.Reload()
    losses = accumulator.Scalars("loss/finetune")
    assert [e.step for e in losses] == [1, 2, 3]
    assert [e.value for e in losses] == pytest.approx([1.0, 0.5, 1 / 3], abs=1e-5)  # 6 digits, as in the file
    assert accumulator.Scalars("validation/accuracy/finetune")[0].value == pytest.approx(0.75)


# -- deepgrid report -------------------------------------------------------------------------------


def write_run(run_dir: Path) -> None:
    with MetricsFile(run_dir, tensorboard=False) as metrics:
        for phase, first in (("pretrain_1", 1), ("finetune", 5)):
            for r in range(first, first + 4):
                metrics.add_round(round=r, phase=phase, epoch=1 + (r - first) // 2, loss=2.0 / r, samples=32,
                                  seconds=0.05, workers=2)
        metrics.add_validation(round=6, phase="finetune", epoch=1, loss=0.4, validation_loss=0.35, accuracy=0.8)
        metrics.add_validation(round=8, phase="finetune", epoch=2, loss=0.3, validation_loss=0.30, accuracy=0.85)
    write_evaluation(run_dir, Evaluation(np.eye(3, dtype=int) * 5 + 1, labels=["a", "b", "c"]))


def test_report_writes_pngs_that_decode(tmp_path, capsys):
    import_or_missing("matplotlib", PLOTS_MISSING)
    write_run(tmp_path / "run")
    assert main(["report", str(tmp_path / "run"), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    paths = [Path(p) for p in json.loads(out[-1])["plots"]]
    assert [p.name for p in paths] == list(PLOTS)
    for path in paths:
        width, height = decodes_as_png(path)
        assert width > 300 and height > 300


def test_report_without_validation_or_evaluation_draws_the_loss(tmp_path):
    import_or_missing("matplotlib", PLOTS_MISSING)
    with MetricsFile(tmp_path, tensorboard=False) as metrics:
        metrics.add_round(round=1, phase="finetune", epoch=1, loss=1.0, samples=8, seconds=0.1, workers=1)
    assert [p.name for p in write_plots(tmp_path)] == list(PLOTS[:2])


def test_report_without_matplotlib_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    write_run(tmp_path / "run")
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code = main(["report", str(tmp_path / "run")])
    assert_user_error(code, capsys.readouterr().err, "install deepgrid[plots]")


@pytest.mark.parametrize("make", ["nothing", "empty dir"])
def test_report_of_no_run_is_one_line_exit_2(tmp_path, capsys, make):
    run_dir = tmp_path / "run"
    if make == "empty dir":
        run_dir.mkdir()
    code = main(["report", str(run_dir)])
    assert_user_error(code, capsys.readouterr().err, str(run_dir))


# -- the command line: train's outputs, -q, -v, the configuration ---------------------------------


def test_train_writes_metrics_and_evaluation_and_json_holds_it(tmp_path, capsys, fashion_dir):
    conf = tmp_path / "conf.yaml"
    conf.write_text(FAST_CONF)
    out = tmp_path / "out"
    code = main(["train", str(conf), "--single-process", "--data-dir", str(fashion_dir), "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    evaluation = json.loads((out / EVALUATION_FILE).read_text())
    assert summary["evaluation"] == evaluation
    assert len(evaluation["confusion_matrix"]) == 10 and len(evaluation["per_class"]) == 10
    lines = read_metrics(out)
    assert [line["epoch"] for line in lines if line["kind"] == "validation"] == [1, 2]
    # Lines on stderr carry a timestamp; the configuration follows the checks of the Conf and the data.
    first = captured.err.splitlines()[0]
    assert first[:4].isdigit() and first.endswith("deepgrid: effective configuration"), captured.err


def test_quiet_prints_nothing_but_the_json_line(tmp_path, capsys, fashion_dir, deepgrid_logger):
    conf = tmp_path / "conf.yaml"
    conf.write_text(FAST_CONF)
    code = main(["-q", "train", str(conf), "--single-process", "--data-dir", str(fashion_dir), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err == ""
    assert len(captured.out.strip().splitlines()) == 1 and json.loads(captured.out)["model"] == "mlp"
    # After the command as well; an error still shows, as the one last line.
    code = main(["train", str(conf), "-q", "--single-process", "--data-dir", str(tmp_path / "nowhere")])
    assert_user_error(code, capsys.readouterr().err)


def test_verbose_prints_the_configuration_before_the_checks(tmp_path, capsys, deepgrid_logger):
    code = main(["-v", "train", "--single-process", "--model", "mlp", "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert_user_error(code, err)
    assert "effective configuration" in err and "model: mlp" in err
    # Without -v the same mistake is the only line: no configuration above it.
    code = main(["train", "--single-process", "--model", "mlp", "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert_user_error(code, err)
    assert len(err.strip().splitlines()) == 1


def test_verbose_and_quiet_together_are_refused(capsys, deepgrid_logger):
    code = main(["-v", "train", "-q"])
    assert_user_error(code, capsys.readouterr().err, "-q/--quiet")


# -- logging for the Python API ----------------------------------------------------------------------


def test_the_api_shows_progress_unless_logging_is_configured():
    """A fresh interpreter (no handler anywhere, as a user's script): deepgrid's INFO lines reach stderr,
    timestamped; a program that configured logging gets them through its own configuration only."""
    script = """
import logging, sys
from deepgrid.train.logs import install_default_handler
install_default_handler()
logging.getLogger("deepgrid").info("first line")
logging.basicConfig(stream=sys.stdout, format="own: %(message)s")
logging.getLogger("deepgrid").info("second line")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().endswith("first line") and run.stderr.strip()[:4].isdigit()
    assert "second line" not in run.stderr and run.stdout.strip() == "own: second line"


def test_the_api_leaves_a_configured_logging_alone(monkeypatch, deepgrid_logger):
    monkeypatch.setattr(logs, "_default_tried", False)
    before = list(deepgrid_logger.handlers)
    logs.install_default_handler()  # pytest's capture handlers are on the root logger
    assert deepgrid_logger.handlers == before


# -- the progress display ----------------------------------------------------------------------------


def fake_master(n_batches: int = 20, averaging_frequency: int = 2, epochs: int = 3, workers: int = 2) -> SimpleNamespace:
    phases = [Phase("pretrain_1", 1, supervised=False), Phase("finetune", epochs)]
    return SimpleNamespace(
        conf=SimpleNamespace(batch_size=10, averaging_frequency=averaging_frequency, epochs=epochs),
        train_data=SimpleNamespace(n_batches=lambda batch_size: n_batches), shards=None,
        model=SimpleNamespace(phases=lambda epochs: phases),
        progress=RunProgress(), workers={f"w{i}": None for i in range(workers)}, round=0)


def test_run_jobs_counts_every_epoch_of_every_phase():
    master = fake_master()  # 10 jobs an epoch; 1 + 3 epochs
    assert run_jobs(master) == (0, 40)
    master.progress.phase_index, master.progress.epoch, master.progress.done_jobs = 1, 2, {0, 1, 2}
    assert run_jobs(master) == (10 + 2 * 10 + 3, 40)


def test_plain_progress_lines_every_few_seconds(deepgrid_logger, monkeypatch):
    deepgrid_logger.setLevel(logging.INFO)
    lines: list[str] = []
    display = RunProgressDisplay(lines.append, bar=False, every_s=3600)
    master = fake_master()
    for r in (1, 2, 3):
        master.round = r
        master.progress.done_jobs = set(range(2 * r))
        display.on_round_end(master, SimpleNamespace(round=r, n_samples=40, results=[1, 2], seconds=0.5))
    assert len(lines) == 1  # the first round, then one every hour
    assert lines[0].startswith("round 1/20 (5%), ") and "samples/s, 2 workers, ETA " in lines[0]
    status = display.status(master)
    assert status["rounds"] == 20 and status["jobs_done"] == 6 and status["eta_s"] > 0
    display.on_train_end(master)


def test_no_progress_when_quiet(deepgrid_logger):
    deepgrid_logger.setLevel(logging.WARNING)
    lines: list[str] = []
    display = RunProgressDisplay(lines.append, bar=False, every_s=0)
    master = fake_master()
    master.round = 1
    display.on_round_end(master, SimpleNamespace(round=1, n_samples=40, results=[1, 2], seconds=0.5))
    assert lines == []


def test_the_bar_counts_rounds(deepgrid_logger, capsys):
    deepgrid_logger.setLevel(logging.INFO)
    display = RunProgressDisplay(lambda line: None, bar=True)
    master = fake_master()
    for r in (1, 2):
        master.round = r
        master.progress.done_jobs = set(range(2 * r))
        display.on_round_end(master, SimpleNamespace(round=r, n_samples=40, results=[1, 2], seconds=0.5))
    bar = display._bar
    assert bar.n == 2 and bar.total == 20
    display.on_train_end(master)
    assert display._bar is None
    err = capsys.readouterr().err
    assert "training:" in err and "2 workers" in err, err


def test_format_eta():
    assert [format_eta(s) for s in (None, float("inf"), 5, 65, 3725)] == ["?", "?", "0:05", "1:05", "1:02:05"]


def test_the_epoch_accuracy_is_computed_once_per_validation(monkeypatch) -> None:
    """The metrics file and the dashboard both want it; one pass over the validation set serves both."""
    from types import SimpleNamespace

    from deepgrid.distributed import metrics_file
    from deepgrid.models.base import Phase

    calls: list[int] = []
    monkeypatch.setattr(metrics_file, "validation_accuracy", lambda model, data: calls.append(1) or 0.5 + len(calls))
    master = SimpleNamespace(model=None, validation=None, round=7, accuracy_cache=None)
    finetune = Phase("finetune", 3)
    assert metrics_file.epoch_accuracy(master, finetune, 0) == 1.5
    assert metrics_file.epoch_accuracy(master, finetune, 0) == 1.5 and len(calls) == 1
    master.round = 9  # the next epoch's validation: new parameters, a new pass
    assert metrics_file.epoch_accuracy(master, finetune, 1) == 2.5 and len(calls) == 2
