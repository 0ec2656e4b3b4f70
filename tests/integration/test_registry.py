"""The ZooKeeper registry against a real ZooKeeper (Debian's package, started per module on loopback).

No mock stands in for ZooKeeper: ``tests/zookeeper_server.py`` starts a standalone
server on a free 127.0.0.1 port with its own data directory and stops it at the end.
Skipped where Java or the zookeeper package is missing (a failure under DEEPGRID_REQUIRE_SERVERS=1).
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

import pytest

import deepgrid.distributed.host as host_module
from deepgrid.cli import main, publish_master
from deepgrid.config.conf import Conf
from deepgrid.errors import ClusterError, ConfigError
from deepgrid.registry import ConfigRegistry, find_master, registry_from_url
from deepgrid.registry.zookeeper import ZooKeeperConfigRegistry
from tests.helpers import assert_user_error as user_error
from tests.helpers import import_or_missing, isolate_registry_env
from tests.zookeeper_server import ZooKeeperServer, free_port, require_zookeeper

import_or_missing("kazoo", "the ZooKeeper registry needs kazoo (pip install 'deepgrid[cluster]')", module_level=True)

CONF_YAML = """\
model: mlp
job_name: zk-mlp
batch_size: 32
network:
  hidden_layer_sizes: [16]
"""


@pytest.fixture(scope="module")
def zk():
    require_zookeeper()
    with ZooKeeperServer() as server:
        yield server


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    isolate_registry_env(tmp_path, monkeypatch)


@pytest.fixture
def root() -> str:
    """A root node of the test's own, so tests sharing the server see only their own jobs."""
    return f"/deepgrid-{uuid.uuid4().hex[:8]}"


def conf(**changes) -> Conf:
    return Conf(model="mlp", **changes)


def closed_port_url() -> str:
    return f"zk://127.0.0.1:{free_port()}/deepgrid"  # nothing listens there once the probe socket closed




def test_round_trip_and_node_layout(zk, root):
    with registry_from_url(zk.url(root)) as registry:
        assert isinstance(registry, ZooKeeperConfigRegistry) and isinstance(registry, ConfigRegistry)
        assert registry.list() == []
        registry.register("job-b", conf(job_name="job-b", engine_address="10.1.2.3:6380"))
        registry.register("job-a", conf(job_name="job-a"))
        registry.register("job-b", conf(job_name="job-b", engine_address="10.1.2.3:6381"))  # replaces
        assert registry.list() == ["job-a", "job-b"]
        assert registry.retrieve("job-b") == conf(job_name="job-b", engine_address="10.1.2.3:6381")
    # The layout the module docstring promises: <root>/jobs/<name> holding the Conf's JSON.
    from kazoo.client import KazooClient

    client = KazooClient(zk.address)
    client.start(timeout=10)
    try:
        data, _ = client.get(f"{root}/jobs/job-b")
        assert data.startswith(b"{") and b'"engine_address": "10.1.2.3:6381"' in data
    finally:
        client.stop()
        client.close()


def test_watch_sees_a_change(zk, root):
    with registry_from_url(zk.url(root)) as writer, registry_from_url(zk.url(root)) as reader:
        writer.register("j", conf(engine_address="127.0.0.1:6380"))
        seen: list[Conf] = []
        changed = threading.Event()
        reader.watch("j", lambda c: (seen.append(c), changed.set()))
        assert not changed.is_set()  # the current value is no change
        writer.register("j", conf(engine_address="127.0.0.1:7000"))
        assert changed.wait(timeout=20), "the watch did not fire"
        assert seen[-1].engine_address == "127.0.0.1:7000"


def test_digest_acl_keeps_out_clients_without_credentials(zk, root, monkeypatch, capsys):
    monkeypatch.setenv("DEEPGRID_ZK_AUTH", "alice:correct-horse")
    with registry_from_url(zk.url(root)) as registry:
        registry.register("secret-job", conf(engine_address="127.0.0.1:6380"))
        assert registry.retrieve("secret-job").engine_address == "127.0.0.1:6380"
    monkeypatch.delenv("DEEPGRID_ZK_AUTH")
    with pytest.raises(ClusterError) as info:
        find_master(zk.url(root), "secret-job")
    message = str(info.value)
    assert f"{root}/jobs/secret-job" in message and "DEEPGRID_ZK_AUTH" in message and "\n" not in message
    with pytest.raises(ClusterError, match="DEEPGRID_ZK_AUTH"):  # listing is refused as well
        with registry_from_url(zk.url(root)) as anonymous:
            anonymous.list()
    with pytest.raises(ClusterError, match="DEEPGRID_ZK_AUTH"):  # other credentials cannot overwrite it
        with registry_from_url(zk.url(root), auth="mallory:guess") as other:
            other.register("secret-job", conf(engine_address="6.6.6.6:6380"))
    # The CLI says the same in one line; with the credentials the worker finds the master.
    user_error(main(["conf", "get", "secret-job", "--registry", zk.url(root)]), capsys.readouterr().err,
               "secret-job", "DEEPGRID_ZK_AUTH")
    monkeypatch.setenv("DEEPGRID_ZK_AUTH", "alice:correct-horse")
    assert find_master(zk.url(root), "secret-job") == "127.0.0.1:6380"


def test_a_write_to_an_existing_open_node_sets_the_acl(zk, root, monkeypatch):
    """Issue 8, defect 6: registering over a node created without credentials kept its open ACL,
    so anyone could read the new Conf and redirect workers."""
    from kazoo.client import KazooClient

    with registry_from_url(zk.url(root)) as anonymous:  # no credentials: an open node
        anonymous.register("job", conf(engine_address="127.0.0.1:6380"))
    monkeypatch.setenv("DEEPGRID_ZK_AUTH", "alice:correct-horse")
    with registry_from_url(zk.url(root)) as registry:
        registry.register("job", conf(engine_address="127.0.0.1:6381"))
        assert registry.retrieve("job").engine_address == "127.0.0.1:6381"
    client = KazooClient(zk.address, auth_data=[("digest", "alice:correct-horse")])  # reading an ACL needs rights
    client.start(timeout=10)
    try:
        acls, _ = client.get_acls(f"{root}/jobs/job")
        assert [acl.id.scheme for acl in acls] == ["digest"] and acls[0].id.id.startswith("alice:"), acls
    finally:
        client.stop()
        client.close()
    monkeypatch.delenv("DEEPGRID_ZK_AUTH")
    with pytest.raises(ClusterError, match="DEEPGRID_ZK_AUTH"):
        find_master(zk.url(root), "job")


def test_zookeeper_entries_hold_no_password(zk, root):
    """Issue 8, defect 6: the raw state_url password was written into the job's node."""
    from kazoo.client import KazooClient

    with registry_from_url(zk.url(root)) as registry:
        registry.register("job", conf(state_url="redis://:p@ss/w0rd@cache:6379/0"))
    client = KazooClient(zk.address)
    client.start(timeout=10)
    try:
        data, _ = client.get(f"{root}/jobs/job")
    finally:
        client.stop()
        client.close()
    assert b"p@ss" not in data and b"w0rd" not in data and b'"redis://:***@cache:6379/0"' in data


def test_invalid_entry_names_the_job_and_the_problem(zk, root):
    with registry_from_url(zk.url(root)) as registry:
        registry.register("fine", conf())
        from kazoo.client import KazooClient

        client = KazooClient(zk.address)
        client.start(timeout=10)
        try:
            client.create(f"{root}/jobs/garbage", b"\x80 not json")
            client.create(f"{root}/jobs/wrong", b'{"batch_size": 0}')
        finally:
            client.stop()
            client.close()
        with pytest.raises(ConfigError, match=r"Registry entry 'garbage'.*not valid JSON"):
            registry.retrieve("garbage")
        with pytest.raises(ConfigError, match=r"Registry entry 'wrong'.*not a valid Conf.*batch_size"):
            registry.retrieve("wrong")


def test_unknown_name_lists_the_known_ones(zk, root):
    with registry_from_url(zk.url(root)) as registry:
        registry.register("one", conf())
        registry.register("two", conf())
        with pytest.raises(ConfigError, match=r"No job named 'three'.*registered jobs: 'one', 'two'"):
            registry.retrieve("three")


def test_unreachable_zookeeper_fails_naming_the_address(monkeypatch, capsys):
    url = closed_port_url()
    address = url.removeprefix("zk://").removesuffix("/deepgrid")
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"Could not reach ZooKeeper at {address}"):
        find_master(url, "any", timeout_s=2)
    with capsys.disabled():  # capsys would swallow the figure otherwise
        print(f"\nunreachable ZooKeeper reported after {time.monotonic() - started:.1f} s")
    # The worker command: one line naming the address, non-zero exit (default deadline lowered for speed).
    monkeypatch.setenv("DEEPGRID_ZK_TIMEOUT", "2")
    user_error(main(["worker", "--registry", url, "--job", "any"]), capsys.readouterr().err,
               f"Could not reach ZooKeeper at {address}")


def test_cli_conf_push_get_list(zk, root, tmp_path, capsys):
    (tmp_path / "conf.yaml").write_text(CONF_YAML)
    url = zk.url(root)
    assert main(["conf", "push", "conf.yaml", "--registry", url]) == 0
    assert main(["conf", "push", "conf.yaml", "--name", "copy", "--registry", url]) == 0
    capsys.readouterr()
    assert main(["conf", "list", "--registry", url]) == 0
    assert capsys.readouterr().out.split() == ["copy", "zk-mlp"]
    assert main(["conf", "get", "copy", "--registry", url]) == 0
    assert "job_name: zk-mlp" in capsys.readouterr().out
    user_error(main(["conf", "get", "nope", "--registry", url]), capsys.readouterr().err,
               "No job named 'nope'", "'copy', 'zk-mlp'")
    user_error(main(["conf", "list", "--registry", "zk://zk1:port/x"]), capsys.readouterr().err, "not a number")


def test_worker_discovery_from_zookeeper_alone(zk, root, monkeypatch, capsys):
    """The seed's flow: the master registers; a worker given only ZooKeeper's address and the job
    name finds the master, then joins it exactly as with -ad."""
    publish_master(argparse.Namespace(registry=zk.url(root)), conf(job_name="fm"), "127.0.0.1:6390")
    started = time.perf_counter()
    address = find_master(zk.url(root), "fm")
    elapsed = time.perf_counter() - started
    with capsys.disabled():  # capsys would swallow the figure otherwise
        print(f"\nworker discovery via ZooKeeper (connect, read, close): {elapsed * 1000:.1f} ms")
    assert address == "127.0.0.1:6390"
    # Through the command: join_master receives that address (Ray itself is not started here).
    joined = []
    monkeypatch.setattr(host_module, "join_master",
                        lambda address, algorithm, count, **kw: joined.append(address) or {"workers": count})
    capsys.readouterr()
    assert main(["worker", "--registry", zk.url(root), "--job", "fm", "-w", "1"]) == 0
    assert joined == ["127.0.0.1:6390"]
    assert "master at 127.0.0.1:6390" in capsys.readouterr().err


def test_registered_job_survives_a_zookeeper_restart(zk, root):
    """The master lets go of ZooKeeper after registering; the entry persists across a server restart."""
    publish_master(argparse.Namespace(registry=zk.url(root)), conf(job_name="durable"), "127.0.0.1:6391")
    zk.stop()
    try:
        with pytest.raises(ClusterError, match="Could not reach ZooKeeper"):
            find_master(zk.url(root), "durable", timeout_s=1)
    finally:
        zk.start()
    assert find_master(zk.url(root), "durable") == "127.0.0.1:6391"
