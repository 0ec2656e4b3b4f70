"""The Redis state tracker: the cluster's shared state on a Redis server (Hazelcast's role in the seed).

Chosen by ``state_url: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (``rediss://`` for TLS). When the
URL carries no password, it is read from ``$DEEPGRID_REDIS_PASSWORD``, else from the file named by
``$DEEPGRID_REDIS_PASSWORD_FILE``. One optional query parameter, ``?retry_timeout_s=30``, bounds how
long an operation retries while Redis is unreachable. Passwords never appear in messages or logs.
``rediss://`` checks the server's certificate against the system's CAs.

A master opens its namespace with ``fresh=True``: what an earlier run of the same job name left is
deleted first, so a run starts empty as with ``memory://``; a master resuming from a checkpoint
(``--resume``) opens it as it is, to carry on the run's ledger and round; readers (``deepgrid status --state``)
open it as it is. README.md ("Redis state tracker") shows how to inspect a run with ``redis-cli``.

Key layout (J is the job name; every key of a run starts with ``deepgrid:J:``, so several runs
share one Redis):

=================================  ======  ===========================================================
key                                type    holds
=================================  ======  ===========================================================
``deepgrid:J:workers``             set     the ids of the registered workers
``deepgrid:J:worker:<id>``         hash    one worker: ``info`` (JSON), ``enabled`` (1/0),
                                           ``last_heartbeat`` (unix seconds), ``jobs_done``,
                                           ``samples``, ``failures``, ``last_loss`` (JSON), and while
                                           it holds a job ``job`` (Job JSON) and ``job_id``
``deepgrid:J:queue``               list    pending jobs as JSON, the next one first
``deepgrid:J:ledger:<phase>:<e>``  hash    batch position -> times trained, for one phase and epoch
``deepgrid:J:run``                 hash    RunState field -> JSON value
``deepgrid:J:metrics``             list    one JSON entry per round, oldest first
``deepgrid:J:marker``              string  set when the namespace is opened; its absence after a
                                           reconnection means Redis lost the run's state
``deepgrid:J:once:<token>``        string  the answer to one write, kept 10 minutes (see below)
``deepgrid:J:lease``               string  the master's lease (JSON: id, host, pid, since), expiring
                                           after 15 s unless renewed (see below)
=================================  ======  ===========================================================

One master per job: a master (``fresh=True``, or ``master=True`` for a resuming one) takes the job's
lease before it touches anything, a key set only if absent, with a 15 s expiry that a thread of the
master renews every 5 s and that ``close()`` deletes. A second master of the same job name on the
same Redis is refused with one line, and the first one's state is left alone. A master that finds
the lease held waits while it runs out: a killed master's lease expires within 15 s, after which a
resumed master takes over; a lease that is renewed meanwhile belongs to a live master and is
refused at once. A master whose lease was taken by another (it was stopped for longer than 15 s)
gets a ClusterError on its next call instead of training beside the new one. Readers (``deepgrid
status``, workers) take no lease.

Atomicity: every read-modify-write (heartbeat, claim, complete, release, remove, enable, clear) is
one Lua script, so it is atomic against every other client; plain multi-key writes are MULTI/EXEC
transactions. The scripts that touch every worker build the worker keys from the prefix, so the
tracker wants one Redis server (optionally with replicas), not a Redis Cluster.

Outages: a connection error is retried with bounded exponential back-off (logged once per outage)
for up to ``retry_timeout_s`` (default 30 s), then raises ``ClusterError``. A write whose reply was
lost could have been applied already, so the writes that are not idempotent (enqueue, complete,
release, remove, metrics) carry a one-time token: a retry returns the first answer instead of
applying the write twice. If Redis comes back *without* the run's keys (restarted with no
persistence), the next operation raises ``ClusterError`` rather than carry on with empty state; run
Redis with ``appendonly yes`` for a run to survive a Redis restart.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthorizationError
from redis.retry import Retry

from deepgrid.errors import ClusterError, ConfigError, invalid
from deepgrid.state.base import (
    SNAPSHOT_METRICS,
    Job,
    RunState,
    WorkerState,
    build_snapshot,
    check_json,
    check_run_fields,
    mask_url,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 6379
PASSWORD_ENV = "DEEPGRID_REDIS_PASSWORD"
PASSWORD_FILE_ENV = "DEEPGRID_REDIS_PASSWORD_FILE"
DEFAULT_RETRY_TIMEOUT_S = 30.0
# At start-up a missing server is a mistake, not an outage: give up sooner, so that with one
# more connect timeout the user hears about it within 30 s.
STARTUP_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 10.0  # every command is short; a server that stops answering is an outage
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.05, 2.0
ONCE_TTL_S = 600  # longer than any retry, so a retried write always finds its first answer
MAX_RETRY_TIMEOUT_S = 86400.0  # a day: longer than any outage worth waiting for
MASKED_PASSWORD = "***"  # how a stored URL's password reads (Conf.to_dict(mask_secrets=True))
# A master's lease on its job name. 15 s: a master killed (or stopped) lets a resumed one take over
# within 15 s, and a live one renews it every 5 s from a thread of its own, so a round that keeps the
# master's main thread away from Redis for minutes never loses it.
LEASE_S = 15.0
LEASE_POLL_S = 0.2  # how often a master waiting for a dead master's lease looks again

URL_FORM = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS)"
# The job name becomes part of every key and of SCAN patterns: keep it free of separators and globs.
_BAD_JOB_CHARS = re.compile(r"[:\s*?\[\]\\{}]")


# -- the URL -----------------------------------------------------------------------------------


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


def check_job_name(job_name: str) -> str:
    if not isinstance(job_name, str) or not job_name or _BAD_JOB_CHARS.search(job_name):
        raise ConfigError(invalid(
            "job_name", job_name, "a non-empty name without ':', spaces or *?[]\\{} (it becomes part of Redis keys)",
            "Name the run like 'fmnist-dbn'."))
    return job_name


# -- the scripts -------------------------------------------------------------------------------
# Each is atomic on the server. The ``once`` key (KEYS[1] where present) holds the first answer of a
# write, so that a retry after a lost reply returns it instead of applying the write again.

_ONCE_HEAD = """
local done = redis.call('GET', KEYS[1])
if done then return done end
"""
_ONCE_TAIL = """
redis.call('SET', KEYS[1], answer, 'EX', ARGV[1])
return answer
"""

# KEYS: once, list; ARGV: ttl, items...
_RPUSH_ONCE = _ONCE_HEAD + """
for i = 2, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
local answer = 'ok'
""" + _ONCE_TAIL

# KEYS: worker; ARGV: field, value. Only an existing worker: a late call must not resurrect it.
_SET_IF_WORKER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: worker, queue. Returns the job held (again) or the one popped, else false.
_CLAIM = """
if redis.call('HGET', KEYS[1], 'enabled') ~= '1' then return false end
local held = redis.call('HGET', KEYS[1], 'job')
if held then return held end
local job = redis.call('LPOP', KEYS[2])
if not job then return false end
redis.call('HSET', KEYS[1], 'job', job, 'job_id', cjson.decode(job).id)
return job
"""

# KEYS: once, worker, ledger, run; ARGV: ttl, job_id, n_samples, loss JSON, now.
_COMPLETE = _ONCE_HEAD + """
local answer = '0'
if redis.call('HGET', KEYS[2], 'job_id') == ARGV[2] then
  local job = cjson.decode(redis.call('HGET', KEYS[2], 'job'))
  for p = job.start, job.stop - 1 do redis.call('HINCRBY', KEYS[3], string.format('%d', p), 1) end
  redis.call('HDEL', KEYS[2], 'job', 'job_id')
  redis.call('HINCRBY', KEYS[2], 'jobs_done', 1)
  redis.call('HINCRBY', KEYS[2], 'samples', ARGV[3])
  redis.call('HSET', KEYS[2], 'last_loss', ARGV[4], 'last_heartbeat', ARGV[5])
  redis.call('HINCRBY', KEYS[4], 'batches_run', job.stop - job.start)
  redis.call('HINCRBY', KEYS[4], 'samples_run', ARGV[3])
  answer = '1'
end
""" + _ONCE_TAIL

# Put a held job back at the front with attempt+1 (release, and remove of a worker holding one).
_REQUEUE = """
local answer = ''
local held = redis.call('HGET', KEYS[2], 'job')
if held then
  local job = cjson.decode(held)
  job.attempt = (job.attempt or 0) + 1
  answer = cjson.encode(job)
  redis.call('LPUSH', KEYS[3], answer)
  redis.call('HDEL', KEYS[2], 'job', 'job_id')
end
"""
# KEYS: once, worker, queue; ARGV: ttl.
_RELEASE = _ONCE_HEAD + _REQUEUE + _ONCE_TAIL
# KEYS: once, worker, queue, workers; ARGV: ttl, worker id.
_REMOVE = _ONCE_HEAD + _REQUEUE + """
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[4], ARGV[2])
""" + _ONCE_TAIL

# KEYS[1]: workers; ARGV[1]: worker key prefix. Every worker as {id, {field, value, ...}}.
_READ_WORKERS = """
local workers = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HGETALL', ARGV[1] .. id)
  if #h > 0 then workers[#workers + 1] = {id, h} end
end
"""
# KEYS: workers; ARGV: worker key prefix. In one read.
_ALL_WORKERS = _READ_WORKERS + "return workers\n"

# KEYS: workers, queue, run, metrics; ARGV: worker key prefix, metrics to keep. One consistent read.
_SNAPSHOT = _READ_WORKERS + """
local n = tonumber(ARGV[2])
local metrics = {}
if n > 0 then metrics = redis.call('LRANGE', KEYS[4], -n, -1) end
return {workers, redis.call('HGETALL', KEYS[3]), redis.call('LLEN', KEYS[2]), metrics}
"""

# KEYS: workers, queue; ARGV: worker key prefix.
_CLEAR_JOBS = """
redis.call('DEL', KEYS[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do redis.call('HDEL', ARGV[1] .. id, 'job', 'job_id') end
return 1
"""


# KEYS: lease; ARGV: token, ms. Renew our lease; take it again if it lapsed (an outage, a Redis
# restart) and no one else took it. 0: another master holds it.
_RENEW_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

# KEYS: lease; ARGV: token. Let go of our lease only.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _describe_holder(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {int(info['pid'])} on {str(info['host'])[:100]}, since {time.ctime(float(info['since']))}"
    except (ValueError, TypeError, KeyError):
        return f"lease {holder[:60]!r}"


def _pairs(flat: list[Any]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _worker_from_hash(worker_id: str, h: Mapping[str, str]) -> WorkerState:
    job = Job.from_dict(json.loads(h["job"])) if h.get("job") else None
    last_loss = json.loads(h["last_loss"]) if h.get("last_loss") else None
    return WorkerState(
        worker_id, json.loads(h.get("info", "{}")), h.get("enabled") == "1", float(h.get("last_heartbeat", 0.0)),
        job, int(h.get("jobs_done", 0)), int(h.get("samples", 0)), int(h.get("failures", 0)), last_loss)


def _scalar(value: Any) -> Any:
    """json.dumps' fallback: a numpy or torch scalar becomes its Python number."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _job_json(job: Job) -> str:
    # The id travels with the job, so that the scripts never have to format one themselves.
    return json.dumps({**job.to_dict(), "id": job.id})


# -- the tracker -------------------------------------------------------------------------------


class RedisStateTracker:
    """A :class:`~deepgrid.state.base.StateTracker` on a Redis server. See the module docstring.

    ``fresh=True`` (what a master asks for) deletes whatever an earlier run of the same job name
    left, so that, as with the in-memory tracker, a run starts empty; a reader such as
    ``deepgrid status`` opens the namespace as it is. ``master`` (default: ``fresh``) takes the
    job's lease first, so that a second master of the job is refused (see the module docstring);
    a master resuming a run passes ``fresh=False, master=True``. ``lease_s``: the lease's expiry.
    """

    def __init__(self, url: str, job_name: str = "deepgrid", *, fresh: bool = False, master: bool | None = None,
                 retry_timeout_s: float | None = None, env: Mapping[str, str] | None = None,
                 lease_s: float = LEASE_S) -> None:
        self.job_name = check_job_name(job_name)
        self.where = parse_redis_url(url, env)
        self.url = mask_url(url)  # the only form of the URL this object keeps in plain view
        self.retry_timeout_s = float(retry_timeout_s if retry_timeout_s is not None else self.where.retry_timeout_s)
        if not 0 < self.retry_timeout_s <= MAX_RETRY_TIMEOUT_S:
            raise ConfigError(invalid("retry_timeout_s", retry_timeout_s,
                                      f"a number of seconds above 0 and at most {MAX_RETRY_TIMEOUT_S:.0f}"))
        if not 0.5 <= lease_s <= 3600:
            raise ConfigError(invalid("lease_s", lease_s, "seconds from 0.5 to 3600"))
        warn_if_exposed(self.where)
        self.master = fresh if master is None else master
        self.lease_s = float(lease_s)
        self.prefix = f"deepgrid:{job_name}:"
        self._worker_prefix = self.prefix + "worker:"
        self._workers_key = self.prefix + "workers"
        self._queue_key = self.prefix + "queue"
        self._run_key = self.prefix + "run"
        self._metrics_key = self.prefix + "metrics"
        self._marker_key = self.prefix + "marker"
        self._lease_key = self.prefix + "lease"
        self._lease_token = json.dumps({"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                                        "since": time.time()})
        self._lease_stop = threading.Event()
        self._lease_thread: threading.Thread | None = None
        self._lease_lost: str | None = None  # who took the lease from this master, once it did
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None
        self._armed = False  # set once the marker exists: from then on a new connection checks it
        self._lost = False
        self._closed = False
        w = self.where
        self._redis = redis.Redis(
            host=w.host, port=w.port, db=w.db, username=w.username, password=w.password, ssl=w.tls,
            socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
            # Our own loop retries, with the one-time tokens; redis-py retrying underneath could
            # apply a write twice.
            retry=Retry(NoBackoff(), 0), decode_responses=True, redis_connect_func=self._on_connect,
            # Redis refuses a client name with spaces or characters outside printable ASCII: a
            # non-ASCII job name is spelled with escapes there (the keys themselves are binary-safe).
            client_name="deepgrid:" + job_name.encode("ascii", "backslashreplace").decode("ascii"),
        )
        r = self._redis
        self._rpush_once = r.register_script(_RPUSH_ONCE)
        self._set_if_worker = r.register_script(_SET_IF_WORKER)
        self._claim = r.register_script(_CLAIM)
        self._complete = r.register_script(_COMPLETE)
        self._release = r.register_script(_RELEASE)
        self._remove = r.register_script(_REMOVE)
        self._all_workers = r.register_script(_ALL_WORKERS)
        self._snapshot = r.register_script(_SNAPSHOT)
        self._clear_jobs = r.register_script(_CLEAR_JOBS)
        self._renew_lease = r.register_script(_RENEW_LEASE)
        self._release_lease = r.register_script(_RELEASE_LEASE)
        try:
            self._call("connect", r.ping, budget_s=min(self.retry_timeout_s, STARTUP_TIMEOUT_S), starting=True)
            if self.master:  # before anything is cleared: a second master must not purge the first one's state
                self._take_lease()
            if fresh:
                self._call("clear the earlier run's state", self._purge)
            self._call("open the run's namespace", lambda: r.set(self._marker_key, repr(time.time()), nx=True))
        except BaseException:
            self._stop_lease(release=True)
            self._redis.close()
            raise
        self._armed = True

    def __repr__(self) -> str:
        return f"RedisStateTracker({self.url!r}, job_name={self.job_name!r})"

    @property
    def unreachable(self) -> bool:
        """True from the first failed call of an outage until a call succeeds again.

        A master that is stopping because Redis is gone reads this to skip its courtesy writes
        (status, final snapshot), each of which would otherwise retry for ``retry_timeout_s``.
        """
        with self._outage_lock:
            return self._outage_since is not None

    # -- the master's lease ----------------------------------------------------------------------
    def _take_lease(self) -> None:
        """Take the job's lease, waiting while a dead master's runs out; refuse a live master's."""
        r, key, ms = self._redis, self._lease_key, int(self.lease_s * 1000)
        deadline: float | None = None  # when the lease first seen has run out, unless renewed
        last_ttl: int | None = None
        said = False
        while True:
            if self._call("take the job's lease", lambda: r.set(key, self._lease_token, nx=True, px=ms)):
                break

            def read() -> list[Any]:
                with r.pipeline(transaction=True) as p:
                    p.get(key)
                    p.pttl(key)
                    return p.execute()

            holder, ttl = self._call("read the job's lease", read)
            if holder is None:
                continue  # it ran out just now: take it
            # A lease whose expiry moved later was renewed: its master is alive. One that never
            # expires was not set by deepgrid.
            if deadline is None and ttl >= 0:
                deadline = time.monotonic() + ttl / 1000 + 1.0
            if ttl < 0 or (last_ttl is not None and ttl > last_ttl) or (deadline and time.monotonic() > deadline):
                raise ClusterError(
                    f"Job {self.job_name!r} on Redis at {self.where.address} belongs to another master that is "
                    f"still running ({_describe_holder(holder)}); two masters must never train one job. Stop that "
                    "master first (a killed master's lease runs out within seconds and a resumed master then takes "
                    "over), or give this run another job_name.")
            if not said:
                log.warning("Job %r on Redis at %s is held by another master (%s); waiting up to %.0f s for its "
                            "lease to run out, as a master that died leaves it.", self.job_name, self.where.address,
                            _describe_holder(holder), ttl / 1000)
                said = True
            last_ttl = ttl
            time.sleep(LEASE_POLL_S)
        self._lease_thread = threading.Thread(target=self._keep_lease, name="deepgrid-redis-lease", daemon=True)
        self._lease_thread.start()

    def _keep_lease(self) -> None:
        ms = int(self.lease_s * 1000)
        while not self._lease_stop.wait(self.lease_s / 3):
            try:
                held = self._renew_lease([self._lease_key], [self._lease_token, ms])
            except Exception as e:  # an outage: the training thread's own calls report it; try again later
                log.debug("could not renew the lease of job %r: %s", self.job_name, e)
                continue
            if not held:
                try:
                    holder = self._redis.get(self._lease_key) or "?"
                except Exception:
                    holder = "?"
                self._lease_lost = _describe_holder(holder)
                log.warning("Job %r: another master (%s) took this master's lease on Redis at %s.",
                            self.job_name, self._lease_lost, self.where.address)
                return

    def _stop_lease(self, *, release: bool) -> None:
        """Stop renewing the lease and, with ``release``, let go of it (a clean end: the next master
        need not wait for it to run out)."""
        self._lease_stop.set()
        thread, self._lease_thread = self._lease_thread, None
        if thread is None:
            return
        thread.join(timeout=2)
        if release and self._lease_lost is None and not self.unreachable:
            try:
                self._release_lease([self._lease_key], [self._lease_token])
            except Exception as e:  # it runs out by itself within lease_s
                log.debug("could not release the lease of job %r: %s", self.job_name, e)

    # -- connection ----------------------------------------------------------------------------
    def _on_connect(self, connection: Any) -> None:
        """Every new connection (a reconnection too): handshake, then check the run's keys survived."""
        connection.on_connect()
        if self._armed:
            connection.send_command("EXISTS", self._marker_key)
            if not int(connection.read_response()):
                self._lost = True

    def _call(self, what: str, fn: Callable[[], T], *, budget_s: float | None = None, starting: bool = False) -> T:
        """Run ``fn``; retry connection errors with bounded exponential back-off; map errors to one line."""
        if self._closed:
            raise ClusterError(f"The Redis state tracker of job {self.job_name!r} is closed; cannot {what}.")
        if self._lease_lost is not None:
            raise ClusterError(
                f"Another master ({self._lease_lost}) took over job {self.job_name!r} on Redis at {self.where.address} "
                f"while this one did not renew its lease for {self.lease_s:.0f} s (it was stopped or cut off); this "
                "master stops so that two masters never train one job.")
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

    def _once(self) -> str:
        return f"{self.prefix}once:{uuid.uuid4().hex}"

    def _ttl(self) -> int:
        return int(max(ONCE_TTL_S, 2 * self.retry_timeout_s))

    # -- workers -------------------------------------------------------------------------------
    def add_worker(self, worker_id: str, info: dict[str, Any]) -> None:
        check_json(f"Worker {worker_id!r}'s info", info)
        fields = {"info": json.dumps(info), "enabled": "1", "last_heartbeat": repr(time.time())}

        def add() -> None:
            # A worker that comes back keeps its counters (and a job it still holds), as in memory.
            with self._redis.pipeline(transaction=True) as p:
                p.sadd(self._workers_key, worker_id)
                p.hset(self._worker_prefix + worker_id, mapping=fields)
                p.execute()

        self._call(f"add worker {worker_id!r}", add)

    def remove_worker(self, worker_id: str) -> Job | None:
        keys = [self._once(), self._worker_prefix + worker_id, self._queue_key, self._workers_key]
        out = self._call(f"remove worker {worker_id!r}", lambda: self._remove(keys, [self._ttl(), worker_id]))
        return Job.from_dict(json.loads(out)) if out else None

    def workers(self) -> dict[str, WorkerState]:
        rows = self._call("read the workers", lambda: self._all_workers([self._workers_key], [self._worker_prefix]))
        return {wid: _worker_from_hash(wid, _pairs(h)) for wid, h in rows}

    def set_enabled(self, worker_id: str, enabled: bool) -> bool:
        key, value = self._worker_prefix + worker_id, "1" if enabled else "0"
        return bool(self._call(f"enable worker {worker_id!r}", lambda: self._set_if_worker([key], ["enabled", value])))

    def heartbeat(self, worker_id: str, now: float | None = None) -> bool:
        stamp = repr(float(time.time() if now is None else now))
        key = self._worker_prefix + worker_id
        return bool(self._call(f"record a heartbeat of {worker_id!r}",
                               lambda: self._set_if_worker([key], ["last_heartbeat", stamp])))

    def stale_workers(self, timeout_s: float, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        return sorted(wid for wid, w in self.workers().items() if w.enabled and now - w.last_heartbeat > timeout_s)

    # -- jobs ----------------------------------------------------------------------------------
    def enqueue_jobs(self, jobs: Iterable[Job]) -> None:
        items = [_job_json(job) for job in jobs]
        if items:
            keys = [self._once(), self._queue_key]
            self._call("enqueue jobs", lambda: self._rpush_once(keys, [self._ttl(), *items]))

    def claim_job(self, worker_id: str) -> Job | None:
        keys = [self._worker_prefix + worker_id, self._queue_key]
        out = self._call(f"hand a job to {worker_id!r}", lambda: self._claim(keys))
        return Job.from_dict(json.loads(out)) if out else None

    def complete_job(self, worker_id: str, job_id: str, n_samples: int, loss: float | None) -> bool:
        phase, _, rest = job_id.rpartition("/")
        phase, _, epoch = phase.rpartition("/")
        if not phase or not epoch.lstrip("-").isdigit():
            return False  # not an id this tracker handed out, so not a job the worker holds
        keys = [self._once(), self._worker_prefix + worker_id, self._ledger_key(phase, int(epoch)), self._run_key]
        # float(): a numpy scalar loss is fine for the memory tracker, so it must be here too.
        loss_json = json.dumps(None if loss is None else float(loss))
        args = [self._ttl(), job_id, int(n_samples), loss_json, repr(time.time())]
        return self._call(f"complete job {job_id} of {worker_id!r}", lambda: self._complete(keys, args)) == "1"

    def release_job(self, worker_id: str) -> Job | None:
        keys = [self._once(), self._worker_prefix + worker_id, self._queue_key]
        out = self._call(f"release the job of {worker_id!r}", lambda: self._release(keys, [self._ttl()]))
        return Job.from_dict(json.loads(out)) if out else None

    def pending_jobs(self) -> int:
        return int(self._call("count pending jobs", lambda: self._redis.llen(self._queue_key)))

    def in_flight(self) -> dict[str, Job]:
        return {wid: w.job for wid, w in self.workers().items() if w.job is not None}

    def clear_jobs(self) -> None:
        self._call("clear the jobs", lambda: self._clear_jobs([self._workers_key, self._queue_key], [self._worker_prefix]))

    # -- ledger --------------------------------------------------------------------------------
    def _ledger_key(self, phase: str, epoch: int) -> str:
        return f"{self.prefix}ledger:{phase}:{int(epoch)}"

    def trained_batches(self, phase: str, epoch: int) -> dict[int, int]:
        counts = self._call("read the ledger", lambda: self._redis.hgetall(self._ledger_key(phase, epoch)))
        return {int(k): int(v) for k, v in counts.items()}

    # -- run -----------------------------------------------------------------------------------
    def update_run(self, **fields: Any) -> RunState:
        check_run_fields(fields)
        fields.setdefault("updated_at", time.time())
        try:
            # The memory tracker takes a numpy or torch scalar (a loss, say) as it is: so must this one.
            mapping = {k: json.dumps(v, default=_scalar) for k, v in fields.items()}
        except (TypeError, ValueError):
            check_json("A run field", fields)  # raises the one-line ClusterError
            raise

        def update() -> dict[str, str]:
            with self._redis.pipeline(transaction=True) as p:
                p.hset(self._run_key, mapping=mapping)
                p.hgetall(self._run_key)
                return p.execute()[1]

        return self._run_from_hash(self._call("update the run state", update))

    @staticmethod
    def _run_from_hash(h: Mapping[str, str]) -> RunState:
        return RunState.from_dict({k: json.loads(v) for k, v in h.items()})

    def run_state(self) -> RunState:
        return self._run_from_hash(self._call("read the run state", lambda: self._redis.hgetall(self._run_key)))

    def record_metrics(self, entry: dict[str, Any]) -> None:
        check_json("A metrics entry", entry)
        keys, item = [self._once(), self._metrics_key], json.dumps(entry)
        self._call("record metrics", lambda: self._rpush_once(keys, [self._ttl(), item]))

    def metrics(self, last: int | None = None) -> list[dict[str, Any]]:
        if last is not None and last <= 0:
            return []
        start = 0 if last is None else -last
        items = self._call("read the metrics", lambda: self._redis.lrange(self._metrics_key, start, -1))
        return [json.loads(item) for item in items]

    # -- whole ---------------------------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        keys = [self._workers_key, self._queue_key, self._run_key, self._metrics_key]
        rows, run, pending, recent = self._call(
            "take a snapshot", lambda: self._snapshot(keys, [self._worker_prefix, SNAPSHOT_METRICS]))
        workers = {wid: _worker_from_hash(wid, _pairs(h)) for wid, h in rows}
        return build_snapshot(self._run_from_hash(_pairs(run)), workers, int(pending),
                              [json.loads(m) for m in recent], now)

    def purge(self) -> int:
        """Delete this job's keys (an earlier run's state; the marker stays); returns how many."""
        return self._call("delete the job's keys", self._purge)

    def _purge(self) -> int:
        deleted = 0
        batch: list[str] = []
        for key in self._redis.scan_iter(match=self.prefix + "*", count=500):
            if key not in (self._marker_key, self._lease_key):  # the lease is this master's own
                batch.append(key)
            if len(batch) >= 500:
                deleted += self._redis.unlink(*batch)
                batch = []
        if batch:
            deleted += self._redis.unlink(*batch)
        return deleted

    def close(self) -> None:
        if not self._closed:
            self._stop_lease(release=True)
            self._closed = True
            self._redis.close()
