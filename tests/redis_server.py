"""A throw-away redis-server for tests: loopback only, a free port, its own directory, a password.

``RedisServer(tmp_dir)`` is a context manager; ``start()`` returns once the server answers PING
(polled, no fixed sleep) and ``stop()`` ends it (SIGTERM, so with ``appendonly=True`` it flushes its
append-only file and a later ``start()`` on the same port and directory finds the same data).
Tests that need one skip, with the reason, where redis-server is not installed (and fail there
under ``DEEPGRID_REQUIRE_SERVERS=1``, which .ci/run sets).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers import missing_server

REDIS_SERVER = shutil.which("redis-server")
PASSWORD = "test-only-password"
START_TIMEOUT_S = 20.0


def require_redis_server() -> str:
    """The redis-server binary, or skip the test (say `apt-get install redis-server`); a failure
    instead under DEEPGRID_REQUIRE_SERVERS=1 (tests/helpers.py)."""
    if REDIS_SERVER is None:
        missing_server("redis-server is not installed (apt-get install redis-server)")
    return REDIS_SERVER


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerExited(RuntimeError):
    """redis-server ended before it answered PING (its log's tail is in the message)."""


class RedisServer:
    """One redis-server process. ``url`` carries the password; ``client()`` is a plain redis-py client."""

    def __init__(self, directory: Path, *, password: str | None = PASSWORD, appendonly: bool = False,
                 port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.appendonly = appendonly
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.address}/0"

    def url_without_password(self) -> str:
        return f"redis://{self.address}/0"

    def client(self) -> redis.Redis:
        # No retries inside redis-py: the start-up poll is the retry loop.
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True,
                           socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self) -> RedisServer:
        # A free port can be taken by someone else before the server binds it: try another.
        for attempt in range(3):
            try:
                return self._start_once()
            except ServerExited:
                if self._fixed_port or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> RedisServer:
        binary = require_redis_server()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--daemonize", "no", "--logfile", str(self.directory / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        # appendfsync always: every write is on disk before the reply, so SIGTERM loses nothing.
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_until_up()
        return self

    def _wait_until_up(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with self.client() as probe:
            while True:
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    pass  # not listening yet, or still replaying its append-only file
                try:
                    # Waiting on the process doubles as the poll interval and notices an early exit.
                    self.process.wait(timeout=0.02)
                except subprocess.TimeoutExpired:
                    pass
                else:
                    log = self.directory / "redis.log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    code, self.process = self.process.returncode, None
                    raise ServerExited(f"redis-server on port {self.port} exited with {code}:\n{tail}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
