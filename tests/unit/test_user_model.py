"""A user's own torch.nn.Module named in a Conf (``model: pkg.module:ClassOrFactory``) or registered by
an installed package (entry-point group ``deepgrid.models``): built, checked, saved and loaded back,
and trained from the CLI in one process. Every mistake is one ConfigError line.

Each test writes its module under a name of its own (Python caches imported modules by name).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from deepgrid import Conf
from deepgrid.cli import main
from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.errors import ConfigError
from deepgrid.models import registry
from deepgrid.models.base import Model
from deepgrid.models.module import TorchModel
from deepgrid.models.user import UserModel
from tests.helpers import assert_user_error
from tests.source_files import N_CLASSES, N_IN, write_source
from tests.user_models import write_module

NETWORK = {"n_in": N_IN, "n_out": N_CLASSES}

@pytest.fixture(autouse=True)
def clean_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test adds to sys.path or PYTHONPATH goes again after it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's module on the Python path (as PYTHONPATH or an installed package would put it)."""
    name = write_module(tmp_path / "code")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    return name


def build(spec: str, **network: object) -> Model:
    conf = Conf.from_dict({"model": spec, "network": {**NETWORK, **network}})
    return registry.get(conf.model)(conf.network)


def assert_one_line_error(error: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(error.value)
    assert isinstance(error.value, ConfigError) and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# -- the configuration ---------------------------------------------------------------------------


def test_an_import_path_is_kept_as_written_and_model_args_live_in_the_network():
    conf = Conf.from_dict({"model": "My.Pkg:SmallMLP", "model_args": {"hidden": 64}, "network": NETWORK})
    assert conf.model == "My.Pkg:SmallMLP"  # Python names are case-sensitive: not lowered like "MLP"
    assert conf.model_args == {"hidden": 64} and conf.network.model_args == {"hidden": 64}
    again = Conf.from_dict(json.loads(json.dumps(conf.to_dict())))
    assert again == conf and yaml.safe_load(conf.to_yaml())["network"]["model_args"] == {"hidden": 64}
    assert Conf.from_dict({"model": "a.b:C", "network": {"model_args": {"x": [1, 2]}}}).model_args == {"x": [1, 2]}
    assert NeuralNetConfiguration.builder().model_args({"hidden": 3}).build().model_args == {"hidden": 3}


@pytest.mark.parametrize("data, fragment", [
    ({"model": "pkg.module"}, "pkg.module:ClassOrFactory"),  # no colon: an unknown name
    ({"model": "pkg:mod:Class"}, "one colon"),
    ({"model": "pkg.mod:Class", "model_args": [1, 2]}, "model_args"),
    ({"model": "pkg.mod:Class", "model_args": {"hidden": {1, 2}}}, "JSON values"),
    ({"model": "pkg.mod:Class", "model_args": {"hidden": 1}, "network": {"model_args": {"hidden": 2}}}, "twice"),
])
def test_a_bad_model_or_model_args_is_one_line(data: dict, fragment: str):
    with pytest.raises(ConfigError) as error:
        Conf.from_dict(data)
    assert_one_line_error(error, fragment)


# -- building ------------------------------------------------------------------------------------


def test_a_class_gets_n_in_n_out_and_model_args_and_is_seeded(user_module: str):
    model = build(f"{user_module}:SmallMLP", model_args={"hidden": 12})
    assert isinstance(model, UserModel) and isinstance(model, TorchModel)
    assert model.name == f"{user_module}:SmallMLP"
    assert model.n_params == (N_IN + 1) * 12 + (12 + 1) * N_CLASSES
    again = build(f"{user_module}:SmallMLP", model_args={"hidden": 12})
    # Built after Model.__init__ seeds torch: the master and every worker start from the same weights.
    np.testing.assert_array_equal(model.get_flat_params(), again.get_flat_params())
    assert model.predict_proba(np.zeros((3, N_IN), dtype=np.float32)).shape == (3, N_CLASSES)


def test_a_factory_is_called_with_model_args_only(user_module: str):
    model = build(f"{user_module}:make_mlp", model_args={"hidden": 5})
    assert model.n_params == (16 + 1) * 5 + (5 + 1) * 4


def test_a_module_with_buffers_is_warned_of_once(user_module: str, caplog: pytest.LogCaptureFixture):
    with caplog.at_level("WARNING", logger="deepgrid"):
        build(f"{user_module}:make_batchnorm")
        build(f"{user_module}:make_batchnorm")
    warnings = [r.getMessage() for r in caplog.records if "buffers" in r.getMessage()]
    assert len(warnings) == 1 and "1.running_mean" in warnings[0] and "LayerNorm" in warnings[0]


def test_saved_with_its_import_path_and_args_and_loaded_back_without_a_pickle(user_module: str, tmp_path: Path):
    model = build(f"{user_module}:SmallMLP", model_args={"hidden": 12})
    model.save(tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "model.json").read_text())
    assert meta["model"] == meta["import_path"] == f"{user_module}:SmallMLP"
    assert meta["network"]["model_args"] == {"hidden": 12}
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["model.json", "weights.safetensors"]
    for loaded in (Model.load(tmp_path / "saved"), TorchModel.load(tmp_path / "saved")):
        assert loaded.name == model.name
        np.testing.assert_array_equal(loaded.get_flat_params(), model.get_flat_params())


@pytest.mark.parametrize("attribute, network, fragments", [
    ("Missing", {}, ("has no attribute 'Missing'",)),
    ("SmallMPL", {}, ("Did you mean 'SmallMLP'?",)),
    ("NotAModule", {}, ("not a torch.nn.Module",)),
    ("INSTANCE", {}, ("instance", "name its class")),
    ("torch", {}, ("module object",)),
    ("make_broken", {}, ("make_broken(", "raised ValueError: hidden must be even", "model_args")),
    ("make_nothing", {}, ("returned a value of type int", "not a torch.nn.Module")),
    ("make_frozen", {}, ("no trainable parameters",)),
    ("SmallMLP", {"model_args": {"hiden": 3}}, ("unexpected keyword argument 'hiden'",)),
    ("make_mlp", {"n_in": 20}, ("network.n_in=20", "mat1 and mat2")),
    ("make_mlp", {"n_out": 7}, ("shape (2, 4)", "expected (2, 7)", "network.n_out=7")),
])
def test_each_mistake_in_the_users_model_is_one_line(user_module: str, attribute: str, network: dict,
                                                     fragments: tuple[str, ...]):
    with pytest.raises(ConfigError) as error:
        build(f"{user_module}:{attribute}", **network)
    assert_one_line_error(error, f"{user_module}:{attribute}", *fragments)


def test_a_missing_module_or_one_that_fails_to_import_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        build("no_such_package.nets:Net")
    assert_one_line_error(error, "no module named 'no_such_package.nets'", "PYTHONPATH")
    broken = write_module(tmp_path / "code", "import torch\nimport no_such_dependency_xyz\n")
    failing = write_module(tmp_path / "code", "raise RuntimeError('GPU required')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    with pytest.raises(ConfigError) as error:
        build(f"{broken}:Net")
    assert_one_line_error(error, f"importing {broken!r} raised ModuleNotFoundError", "no_such_dependency_xyz")
    with pytest.raises(ConfigError) as error:
        build(f"{failing}:Net")
    assert_one_line_error(error, "raised RuntimeError: GPU required")


def test_the_current_directory_is_searched_as_python_m_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name = write_module(tmp_path)
    monkeypatch.chdir(tmp_path)
    # The `deepgrid` script's path holds neither the current directory nor "".
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert build(f"{name}:SmallMLP").n_params > 0
    # The workers started from here on inherit PYTHONPATH and find it too.
    assert str(tmp_path.resolve()) in os.environ["PYTHONPATH"].split(os.pathsep)


# -- an installed package's entry point ------------------------------------------------------------


def install_entry_point(site: Path, entry: str, dist: str = "tiny_models") -> None:
    """A distribution's metadata as pip leaves it: importlib.metadata finds it on sys.path."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[deepgrid.models]\n{entry}\n")


def test_an_entry_point_names_a_model(user_module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    install_entry_point(tmp_path / "site", f"tinynet = {user_module}:SmallMLP")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    conf = Conf.from_dict({"model": "tinynet", "model_args": {"hidden": 6}, "network": NETWORK})
    assert conf.model == "tinynet"
    model = registry.get(conf.model)(conf.network)
    assert model.name == "tinynet" and model.import_path == f"{user_module}:SmallMLP"
    model.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model.json").read_text())["model"] == "tinynet"
    assert Model.load(tmp_path / "saved").n_params == model.n_params
    with pytest.raises(ConfigError) as error:
        Conf(model="tinynet2")
    assert_one_line_error(error, "'tinynet'", "Did you mean 'tinynet'?")


def test_a_name_two_packages_register_is_refused(user_module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    install_entry_point(tmp_path / "site", f"twice = {user_module}:SmallMLP", "first_models")
    install_entry_point(tmp_path / "site", f"twice = {user_module}:make_mlp", "second_models")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ConfigError) as error:
        registry.get("twice")
    assert_one_line_error(error, "several installed packages", f"{user_module}:make_mlp")


# -- the CLI, in one process -------------------------------------------------------------------------


def test_cli_trains_an_entry_point_model_and_evaluates_it(user_module: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    install_entry_point(tmp_path / "site", f"tinynet = {user_module}:SmallMLP")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    fields = write_source("npz", tmp_path / "data")
    conf = {**fields, "model": "mlp", "model_args": {"hidden": 16}, "batch_size": 16, "epochs": 3,
            "network": {**fields["network"], "optimizer": "adam", "finetune_lr": 0.01}}
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(conf))
    assert main(["train", "conf.yaml", "--model", "tinynet", "--single-process", "-o", "run", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["evaluation"]["accuracy"] > 0.9
    assert json.loads((tmp_path / "run" / "model.json").read_text())["model"] == "tinynet"
    assert main(["evaluate", "run", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["test_accuracy"] == round(trained["evaluation"]["accuracy"], 4)


def test_cli_trains_a_factory_and_says_in_one_line_what_is_wrong(user_module: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    fields = write_source("npz", tmp_path / "data", n_train=40, n_test=20)
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump({**fields, "model_args": {"hidden": 4}, "batch_size": 8}))
    code = main(["train", "conf.yaml", "--model", f"{user_module}:make_mlp", "--single-process", "-o", "run"])
    assert code == 0  # make_mlp's 16 -> 4 fits the data: 16 features, 4 classes
    capsys.readouterr()
    code = main(["train", "conf.yaml", "--model", f"{user_module}:Nope", "--single-process", "-o", "run"])
    assert_user_error(code, capsys.readouterr().err, f"{user_module}:Nope", "has no attribute 'Nope'")
