"""`deepgrid predict` and `deepgrid export` on models `deepgrid train` saved, all in-process.

An MLP trained on generated tabular data (written as CSV, NPZ, NPY and Parquet) and a CNN trained on
the synthetic Fashion-MNIST IDX files (also written out as PNG images): predict's probabilities are
the model's own forward on the same examples, its accuracy on labelled data is `deepgrid evaluate`'s,
and the exported ONNX (run with onnxruntime) and TorchScript files compute the same probabilities.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from deepgrid.cli import main
from deepgrid.data.idx import read_idx
from deepgrid.models.base import Model
from tests.helpers import assert_user_error
from tests.source_files import write_table

N_IN, N_CLASSES = 16, 4


@pytest.fixture(autouse=True)
def isolated(no_default_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def overlapping_blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four Gaussian blobs close enough to overlap (accuracy well below 1, so that comparing two
    accuracies means something), rounded to 3 decimals so that CSV's text holds them exactly."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(7).normal(size=(N_CLASSES, N_IN)) * 0.5
    y = rng.integers(0, N_CLASSES, n)
    x = np.round(centers[y] + rng.normal(size=(n, N_IN)), 3).astype(np.float32)
    return x, y.astype(np.int64)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out, captured.err


def read_csv_output(text: str) -> tuple[list[str], list[dict[str, str]]]:
    rows = list(csv.DictReader(text.splitlines()))
    return text.splitlines()[0].split(","), rows


def probabilities_of(rows: list[dict[str, str]], n_out: int) -> np.ndarray:
    return np.array([[float(r[f"p{k}"]) for k in range(n_out)] for r in rows])


def forward_probabilities(model_dir: Path, x: np.ndarray) -> np.ndarray:
    """The saved model's own forward pass and softmax, without predict's code."""
    model = Model.load(model_dir)
    model.module.eval()
    with torch.no_grad():
        return torch.softmax(model.forward(torch.as_tensor(x, dtype=torch.float32)), dim=1).numpy()


def evaluated_accuracy(capsys: pytest.CaptureFixture[str], model_dir: Path, *extra: str) -> float:
    out, _ = run_cli(capsys, "evaluate", str(model_dir), "--json", *extra)
    return json.loads(out.strip().splitlines()[-1])["test_accuracy"]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An MLP trained (single process) on CSV files; its test split in every tabular format."""
    root = tmp_path_factory.mktemp("mlp")
    data = root / "data"
    data.mkdir()
    test_x, test_y = overlapping_blobs(300, 2)
    write_table(data / "train.csv", *overlapping_blobs(600, 1))
    write_table(data / "test.csv", test_x, test_y)
    conf = {"model": "mlp", "dataset": "csv", "data_dir": str(data), "batch_size": 32, "epochs": 2,
            "network": {"n_in": N_IN, "n_out": N_CLASSES, "hidden_layer_sizes": [16], "activation": "relu",
                        "finetune_lr": 0.05}}
    (root / "conf.yaml").write_text(yaml.safe_dump(conf))
    assert main(["train", str(root / "conf.yaml"), "--single-process", "-q", "-o", str(root / "run")]) == 0
    np.savez(data / "test.npz", x=test_x, y=test_y)
    np.savez(data / "only.npz", features=test_x)
    np.save(data / "test_x.npy", test_x)
    np.save(data / "test_y.npy", test_y)
    write_table(data / "test.parquet", test_x, test_y)
    lines = (data / "test.csv").read_text().splitlines()
    (data / "nolabel.csv").write_text("".join(line.rpartition(",")[0] + "\n" for line in lines))
    return {"dir": root / "run", "data": data, "x": test_x, "y": test_y}


def test_csv_predictions_are_the_models_forward_and_its_accuracy_evaluates(mlp_run, capsys) -> None:
    out, err = run_cli(capsys, "predict", str(mlp_run["dir"]), str(mlp_run["data"] / "test.csv"))
    header, rows = read_csv_output(out)
    assert header == ["prediction", "p0", "p1", "p2", "p3"]
    assert len(rows) == len(mlp_run["y"])
    probabilities = probabilities_of(rows, N_CLASSES)
    expected = forward_probabilities(mlp_run["dir"], mlp_run["x"])
    np.testing.assert_allclose(probabilities, expected, atol=1e-7)
    predictions = np.array([int(r["prediction"]) for r in rows])
    np.testing.assert_array_equal(predictions, expected.argmax(axis=1))
    accuracy = float((predictions == mlp_run["y"]).mean())
    assert 0.4 < accuracy < 1.0  # overlapping classes: a comparison that can fail
    assert round(accuracy, 4) == evaluated_accuracy(capsys, mlp_run["dir"])
    assert f"accuracy on INPUT's labels: {accuracy:.4f}" in err


@pytest.mark.parametrize(("name", "extra"), [
    ("nolabel.csv", ()), ("test.npz", ()), ("only.npz", ()), ("test_x.npy", ()), ("test.parquet", ()),
    ("test.csv", ("--format", "jsonl")), ("test.npz", ("--output", "out.jsonl")),
])
def test_every_tabular_input_gives_the_same_predictions(mlp_run, capsys, name, extra) -> None:
    out, err = run_cli(capsys, "predict", str(mlp_run["dir"]), str(mlp_run["data"] / name), *extra)
    if "--output" in extra:
        assert out == ""
        out = Path("out.jsonl").read_text()
    expected = forward_probabilities(mlp_run["dir"], mlp_run["x"])
    if "jsonl" in " ".join(extra):
        lines = [json.loads(line) for line in out.splitlines()]
        probabilities = np.array([line["probabilities"] for line in lines])
        assert [line["prediction"] for line in lines] == expected.argmax(axis=1).tolist()
    else:
        probabilities = probabilities_of(read_csv_output(out)[1], N_CLASSES)
    np.testing.assert_allclose(probabilities, expected, atol=1e-7)
    labelled = name not in ("nolabel.csv", "only.npz")
    assert ("accuracy on INPUT's labels" in err) == labelled


def test_a_big_input_is_read_in_chunks_and_says_how_far_it_is(mlp_run, capsys, monkeypatch) -> None:
    import deepgrid.predict
    import deepgrid.predict.inputs

    monkeypatch.setattr(deepgrid.predict.inputs, "CHUNK_ROWS", 64)
    monkeypatch.setattr(deepgrid.predict, "PROGRESS_EVERY_S", -1.0)  # a line after every chunk
    for name in ("test_x.npy", "test.parquet", "test.csv"):
        out, err = run_cli(capsys, "predict", str(mlp_run["dir"]), str(mlp_run["data"] / name), "-o", "out.csv")
        probabilities = probabilities_of(read_csv_output(Path("out.csv").read_text())[1], N_CLASSES)
        np.testing.assert_allclose(probabilities, forward_probabilities(mlp_run["dir"], mlp_run["x"]), atol=1e-7)
        if name == "test.csv":  # read in blocks of bytes (pyarrow's), its length unknown until read
            assert "predicted 300 examples of" in err, err
        else:
            assert "predicted 64 of 300 (21%)" in err and "predicted 128 of 300 (43%)" in err, err


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path) -> Path:
    """A small CNN trained (single process) on the synthetic Fashion-MNIST IDX files."""
    root = tmp_path_factory.mktemp("cnn")
    conf = {"model": "cnn", "dataset": "fashion-mnist", "batch_size": 32, "epochs": 1,
            "network": {"n_in": 784, "n_out": 10, "input_shape": [1, 28, 28], "conv_channels": [4],
                        "kernel_size": 3, "hidden_layer_sizes": [16], "activation": "relu", "optimizer": "adam",
                        "finetune_lr": 0.003}}
    (root / "cnn.yaml").write_text(yaml.safe_dump(conf))
    assert main(["train", str(root / "cnn.yaml"), "--single-process", "-q", "--data-dir", str(fashion_dir),
                 "-o", str(root / "run")]) == 0
    return root / "run"


def write_pngs(images: np.ndarray, labels: np.ndarray, folder: Path) -> None:
    from PIL import Image

    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(folder / str(label) / f"{i:04d}.png")


def test_cnn_on_idx_and_png_images(cnn_run, capsys, fashion_dir, tmp_path) -> None:
    images_file = fashion_dir / "t10k-images-idx3-ubyte"
    images, labels = read_idx(images_file), read_idx(fashion_dir / "t10k-labels-idx1-ubyte").astype(np.int64)
    expected = forward_probabilities(cnn_run, images.reshape(len(images), -1).astype(np.float32) / 255.0)

    out, err = run_cli(capsys, "predict", str(cnn_run), str(images_file))
    probabilities = probabilities_of(read_csv_output(out)[1], 10)
    np.testing.assert_allclose(probabilities, expected, atol=1e-7)
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    assert round(accuracy, 4) == evaluated_accuracy(capsys, cnn_run, "--data-dir", str(fashion_dir))
    assert f"accuracy on INPUT's labels: {accuracy:.4f}" in err  # the labels file beside it was found

    # The same images as PNG files in class folders: a `file` column says which row is which image.
    write_pngs(images, labels, tmp_path / "png")
    out, err = run_cli(capsys, "predict", str(cnn_run), str(tmp_path / "png"))
    header, rows = read_csv_output(out)
    assert header[:2] == ["file", "prediction"]
    order = [int(Path(r["file"]).stem) for r in rows]
    assert sorted(order) == list(range(len(images)))
    np.testing.assert_allclose(probabilities_of(rows, 10), expected[order], atol=1e-7)
    assert f"accuracy on INPUT's labels: {accuracy:.4f}" in err

    out, _ = run_cli(capsys, "predict", str(cnn_run), str(tmp_path / "png" / str(labels[5]) / "0005.png"),
                     "--format", "jsonl")
    line = json.loads(out)
    assert line["file"] == "0005.png" and line["prediction"] == int(expected[5].argmax())
    np.testing.assert_allclose(line["probabilities"], expected[5], atol=1e-7)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_models_compute_predicts_probabilities(mlp_run, cnn_run, capsys, fashion_dir, fmt) -> None:
    inputs = [(mlp_run["dir"], mlp_run["data"] / "test.csv", mlp_run["x"]),
              (cnn_run, fashion_dir / "t10k-images-idx3-ubyte",
               read_idx(fashion_dir / "t10k-images-idx3-ubyte").reshape(-1, 784).astype(np.float32) / 255.0)]
    for model_dir, data, x in inputs:
        out, _ = run_cli(capsys, "predict", str(model_dir), str(data))
        predicted = probabilities_of(read_csv_output(out)[1], 10 if model_dir == cnn_run else N_CLASSES)
        out, _ = run_cli(capsys, "export", str(model_dir), "--format", fmt, "--json")
        result = json.loads(out.strip().splitlines()[-1])
        path = Path(result["output"])
        assert path == model_dir / ("model.onnx" if fmt == "onnx" else "model.pt") and result["checked"]
        if fmt == "onnx":
            onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime (the export extra) runs the ONNX file")
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(["probabilities"], {"x": x})[0]
        else:
            with torch.no_grad():
                got = torch.jit.load(str(path))(torch.from_numpy(x)).numpy()
        assert got.shape == predicted.shape  # the whole test set in one batch: the batch axis is free
        np.testing.assert_allclose(got, predicted, atol=1e-5)


def test_export_to_a_chosen_file_and_the_ways_it_fails(mlp_run, capsys, tmp_path) -> None:
    out, _ = run_cli(capsys, "export", str(mlp_run["dir"]), "--format", "torchscript", "-o", "m/exported.pt")
    assert Path("m/exported.pt").is_file()
    code = main(["export", str(mlp_run["dir"]), "--format", "torchscript", "-o", "m"])
    assert_user_error(code, capsys.readouterr().err, "is a directory")
    code = main(["export", str(tmp_path / "nope"), "--format", "onnx"])
    assert_user_error(code, capsys.readouterr().err, "nope")
    with pytest.raises(SystemExit):
        main(["export", str(mlp_run["dir"]), "--format", "tflite"])


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_a_users_torch_module_exports_from_python_not_from_its_files(capsys, tmp_path) -> None:
    from torch import nn

    from deepgrid.export import export_model
    from deepgrid.models.module import TorchModel

    TorchModel(nn.Sequential(nn.Linear(N_IN, 8), nn.ReLU(), nn.Linear(8, 3)), n_in=N_IN, n_out=3).save("mine")
    for command in (["export", "mine", "--format", "torchscript"], ["predict", "mine", "nothing.csv"]):
        code = main(command)
        assert_user_error(code, capsys.readouterr().err, "mine")  # models.files says how to load it
    model = TorchModel.load("mine", module=nn.Sequential(nn.Linear(N_IN, 8), nn.ReLU(), nn.Linear(8, 3)))
    assert export_model(model, tmp_path / "mine.pt", "torchscript")
    x = torch.rand(5, N_IN)
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(tmp_path / "mine.pt"))(x).numpy(),
                                   torch.softmax(model.forward(x), dim=1).numpy(), atol=1e-6)


USER_NET = """\
from torch import nn


class Net(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, 8), nn.ReLU(), nn.Linear(8, n_out))

    def forward(self, x):
        return self.body(x.{flatten})
"""


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_users_module_by_name_exports_when_its_batch_size_is_free(mlp_run, capsys, tmp_path) -> None:
    """`model: module:Class` is rebuilt from model.json; a forward that fixes the batch size (len(x)
    in a view) is caught by running the exported file on another batch size: one line, no file."""
    conf = yaml.safe_load((mlp_run["dir"] / "model.json").read_text())["conf"]
    for name, flatten, exports in (("free_batch_net", "reshape(x.shape[0], -1)", True),
                                   ("fixed_batch_net", "view(len(x), -1)", False)):
        (tmp_path / f"{name}.py").write_text(USER_NET.format(flatten=flatten))
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**conf, "model": f"{name}:Net", "epochs": 1}))
        run_cli(capsys, "train", f"{name}.yaml", "--single-process", "-o", name)
        out, _ = run_cli(capsys, "predict", name, str(mlp_run["data"] / "test.csv"))
        predicted = probabilities_of(read_csv_output(out)[1], N_CLASSES)
        np.testing.assert_allclose(predicted, forward_probabilities(Path(name), mlp_run["x"]), atol=1e-7)
        for fmt in ("onnx", "torchscript"):
            code = main(["export", name, "--format", fmt])
            err = capsys.readouterr().err
            if exports:
                assert code == 0, err
            else:
                assert_user_error(code, err, "fixes the batch size", "len(x)")
                assert {p.name for p in Path(name).glob("model.*")} == {"model.json"}  # no .onnx, no .pt


def test_bad_inputs_are_one_line(mlp_run, capsys, tmp_path) -> None:
    data = mlp_run["data"]
    (tmp_path / "short.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "broken.png").write_text("not an image")
    (tmp_path / "ragged.csv").write_text(",".join(f"f{j}" for j in range(N_IN)) + "\n1,2\n")
    (tmp_path / "nan.csv").write_text(",".join(f"f{j}" for j in range(N_IN)) + "\n" + ",".join(["1"] * (N_IN - 1)) + ",\n")
    np.save(tmp_path / "wide.npy", np.zeros((5, N_IN + 1), dtype=np.float32))
    cases = [
        (["short.csv"], ("short.csv", "3 features per example", "takes 16")),
        (["wide.npy"], ("17 features per example",)),
        (["garbage.npz"], ("garbage.npz", "not a readable .npz file")),
        (["notes.txt"], ("notes.txt", "unknown input format", "--dataset")),
        (["missing.csv"], ("missing.csv", "no such file")),
        (["broken.png"], ("broken.png", "not a readable image")),
        (["ragged.csv"], ("ragged.csv", "one value per header column")),
        (["nan.csv"], ("nan.csv", "example 0", "missing")),
        (["notes.txt", "--dataset", "parquet"], ("notes.txt", "not a readable parquet file")),
        ([str(data / "test.csv"), "-o", str(tmp_path)], ("is a directory",)),
    ]
    for args, fragments in cases:
        code = main(["predict", str(mlp_run["dir"]), *args])
        assert_user_error(code, capsys.readouterr().err, *fragments)
    # A failure with --output leaves no file behind (it is written whole or not at all).
    code = main(["predict", str(mlp_run["dir"]), "short.csv", "-o", "never.csv"])
    assert code == 2 and not Path("never.csv").exists()


def test_the_command_line_stays_light() -> None:
    """`deepgrid --help` imports the predict module: it must not pull in torch or NumPy."""
    code = "import sys, deepgrid.predict; print('torch' in sys.modules, 'numpy' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.split() == ["False", "False"]


def test_export_formats_match() -> None:
    from deepgrid.export import FORMATS
    from deepgrid.predict import EXPORT_FORMATS

    assert tuple(FORMATS) == EXPORT_FORMATS
