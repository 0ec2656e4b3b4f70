"""Model files: what save writes, every way a saved model can be damaged, and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deepgrid.checkpoint import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, atomic_write, read_model_meta
from deepgrid.errors import DeepgridError, ModelError
from deepgrid.models.base import Model
from deepgrid.models.mlp import MLP


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.fixture
def saved(tmp_path) -> Path:
    model = MLP(n_in=20, hidden_layer_sizes=(8,), seed=1)
    return model.save(tmp_path / "model", extra={"test_accuracy": 0.5})


def rewrite_meta(directory: Path, **changes) -> None:
    meta = json.loads((directory / CONFIG_FILE).read_text())
    meta.update(changes)
    (directory / CONFIG_FILE).write_text(json.dumps(meta))


def test_save_writes_json_and_safetensors_only(saved):
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temporary files left
    meta = read_model_meta(saved)
    assert meta["format"] == FORMAT_VERSION and meta["model"] == "mlp" and meta["test_accuracy"] == 0.5
    assert meta["network"]["hidden_layer_sizes"] == [8]
    loaded = Model.load(saved)
    np.testing.assert_array_equal(loaded.get_flat_params(), MLP(n_in=20, hidden_layer_sizes=(8,), seed=1)
                                  .get_flat_params())


def test_save_overwrites_an_earlier_save(saved):
    other = MLP(n_in=20, hidden_layer_sizes=(8,), seed=2)
    other.save(saved)
    np.testing.assert_array_equal(Model.load(saved).get_flat_params(), other.get_flat_params())


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError) as error:
        Model.load(tmp_path / "nope")
    assert_one_line(error, "nope", "does not exist")


def test_directory_without_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as error:
        Model.load(tmp_path / "empty")
    assert_one_line(error, "not a saved model", CONFIG_FILE, WEIGHTS_FILE)


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_directory_missing_one_file(saved, missing):
    (saved / missing).unlink()
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, "not a saved model")


@pytest.mark.parametrize("text", ["{\"model\": \"mlp\", ", "not json at all", b"\xff\xfe\x00{"],
                         ids=["truncated", "garbage", "binary"])
def test_damaged_model_json(saved, text):
    path = saved / CONFIG_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, str(path), "damaged")


@pytest.mark.parametrize("content", ["[1, 2]", "{\"model\": \"mlp\"}", "{\"network\": {}}"])
def test_model_json_without_entries(saved, content):
    (saved / CONFIG_FILE).write_text(content)
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, "damaged", "`model`", "`network`")


def test_model_json_with_invalid_network(saved):
    meta = json.loads((saved / CONFIG_FILE).read_text())
    rewrite_meta(saved, network={**meta["network"], "hidden_layer_sizes": [0]})
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, "invalid network configuration", "hidden_layer_sizes")


def test_model_json_naming_an_unknown_kind(saved):
    rewrite_meta(saved, model="resnet")
    with pytest.raises(DeepgridError) as error:  # ModelError would be apter: reported
        Model.load(saved)
    assert_one_line(error, "resnet")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "header only"])
def test_damaged_weights(saved, damage):
    path = saved / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes({
        "truncated": data[: len(data) // 2],
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
        "header only": data[:8],
    }[damage])
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, str(path), "damaged")


def test_weights_that_do_not_fit_the_network(saved):
    meta = json.loads((saved / CONFIG_FILE).read_text())
    rewrite_meta(saved, network={**meta["network"], "hidden_layer_sizes": [16]})
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, WEIGHTS_FILE, "does not fit")


def test_weights_with_missing_tensors(saved):
    save_file({"0.weight": torch.zeros(8, 20)}, str(saved / WEIGHTS_FILE))
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, "does not fit")


def test_weights_of_another_kind(saved, tmp_path):
    from deepgrid.models import registry

    if "rbm" not in registry.names():
        pytest.skip("no rbm model registered")
    rbm = registry.get("rbm")(n_in=20, hidden_layer_sizes=(8,))
    rbm.save(tmp_path / "rbm")
    (saved / WEIGHTS_FILE).write_bytes((tmp_path / "rbm" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, "does not fit")


# -- atomic_write ----------------------------------------------------------------------------------


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write(target, lambda p: p.write_text("first"))
    atomic_write(target, lambda p: p.write_text("second"))
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def fail(path: Path) -> None:
        path.write_text("half of the ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]  # the temporary file is gone


def test_failed_save_keeps_the_previous_model(saved, monkeypatch):
    import deepgrid.checkpoint as checkpoint

    before = Model.load(saved).get_flat_params()

    def broken_save_file(state, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save_file)
    with pytest.raises(OSError):
        MLP(n_in=20, hidden_layer_sizes=(8,), seed=9).save(saved)
    np.testing.assert_array_equal(Model.load(saved).get_flat_params(), before)
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
