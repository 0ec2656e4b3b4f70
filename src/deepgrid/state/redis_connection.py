"""The Redis state tracker's connection: retries through outages, one clear line for each failure.

Outages: a connection error is retried with bounded exponential back-off (logged once per outage)
for up to ``retry_timeout_s`` (default 30 s), then raises ``ClusterError``. A retried write that is
not idempotent returns its first answer (see :mod:`deepgrid.state.redis_scripts`). If Redis comes
back *without* the run's keys (restarted with no persistence; every new connection checks the run's
marker key), the next operation raises ``ClusterError`` rather than carry on with empty state; run
Redis with ``appendonly yes`` for a run to survive a Redis restart.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthorizationError
from redis.retry import Retry

from deepgrid.errors import ClusterError
from deepgrid.state.redis_address import PASSWORD_ENV, PASSWORD_FILE_ENV, RedisAddress

log = logging.getLogger("deepgrid.state.redis")  # the tracker's one logger (see redis_address)

T = TypeVar("T")

# At start-up a missing server is a mistake, not an outage: give up sooner, so that with one
# more connect timeout the user hears about it within 30 s.
STARTUP_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 10.0  # every command is short; a server that stops answering is an outage
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.05, 2.0


class RedisConnection:
    """One job's client of one Redis server (``client``), and :meth:`call`, which every use goes through.

    ``url`` is the masked ``state_url`` (for messages); ``marker_key`` is the key whose absence on a
    new connection, once :meth:`arm` was called, means Redis lost the run's state.
    """

    def __init__(self, where: RedisAddress, url: str, job_name: str, marker_key: str, retry_timeout_s: float) -> None:
        self.where = where
        self.url = url
        self.job_name = job_name
        self.retry_timeout_s = retry_timeout_s
        self._marker_key = marker_key
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None
        self._armed = False  # set once the marker exists: from then on a new connection checks it
        self._lost = False
        self.client = redis.Redis(
            host=where.host, port=where.port, db=where.db, username=where.username, password=where.password,
            ssl=where.tls, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
            # Our own loop retries, with the one-time tokens; redis-py retrying underneath could
            # apply a write twice.
            retry=Retry(NoBackoff(), 0), decode_responses=True, redis_connect_func=self._on_connect,
            # Redis refuses a client name with spaces or characters outside printable ASCII: a
            # non-ASCII job name is spelled with escapes there (the keys themselves are binary-safe).
            client_name="deepgrid:" + job_name.encode("ascii", "backslashreplace").decode("ascii"),
        )

    def arm(self) -> None:
        """The marker exists now: from here on a reconnection that does not find it is an error."""
        self._armed = True

    @property
    def unreachable(self) -> bool:
        """True from the first failed call of an outage until a call succeeds again."""
        with self._outage_lock:
            return self._outage_since is not None

    def _on_connect(self, connection: Any) -> None:
        """Every new connection (a reconnection too): handshake, then check the run's keys survived."""
        connection.on_connect()
        if self._armed:
            connection.send_command("EXISTS", self._marker_key)
            if not int(connection.read_response()):
                self._lost = True

    def call(self, what: str, fn: Callable[[], T], *, budget_s: float | None = None, starting: bool = False) -> T:
        """Run ``fn``; retry connection errors with bounded exponential back-off; map errors to one line."""
        budget = self.retry_timeout_s if budget_s is None else budget_s
        deadline: float | None = None
        delay = FIRST_BACKOFF_S
        while True:
            try:
                result = fn()
            except redis.AuthenticationError as e:
                raise self._auth_error(e) from None
            except AuthorizationError as e:
                raise ClusterError(f"Redis at {self.where.address} refused access ({e}); give the user "
                                   f"{self.where.username or 'default'!r} the rights it needs, or use another user.") from None
            except (redis.ConnectionError, redis.TimeoutError) as e:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + budget
                    self._outage_began(what, e, starting)
                if now >= deadline:
                    raise self._gone_error(what, e, budget, starting) from None
                time.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, deadline - now)))
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            except redis.ReadOnlyError as e:
                raise ClusterError(f"Redis at {self.where.address} is a read-only replica ({e}); "
                                   "point state_url at the primary.") from None
            except redis.ResponseError as e:
                raise ClusterError(f"Redis at {self.where.address} refused to {what}: {e}. "
                                   "deepgrid needs Redis 6 or later with Lua scripting allowed.") from None
            except redis.RedisError as e:
                raise ClusterError(f"Redis at {self.where.address}: could not {what}: {e}.") from None
            if deadline is not None:
                self._outage_ended()
            if self._lost:
                raise ClusterError(
                    f"Redis at {self.where.address} came back without the state of job {self.job_name!r} "
                    "(it restarted without persistence, or the keys were deleted); the run cannot go on. "
                    "Run Redis with 'appendonly yes' so a restart keeps the state, then start the run again.")
            return result

    def _outage_began(self, what: str, error: Exception, starting: bool) -> None:
        with self._outage_lock:
            if self._outage_since is not None:
                return  # one warning per outage, however many threads notice it
            self._outage_since = time.monotonic()
        if not starting:
            log.warning("Lost the connection to Redis at %s (%s: %s); retrying for up to %.0f s.",
                        self.where.address, what, error, self.retry_timeout_s)

    def _outage_ended(self) -> None:
        with self._outage_lock:
            since, self._outage_since = self._outage_since, None
        if since is not None:
            log.warning("Redis at %s is back after %.1f s.", self.where.address, time.monotonic() - since)

    def _gone_error(self, what: str, error: Exception, budget: float, starting: bool) -> ClusterError:
        if starting:
            return ClusterError(
                f"Cannot reach Redis at {self.where.address} (state_url {self.url}) after trying for {budget:.0f} s: "
                f"{error}. Start redis-server there, or fix the host and port in state_url.")
        return ClusterError(
            f"Lost the connection to Redis at {self.where.address} and it did not come back within {budget:.0f} s "
            f"(while trying to {what}): {error}. Check that redis-server is running and reachable, then resume the run.")

    def _auth_error(self, error: Exception) -> ClusterError:
        w = self.where
        if w.password is None:
            return ClusterError(
                f"Redis at {w.address} requires a password and none was given ({error}); put it in state_url "
                f"(redis://:PASSWORD@{w.address}/{w.db}), ${PASSWORD_ENV} or the file named by ${PASSWORD_FILE_ENV}.")
        user = f" for user {w.username!r}" if w.username else ""
        return ClusterError(
            f"Redis at {w.address} refused the password{user} from {w.password_source} ({error}); "
            f"fix the password there (state_url, ${PASSWORD_ENV} or ${PASSWORD_FILE_ENV}), "
            "or drop it if that server needs none.")
