"""DEEPGRID_REQUIRE_SERVERS=1 (set by .ci/run) turns "server not installed" skips into failures
(issue 8: CI must never pass green without the real redis-server and ZooKeeper)."""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.redis_server as redis_server
import tests.zookeeper_server as zookeeper_server
from tests.helpers import REQUIRE_SERVERS_ENV, import_or_missing

CI_RUN = Path(__file__).resolve().parents[2] / ".ci" / "run"


@pytest.fixture
def no_servers(monkeypatch):
    """As on a machine without redis-server, Java's ZooKeeper jar or kazoo."""
    monkeypatch.setattr(redis_server, "REDIS_SERVER", None)
    monkeypatch.setattr(zookeeper_server, "ZOOKEEPER_JAR", Path("/nonexistent/zookeeper.jar"))


@pytest.mark.parametrize("value", ["", "0"])
def test_missing_servers_skip_by_default(no_servers, monkeypatch, value):
    monkeypatch.setenv(REQUIRE_SERVERS_ENV, value)
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        redis_server.require_redis_server()
    with pytest.raises(pytest.skip.Exception, match="zookeeper"):
        zookeeper_server.require_zookeeper()
    with pytest.raises(pytest.skip.Exception, match="no-such-client"):
        import_or_missing("no_such_client_package", "no-such-client")


def test_missing_servers_fail_when_required(no_servers, monkeypatch):
    monkeypatch.setenv(REQUIRE_SERVERS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"redis-server is not installed.*{REQUIRE_SERVERS_ENV}=1"):
        redis_server.require_redis_server()
    with pytest.raises(pytest.fail.Exception, match=f"no ZooKeeper server.*{REQUIRE_SERVERS_ENV}=1"):
        zookeeper_server.require_zookeeper()
    with pytest.raises(pytest.fail.Exception, match="no-such-client"):
        import_or_missing("no_such_client_package", "no-such-client")


def test_ci_requires_the_servers():
    text = CI_RUN.read_text()
    assert f"export {REQUIRE_SERVERS_ENV}=1" in text
    assert text.index(f"export {REQUIRE_SERVERS_ENV}=1") < text.index("make test")
