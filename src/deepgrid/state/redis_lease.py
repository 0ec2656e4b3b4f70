"""One master per job: a master's lease on its job name in Redis.

A master (``fresh=True``, or ``master=True`` for a resuming one) takes the job's lease before it
touches anything, a key set only if absent, with a 15 s expiry that a thread of the master renews
every 5 s and that ``close()`` deletes. A second master of the same job name on the same Redis is
refused with one line, and the first one's state is left alone. A master that finds the lease held
waits while it runs out: a killed master's lease expires within 15 s, after which a resumed master
takes over; a lease that is renewed meanwhile belongs to a live master and is refused at once. A
master whose lease was taken by another (it was stopped for longer than 15 s) gets a ClusterError
on its next call instead of training beside the new one. Readers (``deepgrid status``, workers)
take no lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from deepgrid.errors import ClusterError
from deepgrid.state.redis_connection import RedisConnection

log = logging.getLogger("deepgrid.state.redis")  # the tracker's one logger (see redis_address)

# 15 s: a master killed (or stopped) lets a resumed one take over within 15 s, and a live one renews
# it every 5 s from a thread of its own, so a round that keeps the master's main thread away from
# Redis for minutes never loses it.
LEASE_S = 15.0
LEASE_POLL_S = 0.2  # how often a master waiting for a dead master's lease looks again

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


def describe_holder(holder: str) -> str:
    """Who holds a lease, from its JSON, for messages (a lease not set by deepgrid: its start)."""
    try:
        info = json.loads(holder)
        return f"pid {int(info['pid'])} on {str(info['host'])[:100]}, since {time.ctime(float(info['since']))}"
    except (ValueError, TypeError, KeyError):
        return f"lease {holder[:60]!r}"


class MasterLease:
    """One master's lease on ``key``: :meth:`take` it, then a thread renews it until :meth:`stop`.

    ``token`` is what the lease key holds while this master has it; ``lost`` says who took it over,
    once another master did.
    """

    def __init__(self, connection: RedisConnection, key: str, lease_s: float = LEASE_S) -> None:
        self._conn = connection
        self.key = key
        self.lease_s = float(lease_s)
        self.token = json.dumps({"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.time()})
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = connection.client.register_script(_RENEW_LEASE)
        self._release = connection.client.register_script(_RELEASE_LEASE)

    def take(self) -> None:
        """Take the job's lease, waiting while a dead master's runs out; refuse a live master's."""
        conn = self._conn
        r, key, ms = conn.client, self.key, int(self.lease_s * 1000)
        deadline: float | None = None  # when the lease first seen has run out, unless renewed
        last_ttl: int | None = None
        said = False
        while True:
            if conn.call("take the job's lease", lambda: r.set(key, self.token, nx=True, px=ms)):
                break

            def read() -> list[Any]:
                with r.pipeline(transaction=True) as p:
                    p.get(key)
                    p.pttl(key)
                    return p.execute()

            holder, ttl = conn.call("read the job's lease", read)
            if holder is None:
                continue  # it ran out just now: take it
            # A lease whose expiry moved later was renewed: its master is alive. One that never
            # expires was not set by deepgrid.
            if deadline is None and ttl >= 0:
                deadline = time.monotonic() + ttl / 1000 + 1.0
            if ttl < 0 or (last_ttl is not None and ttl > last_ttl) or (deadline and time.monotonic() > deadline):
                raise ClusterError(
                    f"Job {conn.job_name!r} on Redis at {conn.where.address} belongs to another master that is "
                    f"still running ({describe_holder(holder)}); two masters must never train one job. Stop that "
                    "master first (a killed master's lease runs out within seconds and a resumed master then takes "
                    "over), or give this run another job_name.")
            if not said:
                log.warning("Job %r on Redis at %s is held by another master (%s); waiting up to %.0f s for its "
                            "lease to run out, as a master that died leaves it.", conn.job_name, conn.where.address,
                            describe_holder(holder), ttl / 1000)
                said = True
            last_ttl = ttl
            time.sleep(LEASE_POLL_S)
        self._thread = threading.Thread(target=self._keep, name="deepgrid-redis-lease", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        ms = int(self.lease_s * 1000)
        job_name = self._conn.job_name
        while not self._stop.wait(self.lease_s / 3):
            try:
                held = self._renew([self.key], [self.token, ms])
            except Exception as e:  # an outage: the training thread's own calls report it; try again later
                log.debug("could not renew the lease of job %r: %s", job_name, e)
                continue
            if not held:
                try:
                    holder = self._conn.client.get(self.key) or "?"
                except Exception:
                    holder = "?"
                self.lost = describe_holder(holder)
                log.warning("Job %r: another master (%s) took this master's lease on Redis at %s.",
                            job_name, self.lost, self._conn.where.address)
                return

    def stop(self, *, release: bool) -> None:
        """Stop renewing the lease and, with ``release``, let go of it (a clean end: the next master
        need not wait for it to run out)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(timeout=2)
        if release and self.lost is None and not self._conn.unreachable:
            try:
                self._release([self.key], [self.token])
            except Exception as e:  # it runs out by itself within lease_s
                log.debug("could not release the lease of job %r: %s", self._conn.job_name, e)
