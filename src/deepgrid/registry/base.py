"""The configuration registry: where a job's Conf lives so that workers need only its address.

Early Deeplearning4j kept the configuration in ZooKeeper: a worker was given
ZooKeeper's address, read the master's URL and the job from there
(``ZookeeperConfigurationRetriever(host, 2181, "master").retrieve().getMasterUrl()``)
and joined. deepgrid does the same with a :class:`ConfigRegistry`:
``deepgrid master`` registers its Conf, with ``engine_address`` set to its Ray
address, under the job name; ``deepgrid worker --registry URL --job NAME``
reads it back (:func:`find_master`) and joins that address.

Two registries, chosen by URL (:func:`registry_from_url`):

* ``file:///path`` or a plain path: a directory of JSON files (the default,
  ``$DEEPGRID_HOME/registry``), for one machine or a shared file system;
* ``zk://host:2181[,host2:2181]/deepgrid``: ZooKeeper (see
  :mod:`deepgrid.registry.zookeeper` for the node layout and authentication).

Entries are the JSON of ``Conf.to_dict(mask_secrets=True)`` (a URL's password
stored as ``***``), never pickle: reading a registry must not run code that
whoever wrote to it chose.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from deepgrid.errors import ClusterError, ConfigError, invalid

if TYPE_CHECKING:
    from deepgrid.config.conf import Conf

REGISTRY_ENV = "DEEPGRID_REGISTRY"

WatchCallback = Callable[["Conf"], None]


@runtime_checkable
class ConfigRegistry(Protocol):
    """Named Confs, readable by every process that can reach the registry."""

    url: str

    def register(self, name: str, conf: Conf) -> None:
        """Store ``conf`` under ``name``, replacing what was there."""

    def retrieve(self, name: str) -> Conf:
        """The Conf stored under ``name``; ConfigError naming the known jobs if there is none."""

    def list(self) -> list[str]:
        """The names of the stored Confs, sorted."""

    def watch(self, name: str, callback: WatchCallback) -> None:
        """Call ``callback(conf)`` from a background thread each time ``name`` changes."""

    def close(self) -> None:
        """Stop watching and let go of connections; the registry is unusable afterwards."""


def check_job_name(name: str) -> str:
    """A job name is a file name and a ZooKeeper node name: refuse anything that could leave its folder."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or any(c in name for c in "/\\\0") or name != name.strip()):
        raise ConfigError(invalid("job name", name, "a non-empty name without slashes or a leading dot",
                                  "Name the job like 'fmnist-dbn'."))
    return name


def parse_entry(name: str, payload: bytes | str, where: str) -> Conf:
    """The Conf in a registry entry's JSON, or one line saying which entry is broken and how."""
    from deepgrid.config.conf import Conf

    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"Registry entry {name!r} in {where} is not valid JSON ({e}); "
                          f"register it again with `deepgrid conf push CONF --name {name}`.") from None
    try:
        return Conf.from_dict(data)
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"Registry entry {name!r} in {where} is not a valid Conf: {e} "
                          f"Register it again with `deepgrid conf push CONF --name {name}`.") from None


def encode_entry(conf: Conf) -> bytes:
    # Secrets masked: whoever may read the registry must not learn the state store's password
    # (the master keeps its own Conf; workers need no password, only the master talks to Redis).
    return json.dumps(conf.to_dict(mask_secrets=True), indent=1, sort_keys=True).encode("utf-8")


def unknown_job(name: str, known: list[str], where: str) -> ConfigError:
    listing = ", ".join(repr(n) for n in known) if known else "none"
    return ConfigError(f"No job named {name!r} in the registry at {where}; registered jobs: {listing}. "
                       "Start its master (`deepgrid master CONF`) or push it with `deepgrid conf push CONF`.")


def resolve_registry_url(explicit: str | None = None, conf: Conf | None = None) -> str | None:
    """The registry to use: ``--registry``, else the Conf's ``registry_url``, else
    ``$DEEPGRID_REGISTRY``; None means the default file registry."""
    for candidate in (explicit, conf.registry_url if conf is not None else None, os.environ.get(REGISTRY_ENV)):
        if candidate:
            return candidate
    return None


def registry_from_url(url: str | None = None, **options: Any) -> ConfigRegistry:
    """Open the registry ``url`` names: ``zk://hosts/root``, ``file:///dir`` or a plain directory path;
    None or empty: the file registry in ``$DEEPGRID_HOME/registry``."""
    from deepgrid.registry.files import FileConfigRegistry

    if not url:
        return FileConfigRegistry(None, **options)
    if not isinstance(url, str):
        raise ConfigError(invalid("registry_url", url, "a URL such as zk://host:2181/deepgrid or file:///dir"))
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in ("zk", "zookeeper"):
        from deepgrid.registry.zookeeper import ZooKeeperConfigRegistry

        return ZooKeeperConfigRegistry(url, **options)
    if scheme in ("", "file"):
        return FileConfigRegistry(url, **options)
    raise ConfigError(invalid("registry_url", url, "a zk://host:2181/deepgrid, file:///dir or directory path",
                              f"deepgrid has no {scheme!r} registry."))


def find_master(registry_url: str | None, job: str, **options: Any) -> str:
    """The engine address of ``job``'s master, read from the registry alone (what a worker needs)."""
    check_job_name(job)
    registry = registry_from_url(registry_url, **options)
    try:
        conf = registry.retrieve(job)
    finally:
        registry.close()  # one read: keep no connection open while the worker trains
    if not conf.engine_address:
        raise ClusterError(f"Job {job!r} in the registry at {registry.url} names no master address "
                           "(engine_address is empty): no master has registered it. Start one with "
                           f"`deepgrid master CONF --registry {registry.url}`.")
    return conf.engine_address
