"""A real, throwaway ZooKeeper server for tests: standalone, loopback only, its own data directory.

Uses Debian's ``zookeeper`` package (``/usr/share/java/zookeeper.jar``, whose manifest names the
jars it needs) and the machine's JRE. The server listens on a free port of 127.0.0.1
(``clientPortAddress``), its admin web server is off (it would take port 8080), and readiness is
polled with the ``ruok`` four-letter word, which the generated zoo.cfg whitelists.

    with ZooKeeperServer() as zk:
        registry = registry_from_url(zk.url("/deepgrid"))
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ZOOKEEPER_JAR = Path(os.environ.get("DEEPGRID_TEST_ZOOKEEPER_JAR", "/usr/share/java/zookeeper.jar"))
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
START_TIMEOUT_S = 90.0  # a JVM on a busy 2-core machine can take a while


def zookeeper_available() -> str | None:
    """None if a server can be started here, else why not (for ``pytest.skip``)."""
    if shutil.which("java") is None:
        return "no java on PATH (install a JRE)"
    if not ZOOKEEPER_JAR.is_file():
        return f"{ZOOKEEPER_JAR} not found (apt-get install zookeeper)"
    return None


def require_zookeeper() -> None:
    """Skip the test where no ZooKeeper server (or kazoo) can be had here; a failure instead under
    DEEPGRID_REQUIRE_SERVERS=1 (tests/helpers.py)."""
    from tests.helpers import import_or_missing, missing_server

    import_or_missing("kazoo", "the ZooKeeper registry needs kazoo (pip install 'deepgrid[cluster]')")
    why_not = zookeeper_available()
    if why_not:
        missing_server(f"no ZooKeeper server for tests: {why_not}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def four_letter_word(port: int, word: bytes, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(word)
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


class ZooKeeperServer:
    """One standalone ZooKeeper on 127.0.0.1:<free port>; ``start``/``stop`` or use as a context manager."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="deepgrid-zk-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, root: str = "/deepgrid") -> str:
        return f"zk://{self.address}{root}"

    @property
    def log_path(self) -> Path:
        return self.directory / "zookeeper.log"

    def start(self) -> ZooKeeperServer:
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        config = self.directory / "zoo.cfg"
        config.write_text(
            "tickTime=500\n"  # short ticks: sessions of stopped clients expire quickly
            f"dataDir={data}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr\n"
            "maxClientCnxns=0\n"
        )
        command = ["java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", str(ZOOKEEPER_JAR), MAIN_CLASS, str(config)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited with status {self.process.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                if four_letter_word(self.port, b"ruok") == b"imok":
                    return self
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)  # poll interval, not a wait for something to happen
        self.stop()
        raise RuntimeError(f"ZooKeeper did not answer on {self.address} within {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """Stop the server, keeping its data (``start`` again brings the same tree back)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ZooKeeperServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
