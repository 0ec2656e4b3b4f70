"""NeuralNetConfiguration and Conf: building, round trips, freezing, masking, and every kind of bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from deepgrid import Conf, ConfigError, NeuralNetConfiguration
from deepgrid.models.registry import names


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(error.value)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# -- building ------------------------------------------------------------------------------


def test_builder_equals_keywords():
    built = (NeuralNetConfiguration.builder().n_in(784).n_out(10).hidden_layer_sizes(500, 250, 100)
             .k(2).activation("relu").finetune_lr(0.01).seed(7).build())
    keywords = NeuralNetConfiguration(n_in=784, n_out=10, hidden_layer_sizes=(500, 250, 100), k=2,
                                      activation="relu", finetune_lr=0.01, seed=7)
    assert built == keywords
    assert built.hidden_layer_sizes == (500, 250, 100)
    assert built != NeuralNetConfiguration(n_in=784, n_out=10, hidden_layer_sizes=(500, 250, 100), k=1)


def test_builder_single_size_and_normalised_values():
    conf = NeuralNetConfiguration.builder().hidden_layer_sizes(64).activation("ReLU").build()
    assert conf.hidden_layer_sizes == (64,)
    assert conf.activation == "relu"
    assert isinstance(NeuralNetConfiguration(finetune_lr=1).finetune_lr, float)


def test_per_layer_overrides_reach_layer():
    conf = (NeuralNetConfiguration.builder().n_in(20).hidden_layer_sizes(16, 8, 4)
            .layer(0, visible_unit="gaussian", k=3).layer(2, dropout=0.5).build())
    first, second, third = conf.layer(0), conf.layer(1), conf.layer(2)
    assert (first.visible_unit, first.k, first.n_in, first.n_out) == ("gaussian", 3, 20, 16)
    # Layers above the first see hidden probabilities: binary unless overridden.
    assert (second.visible_unit, second.k, second.n_in, second.n_out) == ("binary", 1, 16, 8)
    assert (third.dropout, third.n_in, third.n_out) == (0.5, 8, 4)
    assert first.dropout == 0.0
    same = NeuralNetConfiguration(n_in=20, hidden_layer_sizes=(16, 8, 4),
                                  layers={0: {"visible_unit": "gaussian", "k": 3}, 2: {"dropout": 0.5}})
    assert conf == same


def test_frozen():
    conf = NeuralNetConfiguration()
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.n_in = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        conf.layers[0] = {"k": 2}  # type: ignore[index]
    run = Conf()
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.batch_size = 5  # type: ignore[misc]


def test_replace_validates_again():
    conf = NeuralNetConfiguration().replace(n_in=100)
    assert conf.n_in == 100
    with pytest.raises(ConfigError):
        conf.replace(n_in=0)
    assert Conf().replace(batch_size=None, epochs=3).epochs == 3  # None means "not given"
    with pytest.raises(ConfigError, match="Did you mean `batch_size`"):
        Conf().replace(batchsize=3)


# -- round trips -----------------------------------------------------------------------------


def rich_network() -> NeuralNetConfiguration:
    return (NeuralNetConfiguration.builder().n_in(50).n_out(5).hidden_layer_sizes(40, 30).activation("tanh")
            .optimizer("adam").dropout(0.1).input_shape(2, 5, 5).conv_channels(3, 6)
            .layer(0, visible_unit="gaussian", k=2).layer(1, pretrain_lr=0.5).build())


def test_network_dict_json_yaml_round_trips():
    conf = rich_network()
    assert NeuralNetConfiguration.from_dict(conf.to_dict()) == conf
    assert NeuralNetConfiguration.from_dict(json.loads(json.dumps(conf.to_dict()))) == conf
    assert NeuralNetConfiguration.from_dict(yaml.safe_load(yaml.safe_dump(conf.to_dict()))) == conf
    assert NeuralNetConfiguration.from_config(conf.get_config()) == conf


def test_conf_dict_json_yaml_round_trips():
    conf = Conf(model="mlp", network=rich_network(), batch_size=32, epochs=3, workers=2, train_limit=100,
                validation_fraction=0.1, patience=2, state_url="redis://:pw@host:6379/0")
    assert Conf.from_dict(conf.to_dict()) == conf
    assert Conf.from_dict(json.loads(conf.to_json())) == conf
    assert Conf.from_dict(yaml.safe_load(conf.to_yaml())) == conf


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_conf_save_load(tmp_path, suffix):
    conf = Conf(model="cnn", network=rich_network(), epochs=2, data_dir="/data")
    path = tmp_path / f"run{suffix}"
    conf.save(path)
    text = path.read_text()
    if suffix == ".json":
        assert json.loads(text)["model"] == "cnn"
    else:
        assert yaml.safe_load(text)["model"] == "cnn" and not text.lstrip().startswith("{")
    assert Conf.load(path) == conf


def test_conf_load_partial_file_takes_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: mlp\nnetwork:\n  hidden_layer_sizes: [32]\n  layers:\n    0: {dropout: 0.2}\n")
    conf = Conf.load(path)
    assert conf.model == "mlp" and conf.batch_size == Conf().batch_size
    assert conf.network.hidden_layer_sizes == (32,) and conf.network.layer(0).dropout == 0.2


def test_finetune_epochs_falls_back_to_network():
    assert Conf(network=NeuralNetConfiguration(finetune_epochs=7)).finetune_epochs == 7
    assert Conf(network=NeuralNetConfiguration(finetune_epochs=7), epochs=2).finetune_epochs == 2


def test_describe_masks_passwords():
    conf = Conf(state_url="redis://:secret@host:6379/0", registry_url="zk://user:hunter2@zk:2181")
    text = conf.describe()
    assert "secret" not in text and "hunter2" not in text
    assert "redis://:***@host:6379/0" in text and "zk://user:***@zk:2181" in text
    assert "secret" in conf.to_yaml()  # only the printed form is masked


@pytest.mark.parametrize("password", ["p@ss", "a@b@c", "sl/ash@at", "plain"])
def test_passwords_with_at_signs_are_masked_whole(password):
    """Issue 8, defect 6: the masking stopped at a password's first '@' and printed the rest."""
    from deepgrid.config.conf import mask_secrets

    url = f"redis://user:{password}@redis.lan:6379/0"
    conf = Conf(state_url=url)
    for text in (conf.describe(), json.dumps(conf.to_dict(mask_secrets=True)), json.dumps(conf.public_dict()),
                 mask_secrets(f"state_url: {url}\njob_name: x")):
        assert "redis://user:***@redis.lan:6379/0" in text, text
        assert password not in text and f"{password.rpartition('@')[2]}@redis.lan" not in text, text
    assert conf.to_dict()["state_url"] == url  # the Conf itself keeps the real one


# -- job names and network sizes (issue 8, defect 8) -----------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "a\\b", "two words", "tab\tname", "a:b",
                                  "star*", "", "x" * 101, "nul\x00"])
def test_a_job_name_that_could_leave_its_folder_or_break_keys_is_refused(name):
    """Defect 8: job_name '../x' reached the file system (runs/../x) before anything refused it."""
    with pytest.raises(ConfigError) as error:
        Conf(job_name=name)
    assert_one_line(error, "`job_name`")
    with pytest.raises(ConfigError):
        Conf().replace(job_name=name)


@pytest.mark.parametrize("name", ["fmnist-dbn", "run_2.v1", "jöb-ünicode", "x" * 100])
def test_good_job_names(name):
    assert Conf(job_name=name).job_name == name


@pytest.mark.parametrize("sizes", [
    {"hidden_layer_sizes": (10**9,)},
    {"n_in": 10**12},
    {"hidden_layer_sizes": (50_000, 50_000)},
    {"conv_channels": (10**6, 10**6)},
    {"input_shape": (1, 10**6, 10**6)},
])
def test_absurd_layer_sizes_are_refused_before_anything_is_allocated(sizes):
    """Defect 8: a network of absurd size failed deep inside torch (or exhausted memory) instead of
    being refused at once."""
    with pytest.raises(ConfigError) as error:
        NeuralNetConfiguration(**sizes)
    assert_one_line(error, "parameters", "smaller layer sizes")


def test_large_but_sane_networks_pass():
    assert NeuralNetConfiguration(n_in=784, hidden_layer_sizes=(4096, 4096, 4096)).estimated_parameters() < 2**31


# -- bad values: one line naming the field and the value ------------------------------------------

BAD_NETWORK = [
    ("n_in", 0),
    ("n_in", -5),
    ("n_in", 2.5),
    ("n_in", True),
    ("n_out", 0),
    ("hidden_layer_sizes", (0,)),
    ("hidden_layer_sizes", (10, -1)),
    ("hidden_layer_sizes", ()),
    ("k", 0),
    ("pretrain_lr", 0.0),
    ("finetune_lr", -0.1),
    ("finetune_lr", float("nan")),
    ("finetune_epochs", 0),
    ("pretrain_epochs", -1),
    ("momentum", 1.5),
    ("l2", -1.0),
    ("dropout", 1.0),
    ("kernel_size", 0),
    ("activation", "relux"),
    ("optimizer", "adamw"),
    ("persistent", "yes"),
]


@pytest.mark.parametrize(("field", "value"), BAD_NETWORK, ids=[f"{f}={v!r}" for f, v in BAD_NETWORK])
def test_bad_network_value(field, value):
    with pytest.raises(ConfigError) as error:
        NeuralNetConfiguration(**{field: value})
    assert_one_line(error, f"`{field}`", f"{field}={value!r}")
    with pytest.raises(ConfigError):  # the builder checks the same way
        getattr(NeuralNetConfiguration.builder(), field)(value).build()


BAD_CONF = [
    ("batch_size", 0),
    ("batch_size", -64),
    ("epochs", 0),
    ("epochs", -1),
    ("workers", 0),
    ("averaging_frequency", 0),
    ("train_limit", 0),
    ("validation_fraction", 0.9),
    ("patience", -1),
    ("dataset", "cifar"),
    ("data_feed", "nfs"),
]


@pytest.mark.parametrize(("field", "value"), BAD_CONF, ids=[f"{f}={v!r}" for f, v in BAD_CONF])
def test_bad_conf_value(field, value):
    with pytest.raises(ConfigError) as error:
        Conf(**{field: value})
    assert_one_line(error, f"`{field}`", f"{field}={value!r}")


def test_choice_suggests_the_close_one():
    with pytest.raises(ConfigError) as error:
        NeuralNetConfiguration(activation="relux")
    assert_one_line(error, "Did you mean 'relu'?")


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError) as error:
        Conf(model="resnet")
    message = assert_one_line(error, "`model`", "resnet")
    for name in names():
        assert repr(name) in message
    assert "mlp" in names() and "cnn" in names()


def test_model_name_is_case_insensitive():
    assert Conf(model="MLP").model == "mlp"


def test_unknown_top_level_key_suggests():
    with pytest.raises(ConfigError) as error:
        Conf.from_dict({"model": "mlp", "batchsize": 32})
    assert_one_line(error, "`batchsize`", "Did you mean `batch_size`?")


def test_unknown_network_key_suggests():
    with pytest.raises(ConfigError) as error:
        Conf.from_dict({"model": "mlp", "network": {"hiden_layer_sizes": [10]}})
    assert_one_line(error, "`hiden_layer_sizes`", "network", "Did you mean `hidden_layer_sizes`?")


def test_unknown_builder_method_suggests():
    with pytest.raises(ConfigError) as error:
        NeuralNetConfiguration.builder().hiden_layer_sizes(10)
    assert_one_line(error, "`hiden_layer_sizes`", "Did you mean `hidden_layer_sizes`?")


def test_bad_layer_overrides():
    with pytest.raises(ConfigError) as error:
        NeuralNetConfiguration.builder().hidden_layer_sizes(10, 5).layer(0, visble_unit="gaussian").build()
    assert_one_line(error, "`visble_unit`", "layers.0", "Did you mean `visible_unit`?")
    with pytest.raises(ConfigError) as error:
        NeuralNetConfiguration(hidden_layer_sizes=(10, 5), layers={2: {"k": 2}})
    assert_one_line(error, "`layers`", "from 0 to 1")
    with pytest.raises(ConfigError) as error:
        NeuralNetConfiguration(hidden_layer_sizes=(10,), layers={0: {"k": 0}})
    assert_one_line(error, "`layers.0.k`", "layers.0.k=0")
    with pytest.raises(ConfigError):  # n_in is a property of the whole network, not of a layer
        NeuralNetConfiguration(hidden_layer_sizes=(10,), layers={0: {"n_in": 3}})


def test_bad_input_shape():
    with pytest.raises(ConfigError) as error:
        NeuralNetConfiguration(input_shape=(28, 28))
    assert_one_line(error, "`input_shape`")


def test_network_must_be_a_mapping():
    with pytest.raises(ConfigError) as error:
        Conf.from_dict({"network": [1, 2]})
    assert_one_line(error, "`network`")


# -- bad files ------------------------------------------------------------------------------------


def test_malformed_yaml_says_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: mlp\nnetwork:\n  hidden_layer_sizes: [10, 20\nbatch_size: 3\n")
    with pytest.raises(ConfigError) as error:
        Conf.load(path)
    assert_one_line(error, str(path), "malformed YAML", "line ", "column ")


def test_malformed_json_says_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "model": "mlp",\n  "epochs": 3,,\n}\n')
    with pytest.raises(ConfigError) as error:
        Conf.load(path)
    assert_one_line(error, str(path), "malformed JSON", "line 3", "column ")


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- mlp\n")
    with pytest.raises(ConfigError) as error:
        Conf.load(path)
    assert_one_line(error, "mapping")


def test_missing_conf_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as error:
        Conf.load(path)
    assert_one_line(error, str(path), "does not exist")


def test_bad_value_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: mlp\nnetwork:\n  finetune_lr: -1\n")
    with pytest.raises(ConfigError) as error:
        Conf.load(path)
    assert_one_line(error, "`finetune_lr`", "finetune_lr=-1")
