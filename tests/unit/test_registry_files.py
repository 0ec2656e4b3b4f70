"""The file registry (the default), URL parsing, credentials, and the CLI on a directory registry.

No ZooKeeper here (tests/integration/test_registry.py has the real one): everything
below runs on a temporary directory in well under a second per test.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import pytest

import deepgrid.distributed.host as host_module
from deepgrid.cli import main, publish_master
from deepgrid.config.conf import Conf
from deepgrid.errors import ClusterError, ConfigError
from deepgrid.registry import ConfigRegistry, find_master, registry_from_url, resolve_registry_url
from deepgrid.registry.files import FileConfigRegistry
from deepgrid.registry.zookeeper import parse_zk_url, zk_credentials
from tests.helpers import assert_user_error as user_error
from tests.helpers import isolate_registry_env

CONF_YAML = """\
model: mlp
job_name: fmnist-mlp
batch_size: 32
state_url: redis://:hunter2@cache:6379/0
network:
  hidden_layer_sizes: [16]
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    isolate_registry_env(tmp_path, monkeypatch)


@pytest.fixture
def registry(tmp_path) -> FileConfigRegistry:
    with FileConfigRegistry(tmp_path / "reg") as reg:
        yield reg


def conf(**changes) -> Conf:
    return Conf(model="mlp", **changes)




# -- the registry itself -------------------------------------------------------------------
def test_round_trip(registry, tmp_path):
    assert isinstance(registry, ConfigRegistry)
    assert registry.list() == []
    registry.register("b-job", conf(job_name="b-job", engine_address="10.0.0.5:6380", batch_size=16))
    registry.register("a-job", conf(job_name="a-job"))
    assert registry.list() == ["a-job", "b-job"]
    back = registry.retrieve("b-job")
    assert back == conf(job_name="b-job", engine_address="10.0.0.5:6380", batch_size=16)
    # JSON of Conf.to_dict(), never pickle; and no temporary files left behind
    assert json.loads((tmp_path / "reg" / "b-job.json").read_text())["engine_address"] == "10.0.0.5:6380"
    assert sorted(p.name for p in (tmp_path / "reg").iterdir()) == ["a-job.json", "b-job.json"]


def test_register_replaces(registry):
    registry.register("j", conf(batch_size=8))
    registry.register("j", conf(batch_size=9))
    assert registry.retrieve("j").batch_size == 9 and registry.list() == ["j"]


@pytest.mark.parametrize("form", ["plain", "file-url"])
def test_url_forms_and_default(tmp_path, form):
    directory = tmp_path / "by-url"
    url = str(directory) if form == "plain" else f"file://{directory}"
    with registry_from_url(url) as reg:
        reg.register("j", conf())
        assert reg.url == f"file://{directory}"
    assert (directory / "j.json").is_file()
    with registry_from_url(None) as reg:  # default: $DEEPGRID_HOME/registry
        reg.register("k", conf())
    assert (tmp_path / "home" / "registry" / "k.json").is_file()


def test_watch_sees_a_change(registry):
    registry.register("j", conf(engine_address="127.0.0.1:6380"))
    seen: list[Conf] = []
    changed = threading.Event()
    registry.watch("j", lambda c: (seen.append(c), changed.set()))
    registry.register("j", conf(engine_address="127.0.0.1:7000"))
    assert changed.wait(timeout=10), "the watch did not fire"
    assert seen[0].engine_address == "127.0.0.1:7000"


def test_watch_sees_creation(registry):
    changed = threading.Event()
    registry.watch("later", lambda c: changed.set())
    registry.register("later", conf())
    assert changed.wait(timeout=10)


def test_unknown_name_lists_the_known_ones(registry):
    registry.register("alpha", conf())
    registry.register("beta", conf())
    with pytest.raises(ConfigError, match=r"No job named 'gamma'.*registered jobs: 'alpha', 'beta'"):
        registry.retrieve("gamma")


@pytest.mark.parametrize(("payload", "why"), [
    ("{not json", "not valid JSON"),
    ('["a", "list"]', "must be a mapping"),
    ('{"batch_size": -3}', "batch_size"),
    ('{"colour": "blue"}', "colour"),
])
def test_invalid_entry_names_the_entry_and_the_problem(registry, payload, why):
    registry.directory.mkdir(parents=True, exist_ok=True)
    (registry.directory / "broken.json").write_text(payload)
    with pytest.raises(ConfigError, match=r"Registry entry 'broken'") as info:
        registry.retrieve("broken")
    assert why in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "x\0y", " padded"])
def test_bad_job_names(registry, name):
    with pytest.raises(ConfigError, match="job name"):
        registry.register(name, conf())


@pytest.mark.parametrize(("url", "fragment"), [
    ("redis://localhost/0", "no 'redis' registry"),
    ("file://otherhost/reg", "file:///absolute/dir"),
    ("zk://", "names no host"),
    ("zk://zk1:notaport/deepgrid", "not a number"),
    ("zk://zk1:99999/deepgrid", "out of range"),
    ("zk://alice:secret@zk1:2181/deepgrid", "DEEPGRID_ZK_AUTH"),
    ("zk://zk1:2181/deep//grid", "not a ZooKeeper path"),
    ("zk://zk1:2181/deepgrid?x=1", "query"),
])
def test_malformed_urls(url, fragment):
    with pytest.raises(ConfigError) as info:
        registry_from_url(url)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_zk_url_parsing():
    parsed = parse_zk_url("zk://zk1,zk2:2182/")
    assert parsed.hosts == (("zk1", 2181), ("zk2", 2182)) and parsed.root == "/deepgrid"
    assert parsed.address == "zk1:2181,zk2:2182" and parsed.url == "zk://zk1:2181,zk2:2182/deepgrid"
    assert parse_zk_url("zk://[::1]:2190/ml/deepgrid").address == "[::1]:2190"


def test_credentials_from_env_and_file(tmp_path, monkeypatch):
    assert zk_credentials() is None
    monkeypatch.setenv("DEEPGRID_ZK_AUTH", "alice:s3cret:with:colons")
    assert zk_credentials() == ("alice", "s3cret:with:colons")
    monkeypatch.delenv("DEEPGRID_ZK_AUTH")
    secret = tmp_path / "zk.auth"
    secret.write_text("bob:pw\n")
    monkeypatch.setenv("DEEPGRID_ZK_AUTH_FILE", str(secret))
    assert zk_credentials() == ("bob", "pw")
    secret.write_text("no-colon-password")
    with pytest.raises(ConfigError, match="user:password") as info:
        zk_credentials()
    assert "no-colon-password" not in str(info.value)  # never echo what may be a password
    monkeypatch.setenv("DEEPGRID_ZK_AUTH_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="credentials file"):
        zk_credentials()


def test_resolve_registry_url(monkeypatch):
    assert resolve_registry_url() is None
    monkeypatch.setenv("DEEPGRID_REGISTRY", "zk://env:2181/deepgrid")
    assert resolve_registry_url() == "zk://env:2181/deepgrid"
    assert resolve_registry_url(None, conf(registry_url="/conf/reg")) == "/conf/reg"
    assert resolve_registry_url("/flag", conf(registry_url="/conf/reg")) == "/flag"


# -- discovery: what a worker does -----------------------------------------------------------
def test_find_master(registry):
    registry.register("job", conf(engine_address="192.168.1.20:6380"))
    assert find_master(str(registry.directory), "job") == "192.168.1.20:6380"
    registry.register("unstarted", conf())
    with pytest.raises(ClusterError, match="names no master address"):
        find_master(str(registry.directory), "unstarted")
    with pytest.raises(ConfigError, match="registered jobs: 'job', 'unstarted'"):
        find_master(str(registry.directory), "nope")


def test_master_publishes_its_address_then_workers_find_it(tmp_path):
    args = argparse.Namespace(registry=str(tmp_path / "reg"))
    publish_master(args, conf(job_name="fm"), "127.0.0.1:6399")
    assert find_master(str(tmp_path / "reg"), "fm") == "127.0.0.1:6399"
    # With no registry named, the default one; failures there only warn (the -ad flow still works).
    publish_master(argparse.Namespace(registry=None), conf(job_name="dflt"), "127.0.0.1:6400")
    assert find_master(None, "dflt") == "127.0.0.1:6400"


# -- the CLI -----------------------------------------------------------------------------------
def test_cli_conf_push_get_list(tmp_path, capsys):
    (tmp_path / "conf.yaml").write_text(CONF_YAML)
    reg = str(tmp_path / "reg")
    assert main(["conf", "push", "conf.yaml", "--registry", reg]) == 0
    assert main(["conf", "push", "conf.yaml", "--name", "second", "--registry", reg]) == 0
    capsys.readouterr()
    assert main(["conf", "list", "--registry", reg]) == 0
    assert capsys.readouterr().out.split() == ["fmnist-mlp", "second"]
    assert main(["conf", "get", "second", "--registry", reg]) == 0
    out = capsys.readouterr().out
    assert "job_name: fmnist-mlp" in out and "batch_size: 32" in out
    assert "hunter2" not in out and "redis://:***@cache" in out  # secrets masked when printed


@pytest.mark.parametrize("password", ["hunter2", "p@ss/w0rd@x"])
def test_registry_entries_hold_no_password(registry, password):
    """Issue 8, defect 6: the raw state_url password was written into every registry entry."""
    registry.register("job", conf(state_url=f"redis://:{password}@cache:6379/0"))
    text = (registry.directory / "job.json").read_text()
    assert password not in text and "ss/w0rd" not in text, text
    assert json.loads(text)["state_url"] == "redis://:***@cache:6379/0"
    assert registry.retrieve("job").state_url == "redis://:***@cache:6379/0"


def test_cli_default_registry_from_env(tmp_path, monkeypatch, capsys):
    (tmp_path / "conf.yaml").write_text(CONF_YAML)
    monkeypatch.setenv("DEEPGRID_REGISTRY", str(tmp_path / "env-reg"))
    assert main(["conf", "push", "conf.yaml"]) == 0
    assert (tmp_path / "env-reg" / "fmnist-mlp.json").is_file()
    capsys.readouterr()
    assert main(["conf", "list"]) == 0
    assert capsys.readouterr().out.split() == ["fmnist-mlp"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    reg = str(tmp_path / "reg")
    (tmp_path / "conf.yaml").write_text(CONF_YAML)
    main(["conf", "push", "conf.yaml", "--registry", reg])
    capsys.readouterr()
    user_error(main(["conf", "get", "nope", "--registry", reg]), capsys.readouterr().err,
               "No job named 'nope'", "'fmnist-mlp'")
    user_error(main(["conf", "list", "--registry", "ftp://x/y"]), capsys.readouterr().err, "registry_url")
    user_error(main(["conf", "push", "missing.yaml", "--registry", reg]), capsys.readouterr().err, "missing.yaml")
    user_error(main(["conf", "push", "conf.yaml", "--name", "a/b", "--registry", reg]), capsys.readouterr().err,
               "job name")
    Path(reg, "bad.json").write_text('{"epochs": 0}')
    user_error(main(["conf", "get", "bad", "--registry", reg]), capsys.readouterr().err,
               "Registry entry 'bad'", "epochs")


def test_cli_worker_finds_the_master_in_the_registry(tmp_path, monkeypatch, capsys):
    """`deepgrid worker --registry URL --job NAME` ends in join_master(<the registered address>), as -ad does."""
    joined = []
    monkeypatch.setattr(host_module, "join_master",
                        lambda address, algorithm, count, **kw: joined.append((address, algorithm, count)) or {})
    reg = str(tmp_path / "reg")
    with registry_from_url(reg) as registry:
        registry.register("fm", conf(engine_address="127.0.0.1:6391"))
    assert main(["worker", "--registry", reg, "--job", "fm", "-a", "mlp", "-w", "2"]) == 0
    assert joined == [("127.0.0.1:6391", "mlp", 2)]
    assert "master at 127.0.0.1:6391" in capsys.readouterr().err


def test_cli_worker_argument_errors(tmp_path, capsys):
    user_error(main(["worker"]), capsys.readouterr().err, "-ad HOST", "--job NAME")
    user_error(main(["worker", "-ad", "h:1", "--job", "j"]), capsys.readouterr().err, "not both")
    user_error(main(["worker", "-ad", "h:1", "--registry", "/r"]), capsys.readouterr().err, "add --job")
    user_error(main(["worker", "--job", "ghost", "--registry", str(tmp_path / "reg")]), capsys.readouterr().err,
               "No job named 'ghost'", "registered jobs: none")
