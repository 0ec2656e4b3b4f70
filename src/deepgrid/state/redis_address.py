"""Where the Redis state tracker connects: ``state_url`` parsed into a :class:`RedisAddress`.

The URL is ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (``rediss://`` for TLS, which checks the
server's certificate against the system's CAs). When the URL carries no password, it is read from
``$DEEPGRID_REDIS_PASSWORD``, else from the file named by ``$DEEPGRID_REDIS_PASSWORD_FILE``. One
optional query parameter, ``?retry_timeout_s=30``, bounds how long an operation retries while Redis
is unreachable. Passwords never appear in messages or logs.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from deepgrid.errors import ConfigError, invalid
from deepgrid.state.base import mask_url

# The tracker's one logger, whichever of its modules speaks: a user's logging settings name it.
log = logging.getLogger("deepgrid.state.redis")

DEFAULT_PORT = 6379
PASSWORD_ENV = "DEEPGRID_REDIS_PASSWORD"
PASSWORD_FILE_ENV = "DEEPGRID_REDIS_PASSWORD_FILE"
DEFAULT_RETRY_TIMEOUT_S = 30.0
MAX_RETRY_TIMEOUT_S = 86400.0  # a day: longer than any outage worth waiting for
MASKED_PASSWORD = "***"  # how a stored URL's password reads (Conf.to_dict(mask_secrets=True))

URL_FORM = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS)"


@dataclass(frozen=True)
class RedisAddress:
    """Where the tracker connects, parsed from ``state_url``; ``password`` is never shown."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_source: str | None = None  # where the password came from, for error messages
    retry_timeout_s: float = DEFAULT_RETRY_TIMEOUT_S

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return f"{host}:{self.port}"


def _bad_url(url: str, why: str) -> ConfigError:
    return ConfigError(invalid("state_url", mask_url(url), URL_FORM, f"{why}; e.g. redis://:PASSWORD@localhost:6379/0"))


def parse_redis_url(url: str, env: Mapping[str, str] | None = None) -> RedisAddress:
    """Parse a ``redis://`` or ``rediss://`` URL; the password falls back to the environment."""
    env = os.environ if env is None else env
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _bad_url(url, "the port must be a number from 1 to 65535") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise _bad_url(url, "the scheme must be redis:// or rediss://")
    if not parts.hostname:
        raise _bad_url(url, "it names no host")
    if port == 0:
        raise _bad_url(url, "the port must be a number from 1 to 65535")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise _bad_url(url, f"the database must be a number (/0, /1 ...), not /{path}")
    if parts.fragment:
        raise _bad_url(url, "it must not have a #fragment")
    retry_timeout_s = DEFAULT_RETRY_TIMEOUT_S
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise _bad_url(url, "its query is malformed; the one option is ?retry_timeout_s=SECONDS") from None
    for key, value in query:
        if key != "retry_timeout_s":
            raise _bad_url(url, f"it has an unknown option {key!r}; the one option is ?retry_timeout_s=SECONDS")
        try:
            retry_timeout_s = float(value)
        except ValueError:
            retry_timeout_s = -1.0
        # Finite and bounded: an outage must end in an error some time (inf would also overflow
        # the one-time tokens' expiry).
        if not 0 < retry_timeout_s <= MAX_RETRY_TIMEOUT_S:
            raise _bad_url(url, f"retry_timeout_s must be a positive number of seconds, at most "
                                f"{MAX_RETRY_TIMEOUT_S:.0f} (a day), not {value!r}")

    username = unquote(parts.username) if parts.username else None
    password, source = (unquote(parts.password), "state_url") if parts.password else (None, None)
    if password == MASKED_PASSWORD:
        # A URL as deepgrid stores it (a checkpoint's conf, a registry entry): the password was
        # masked there, so it comes from the environment, as for a URL without one.
        password, source = None, None
    if password is None and env.get(PASSWORD_ENV):
        password, source = env[PASSWORD_ENV], f"${PASSWORD_ENV}"
    if password is None and env.get(PASSWORD_FILE_ENV):
        path_name = env[PASSWORD_FILE_ENV]
        try:
            with open(path_name, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except OSError as e:
            raise ConfigError(
                f"${PASSWORD_FILE_ENV} names {path_name!r}, which cannot be read ({e.strerror}); "
                "point it at a readable file that holds the Redis password."
            ) from None
        if not password:
            raise ConfigError(f"${PASSWORD_FILE_ENV} names {path_name!r}, which is empty; write the Redis password into it.")
        source = f"the file ${PASSWORD_FILE_ENV} names"
    return RedisAddress(parts.hostname, port or DEFAULT_PORT, int(path or 0), scheme == "rediss",
                        username, password, source, retry_timeout_s)


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to another machine


_warned_exposed: set[str] = set()
_warned_lock = threading.Lock()


def warn_if_exposed(where: RedisAddress) -> bool:
    """Warn once per address (per process) when Redis is reached over the network with neither TLS
    nor a password: whoever is on the path can read and rewrite the run's state. True if it warned."""
    if where.tls or where.password is not None or _is_loopback(where.host):
        return False
    with _warned_lock:
        if where.address in _warned_exposed:
            return False
        _warned_exposed.add(where.address)
    log.warning("Redis at %s is reached over the network without TLS and without a password: anyone on the "
                "way can read and change the run's state. Use rediss:// and a password (%s or %s), or keep "
                "Redis on a private network.", where.address, PASSWORD_ENV, PASSWORD_FILE_ENV)
    return True
