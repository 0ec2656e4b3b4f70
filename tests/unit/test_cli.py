"""The `deepgrid` command, in-process on a tiny synthetic data set, and once as the installed script.

In-process runs train with ``--single-process`` (the reference loop: no engine
to start, a second a run); the console-script run takes the default path, the
local engine with its workers, end to end. Every user mistake must end the same way: exit status 2 and, as the last line
of stderr, one line starting "deepgrid: error:" with no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepgrid.cli import main
from deepgrid.data.idx import read_idx, write_idx
from tests.helpers import assert_user_error

SUMMARY_KEYS = {"model", "workers", "test_accuracy", "samples_per_s", "elapsed_s"}
FAST_CONF = """\
model: mlp
batch_size: 32
epochs: 3
network:
  hidden_layer_sizes: [32]
  activation: relu
  optimizer: adam
  finetune_lr: 0.005
"""


@pytest.fixture(autouse=True)
def isolated(no_default_data, tmp_path, monkeypatch):
    """No real data, and a working directory of the test's own (the default output is runs/<job>)."""
    monkeypatch.chdir(tmp_path)


def last_json_line(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    assert lines, "nothing on stdout"
    summary = json.loads(lines[-1])
    assert isinstance(summary, dict)
    return summary




def write_conf(directory: Path, text: str, name: str = "conf.yaml") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


# -- train -----------------------------------------------------------------------------------------


def test_train_json(capsys, fashion_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["train", "--single-process", "--model", "mlp", "--epochs", "1", "--data-dir", str(fashion_dir),
                 "--json", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = last_json_line(captured.out)
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["model"] == "mlp" and summary["workers"] == 1
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["samples_per_s"] > 0 and summary["elapsed_s"] > 0
    assert Path(summary["output"]) == out
    assert (out / "model.json").is_file() and (out / "weights.safetensors").is_file()
    assert "Confusion matrix" in captured.out  # the report precedes the JSON line
    assert "effective configuration" in captured.err and "model: mlp" in captured.err
    meta = json.loads((out / "model.json").read_text())
    assert meta["conf"]["epochs"] == 1 and meta["conf"]["data_dir"] == str(fashion_dir)


def test_train_from_a_conf_file_learns(capsys, fashion_dir, tmp_path):
    conf = write_conf(tmp_path, FAST_CONF)
    code = main(["train", conf, "--single-process", "--data-dir", str(fashion_dir), "--json",
                 "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = last_json_line(captured.out)
    assert summary["test_accuracy"] > 0.5  # the synthetic classes are easy; chance is 0.1
    assert captured.err.count("finetune epoch") == 3


def test_flags_override_the_conf_file(capsys, fashion_dir, tmp_path):
    conf = write_conf(tmp_path, FAST_CONF)
    out = tmp_path / "out"
    code = main(["train", conf, "--single-process", "--epochs", "1", "--batch-size", "16", "--train-limit", "100",
                 "--test-limit", "50", "--data-dir", str(fashion_dir), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = json.loads((out / "model.json").read_text())["conf"]
    assert (saved["epochs"], saved["batch_size"], saved["train_limit"], saved["test_limit"]) == (1, 16, 100, 50)
    assert "on 100 examples" in captured.err and "Evaluation of 50 examples" in captured.out
    assert not captured.out.strip().splitlines()[-1].startswith("{")  # no --json, no JSON line


def test_default_output_is_under_runs(capsys, fashion_dir, tmp_path):
    code = main(["train", "--single-process", "--model", "mlp", "--epochs", "1", "--data-dir", str(fashion_dir)])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "deepgrid" / "model.json").is_file()


# -- evaluate ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trained") / "model"
    conf = write_conf(out.parent, FAST_CONF)
    code = main(["train", conf, "--single-process", "--data-dir", str(fashion_dir), "-o", str(out), "--json"])
    assert code == 0
    return out, json.loads((out / "model.json").read_text())


def test_evaluate_prints_a_report(capsys, trained, fashion_dir):
    model_dir, meta = trained
    capsys.readouterr()
    code = main(["evaluate", str(model_dir), "--data-dir", str(fashion_dir), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for text in ("Evaluation of 200 examples", "precision", "macro avg", "accuracy", "Confusion matrix",
                 "Ankle boot"):
        assert text in captured.out
    summary = last_json_line(captured.out)
    assert summary["model"] == "mlp" and summary["examples"] == 200
    # The same model on the same test set: the accuracy training reported.
    assert summary["test_accuracy"] == pytest.approx(meta["test_accuracy"], abs=1e-4)


def test_evaluate_finds_the_data_dir_it_was_trained_on(capsys, trained):
    model_dir, _ = trained
    code = main(["evaluate", str(model_dir), "--test-limit", "20"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Evaluation of 20 examples" in captured.out


def test_evaluate_missing_dir(capsys, tmp_path):
    code = main(["evaluate", str(tmp_path / "nope")])
    assert_user_error(code, capsys.readouterr().err, "nope", "does not exist")


def test_evaluate_damaged_dir(capsys, trained, tmp_path, fashion_dir):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(trained[0], damaged)
    weights = damaged / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code = main(["evaluate", str(damaged), "--data-dir", str(fashion_dir)])
    assert_user_error(code, capsys.readouterr().err, "weights.safetensors", "damaged")
    (damaged / "model.json").write_text("{ not json")
    code = main(["evaluate", str(damaged), "--data-dir", str(fashion_dir)])
    assert_user_error(code, capsys.readouterr().err, "model.json", "damaged")


def test_evaluate_a_dir_that_is_no_model(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code = main(["evaluate", str(tmp_path / "empty")])
    assert_user_error(code, capsys.readouterr().err, "not a saved model")


# -- user errors --------------------------------------------------------------------------------------


def train_args(data_dir: Path | str, *extra: str) -> list[str]:
    return ["train", "--single-process", "--model", "mlp", "--epochs", "1", "--data-dir", str(data_dir), *extra]


def test_unknown_model(capsys, fashion_dir, tmp_path):
    code = main(["train", "--model", "resnet", "--data-dir", str(fashion_dir), "-o", str(tmp_path / "out")])
    line = assert_user_error(code, capsys.readouterr().err, "resnet", "'mlp'", "'cnn'")
    assert "`model`" in line
    assert not (tmp_path / "out").exists()


def test_missing_data_dir(capsys, tmp_path):
    code = main(train_args(tmp_path / "nowhere", "-o", str(tmp_path / "out")))
    assert_user_error(code, capsys.readouterr().err, str(tmp_path / "nowhere"), "does not exist")
    assert not (tmp_path / "out").exists()


def test_data_dir_without_the_files(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code = main(train_args(tmp_path / "empty"))
    assert_user_error(code, capsys.readouterr().err, str(tmp_path / "empty"), "train-images-idx3-ubyte")


def test_no_data_anywhere_says_where_it_looked(capsys, no_default_data):
    code = main(["train", "--model", "mlp", "--epochs", "1"])
    assert_user_error(code, capsys.readouterr().err, "looked in", "$DEEPGRID_DATA", str(no_default_data),
                      "--data-dir")


def test_data_found_through_the_environment(capsys, fashion_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPGRID_DATA", str(fashion_dir))
    code = main(["train", "--single-process", "--model", "mlp", "--epochs", "1", "--train-limit", "64",
                 "-o", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err


def test_malformed_yaml_conf(capsys, tmp_path, fashion_dir):
    conf = write_conf(tmp_path, "model: mlp\nnetwork: {hidden_layer_sizes: [10, 20\n")
    code = main(["train", conf, "--data-dir", str(fashion_dir)])
    assert_user_error(code, capsys.readouterr().err, "malformed YAML", "line ", "column ")


def test_malformed_json_conf(capsys, tmp_path, fashion_dir):
    conf = write_conf(tmp_path, '{"model": "mlp",}', name="conf.json")
    code = main(["train", conf, "--data-dir", str(fashion_dir)])
    assert_user_error(code, capsys.readouterr().err, "malformed JSON", "line 1", "column ")


def test_unknown_conf_key(capsys, tmp_path, fashion_dir):
    conf = write_conf(tmp_path, "model: mlp\nnetwork:\n  hiden_layer_sizes: [10]\n")
    code = main(["train", conf, "--data-dir", str(fashion_dir)])
    assert_user_error(code, capsys.readouterr().err, "hiden_layer_sizes", "Did you mean `hidden_layer_sizes`?")


def test_bad_conf_value(capsys, tmp_path, fashion_dir):
    conf = write_conf(tmp_path, "model: mlp\nbatch_size: 0\n")
    code = main(["train", conf, "--data-dir", str(fashion_dir)])
    assert_user_error(code, capsys.readouterr().err, "`batch_size`", "batch_size=0")


def test_missing_conf_file(capsys, tmp_path):
    code = main(["train", str(tmp_path / "nope.yaml")])
    assert_user_error(code, capsys.readouterr().err, "nope.yaml", "does not exist")


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size", "--train-limit", "--workers"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_non_positive_numbers_are_refused_by_argparse(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", "mlp", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and flag in err and "positive integer" in err


def test_no_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "usage: deepgrid" in capsys.readouterr().err


def test_truncated_idx_file(capsys, fresh_fashion_dir):
    path = fresh_fashion_dir / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1000])
    code = main(train_args(fresh_fashion_dir))
    assert_user_error(code, capsys.readouterr().err, str(path), "truncated")


def test_labels_out_of_range(capsys, fresh_fashion_dir):
    path = fresh_fashion_dir / "t10k-labels-idx1-ubyte"
    labels = read_idx(path).copy()
    labels[7] = 12
    write_idx(path, labels)
    code = main(train_args(fresh_fashion_dir))
    assert_user_error(code, capsys.readouterr().err, str(path), "0..9", "12")


def test_images_and_labels_disagree(capsys, fresh_fashion_dir):
    path = fresh_fashion_dir / "train-labels-idx1-ubyte"
    write_idx(path, read_idx(path)[:-5])
    code = main(train_args(fresh_fashion_dir))
    assert_user_error(code, capsys.readouterr().err, "600 images", "595 labels")


@pytest.mark.parametrize("path", [["--single-process"], []], ids=["single-process", "engine"])
def test_n_in_mismatch(capsys, tmp_path, fashion_dir, path):
    conf = write_conf(tmp_path, "model: mlp\nnetwork:\n  n_in: 100\n")
    code = main(["train", conf, *path, "--data-dir", str(fashion_dir), "-o", str(tmp_path / "out")])
    assert_user_error(code, capsys.readouterr().err, "784", "100", "n_in")
    assert not (tmp_path / "out").exists()


def test_evaluate_on_data_that_do_not_fit(capsys, tmp_path, fashion_dir):
    from deepgrid.models.mlp import MLP

    MLP(n_in=100, hidden_layer_sizes=(8,)).save(tmp_path / "m")
    code = main(["evaluate", str(tmp_path / "m"), "--data-dir", str(fashion_dir)])
    assert_user_error(code, capsys.readouterr().err, "784", "100")


def test_empty_conf_file(capsys, tmp_path):
    conf = write_conf(tmp_path, "")
    code = main(["train", conf])
    assert_user_error(code, capsys.readouterr().err, "mapping")


def test_output_that_is_a_file(capsys, fashion_dir, tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    code = main(train_args(fashion_dir, "--train-limit", "64", "-o", str(tmp_path / "taken")))
    assert_user_error(code, capsys.readouterr().err, "taken")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: deepgrid {command}" in out and "--data-dir" in out
    if command == "train":
        assert "--epochs" in out and "--json" in out


# -- the installed console script -------------------------------------------------------------------


def test_console_script_end_to_end(fashion_dir, tmp_path, capsys):
    script = Path(sys.executable).parent / "deepgrid"
    assert script.is_file(), f"{script} is missing: install the package (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if k != "DEEPGRID_DATA"}
    out = tmp_path / "out"
    run = subprocess.run(
        [str(script), "train", "--model", "mlp", "--epochs", "1", "--threads", "1",
         "--data-dir", str(fashion_dir), "--json", "-o", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    summary = last_json_line(run.stdout)
    assert SUMMARY_KEYS <= summary.keys() and summary["model"] == "mlp" and summary["workers"] >= 1
    assert summary["samples_per_s"] > 0
    assert np.isfinite(summary["test_accuracy"])
    assert (out / "weights.safetensors").is_file()
    # What the engine saved, `deepgrid evaluate` reads and scores the same.
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 0
    assert last_json_line(capsys.readouterr().out)["test_accuracy"] == pytest.approx(summary["test_accuracy"],
                                                                                     abs=1e-4)
