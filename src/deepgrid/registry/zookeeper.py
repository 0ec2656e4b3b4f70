"""The ZooKeeper registry: ``zk://host:2181[,host2:2181]/deepgrid``, as early Deeplearning4j kept it.

URL: a comma-separated list of ``host[:port]`` (port 2181 if left out), then
the root node (``/deepgrid`` if left out). Credentials never go in the URL
(it is printed and stored in Confs): see *Authentication* below.

Node layout, under the root node ``<root>`` (``/deepgrid`` by default)::

    <root>                   created on first register
    <root>/jobs              one child per job
    <root>/jobs/<name>       UTF-8 JSON of Conf.to_dict(mask_secrets=True); its engine_address
                             is the master's Ray address, which workers join

A worker needs only ZooKeeper's address and the job name: it reads
``<root>/jobs/<name>``, takes ``engine_address`` and joins the master there
(``deepgrid worker --registry zk://zk1:2181/deepgrid --job NAME``). Nodes are
persistent, not ephemeral: the master closes its ZooKeeper session right after
registering, so a ZooKeeper that goes away while the job trains does not stop
the job; the next master of that job overwrites the entry.

Authentication: with ``DEEPGRID_ZK_AUTH=user:password`` in the environment (or
``DEEPGRID_ZK_AUTH_FILE`` naming a file that holds ``user:password``), the
session authenticates with ZooKeeper's ``digest`` scheme and every node deepgrid
creates or writes carries the ACL ``digest:user:<hash>`` with all permissions
(a job node that exists already gets it too, before the new Conf is written), so
no other identity can read a Conf or change where workers go. Without credentials
the nodes are world-readable and -writable (``OPEN_ACL_UNSAFE``), fine on a
private network only.

Every request has a deadline (``DEEPGRID_ZK_TIMEOUT`` seconds, 10 by default,
also the connection deadline), so an unreachable ZooKeeper ends in one
ClusterError naming its address instead of a hang.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deepgrid.config.conf import Conf
from deepgrid.errors import ClusterError, ConfigError, invalid
from deepgrid.registry.base import WatchCallback, check_job_name, encode_entry, parse_entry, unknown_job

# kazoo logs every failed connection attempt as a warning; with no logging configured Python
# would print them all on stderr, burying deepgrid's one-line error. Applications that
# configure logging still get them through the root logger.
logging.getLogger("kazoo").addHandler(logging.NullHandler())
logger = logging.getLogger(__name__)

DEFAULT_PORT = 2181
DEFAULT_ROOT = "/deepgrid"
AUTH_ENV = "DEEPGRID_ZK_AUTH"
AUTH_FILE_ENV = "DEEPGRID_ZK_AUTH_FILE"
TIMEOUT_ENV = "DEEPGRID_ZK_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0
URL_EXAMPLE = "zk://host:2181[,host2:2181]/deepgrid"


@dataclass(frozen=True)
class ZooKeeperURL:
    hosts: tuple[tuple[str, int], ...]
    root: str

    @property
    def address(self) -> str:
        """kazoo's ``hosts`` string: ``host:port,host2:port``."""
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)

    @property
    def url(self) -> str:
        return f"zk://{self.address}{self.root}"


def parse_zk_url(url: str) -> ZooKeeperURL:
    """``zk://host[:port][,host2[:port]][/root]`` → hosts and root node; ConfigError saying what is wrong."""
    def bad(why: str) -> ConfigError:
        return ConfigError(invalid("registry_url", url, f"a ZooKeeper URL like {URL_EXAMPLE}", why))

    parts = urlsplit(url)
    if parts.scheme not in ("zk", "zookeeper"):
        raise bad("It must start with zk://.")
    if parts.query or parts.fragment:
        raise bad("Remove the ?query/#fragment.")
    if "@" in parts.netloc:
        raise bad(f"Credentials do not belong in the URL; set {AUTH_ENV}=user:password instead.")
    if not parts.netloc:
        raise bad("It names no host.")
    hosts = []
    for item in parts.netloc.split(","):
        host, port_text = item, ""
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif ":" in item:
            host, _, port_text = item.rpartition(":")
        if not host or any(c.isspace() for c in host):
            raise bad(f"Host {item!r} is empty or malformed.")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise bad(f"Port {port_text!r} of {item!r} is not a number.") from None
        if not 0 < port < 65536:
            raise bad(f"Port {port} of {item!r} is out of range 1-65535.")
        hosts.append((host, port))
    root = parts.path.rstrip("/") or DEFAULT_ROOT
    components = root.split("/")[1:]
    if any(c in ("", ".", "..") or c.strip() != c for c in components) or "\0" in root:
        raise bad(f"Root node {parts.path!r} is not a ZooKeeper path like /deepgrid.")
    return ZooKeeperURL(tuple(hosts), root)


def zk_credentials() -> tuple[str, str] | None:
    """``(user, password)`` from ``$DEEPGRID_ZK_AUTH`` or the file ``$DEEPGRID_ZK_AUTH_FILE`` names, else None."""
    text = os.environ.get(AUTH_ENV)
    source = AUTH_ENV
    if not text and os.environ.get(AUTH_FILE_ENV):
        path = Path(os.environ[AUTH_FILE_ENV]).expanduser()
        source = f"{AUTH_FILE_ENV} ({path})"
        try:
            text = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"Cannot read the ZooKeeper credentials file {path} named by {AUTH_FILE_ENV}: "
                              f"{e.strerror or e}.") from None
    if not text:
        return None
    return split_credentials(text, source)


def split_credentials(text: str, source: str = AUTH_ENV) -> tuple[str, str]:
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        # Never echo the value: it is (or is meant to be) a password.
        raise ConfigError(f"{source} must be user:password (both non-empty); fix it or unset it.")
    return user, password


def request_timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 300:
        raise ConfigError(invalid(TIMEOUT_ENV, text, "seconds, a number above 0 and at most 300"))
    return value


class ZooKeeperConfigRegistry:
    """Confs as ZooKeeper nodes. See the module docstring for the layout and authentication."""

    def __init__(self, url: str, *, timeout_s: float | None = None, auth: str | None = None) -> None:
        """Connect now (fail fast): within ``timeout_s`` (default ``$DEEPGRID_ZK_TIMEOUT`` or 10 s)
        or ClusterError. ``auth`` is ``user:password``; None takes it from the environment."""
        parsed = parse_zk_url(url)  # a malformed URL is reported even where kazoo is missing
        try:
            from kazoo.client import KazooClient
        except ImportError:
            raise ConfigError("The ZooKeeper registry needs the kazoo package: pip install 'deepgrid[cluster]'.") from None
        from kazoo.exceptions import KazooException
        from kazoo.handlers.threading import KazooTimeoutError
        from kazoo.security import make_digest_acl

        self.url = parsed.url
        self.address = parsed.address
        self.root = parsed.root
        self.jobs_path = f"{parsed.root.rstrip('/')}/jobs"
        self._timeout = timeout_s if timeout_s is not None else request_timeout()
        credentials = split_credentials(auth, "auth") if auth else zk_credentials()
        self.user = credentials[0] if credentials else None
        self._acl = [make_digest_acl(*credentials, all=True)] if credentials else None
        self._lock = threading.Lock()
        self._closed = False
        self._client = KazooClient(hosts=self.address, timeout=max(self._timeout, 4.0),
                                   auth_data=[("digest", ":".join(credentials))] if credentials else None)
        try:
            self._client.start(timeout=self._timeout)
        except (KazooTimeoutError, KazooException) as e:
            self._shutdown()
            reason = "" if isinstance(e, KazooTimeoutError) else f" ({type(e).__name__}: {e})"
            raise ClusterError(f"Could not reach ZooKeeper at {self.address} within {self._timeout:g} s{reason}; "
                               f"check that it runs there and that this machine can reach it (registry {self.url}).") from None

    # -- requests --------------------------------------------------------------
    def _node(self, name: str) -> str:
        return f"{self.jobs_path}/{check_job_name(name)}"

    def _request(self, doing: str, path: str, start: Callable[[], Any]) -> Any:
        """Run one kazoo request with a deadline, turning connection and ACL failures into one line."""
        from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, NoAuthError, SessionExpiredError
        from kazoo.handlers.threading import KazooTimeoutError

        try:
            return start().get(timeout=self._timeout)
        except NoAuthError:
            who = f"user {self.user!r}" if self.user else "no credentials"
            raise ClusterError(f"ZooKeeper node {path} at {self.address} is protected by an ACL that deepgrid's "
                               f"identity ({who}) may not use for {doing}; set {AUTH_ENV}=user:password "
                               f"(or {AUTH_FILE_ENV}) to the credentials it was created with.") from None
        except (KazooTimeoutError, ConnectionLoss, SessionExpiredError, ConnectionClosedError):
            raise ClusterError(f"Lost ZooKeeper at {self.address} while {doing} {path} "
                               f"(no answer within {self._timeout:g} s); check that it runs.") from None

    def register(self, name: str, conf: Conf) -> None:
        from kazoo.exceptions import NodeExistsError

        path, payload = self._node(name), encode_entry(conf)
        try:
            # makepath creates <root> and <root>/jobs too, with the same ACL.
            self._request("creating", path,
                          lambda: self._client.create_async(path, payload, acl=self._acl, makepath=True))
        except NodeExistsError:
            if self._acl is not None:
                # The node may have been created open (by a master without credentials): protect it
                # before the new Conf is written into it, not after.
                self._request("setting the ACL of", path, lambda: self._client.set_acls_async(path, self._acl))
            self._request("writing", path, lambda: self._client.set_async(path, payload))

    def retrieve(self, name: str) -> Conf:
        from kazoo.exceptions import NoNodeError

        path = self._node(name)
        try:
            payload, _ = self._request("reading", path, lambda: self._client.get_async(path))
        except NoNodeError:
            raise unknown_job(name, self.list(), self.url) from None
        return parse_entry(name, payload, f"{self.url} (node {path})")

    def list(self) -> list[str]:
        from kazoo.exceptions import NoNodeError

        try:
            return sorted(self._request("listing", self.jobs_path,
                                        lambda: self._client.get_children_async(self.jobs_path)))
        except NoNodeError:
            return []

    def watch(self, name: str, callback: WatchCallback) -> None:
        from kazoo.exceptions import NoNodeError
        from kazoo.recipe.watchers import DataWatch

        path = self._node(name)
        try:  # surface an ACL problem here, in the caller's thread, not in kazoo's
            self._request("reading", path, lambda: self._client.get_async(path))
        except NoNodeError:
            pass  # not there yet: the watch fires when it is created
        seen: dict[str, int | None] = {}

        def on_change(data: bytes | None, stat: Any) -> None:
            # DataWatch calls once at once with the current node: that is no change.
            version = stat.mzxid if stat is not None else None  # mzxid: unique even across re-creation
            if "mzxid" not in seen:
                seen["mzxid"] = version
                return
            if data is None or version == seen["mzxid"]:
                return  # deleted, or a repeat after a reconnect
            seen["mzxid"] = version
            try:
                conf = parse_entry(name, data, f"{self.url} (node {path})")
            except ConfigError as e:
                logger.warning("deepgrid: ignoring a change to %s: %s", path, e)
                return
            try:
                callback(conf)
            except Exception:  # a failing callback must not stop the watch for the next change
                logger.exception("deepgrid: registry watch callback for %s failed", path)

        DataWatch(self._client, path, on_change)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            self._client.stop()
            self._client.close()
        except Exception as e:  # closing must never mask the error that led here
            logger.debug("closing the ZooKeeper client: %s", e)

    def __enter__(self) -> ZooKeeperConfigRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ZooKeeperConfigRegistry({self.url!r})"
