"""Hosts made of Linux network namespaces, for tests (and benchmarks) that cross machines.

Each host is a network namespace with its own address, HOME and TMPDIR (so Ray's session
files and tokens do not mix), joined to the others through a bridge that lives in a namespace
of its own: nothing is added to the machine's own network. Needs root (CI runs as root);
``unavailable()`` says why it cannot run elsewhere, for a clear skip.

    with Network(["master", "w1", "w2"]) as net:
        master = net.hosts["master"]
        proc = master.popen(["deepgrid", "master", ...])
        net.cut("w1")                      # a partition: w1's link is gone
        net.kill("w2")                     # every process of w2 ends
        net.pids_with("ray::Worker")       # {host: [pid, ...]}: where each actor process runs
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network-namespace hosts need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "network-namespace hosts need iproute2's `ip` (apt-get install iproute2)"
    probe = f"dgprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"this kernel or sandbox refuses network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    command = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    ns: str
    address: str
    home: Path
    veth: str  # this host's end of its link (inside its namespace)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DEEPGRID_"))}
        env.update(HOME=str(self.home), TMPDIR=str(self.home / "tmp"), PYTHONUNBUFFERED="1",
                   DEEPGRID_HOME=str(self.home / ".deepgrid"))
        env.update(extra or {})
        return env

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def popen(self, args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        process = subprocess.Popen(self.command(args), env=self.env(env), cwd=self.home, text=True,
                                   start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def run(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 120,
            **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(args), env=self.env(env), cwd=self.home, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)

    def pids(self) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
        return [int(p) for p in done.stdout.split()]


class Network:
    """Hosts on one subnet (10.77.N.0/24, N random so that parallel runs do not collide)."""

    def __init__(self, names: list[str]) -> None:
        self.tag = f"dg{os.getpid() % 100000}{random.randrange(100)}"
        self.subnet = random.randrange(20, 250)
        self.switch = f"{self.tag}sw"
        self.root = Path(tempfile.mkdtemp(prefix="deepgrid-hosts-"))
        self.hosts: dict[str, Host] = {}
        self._names = names

    def __enter__(self) -> Network:
        try:
            _ip("netns", "add", self.switch)
            _ip("link", "add", "br0", "type", "bridge", ns=self.switch)
            _ip("link", "set", "br0", "up", ns=self.switch)
            for i, name in enumerate(self._names, start=1):
                self.add_host(name, i)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_host(self, name: str, number: int | None = None) -> Host:
        number = number or len(self.hosts) + 1
        ns = f"{self.tag}{name}"
        host_end, switch_end = f"{self.tag[:6]}h{number}", f"{self.tag[:6]}s{number}"
        _ip("netns", "add", ns)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", switch_end)
        _ip("link", "set", host_end, "netns", ns)
        _ip("link", "set", switch_end, "netns", self.switch)
        _ip("link", "set", switch_end, "master", "br0", ns=self.switch)
        _ip("link", "set", switch_end, "up", ns=self.switch)
        address = f"10.77.{self.subnet}.{number}"
        _ip("addr", "add", f"{address}/24", "dev", host_end, ns=ns)
        _ip("link", "set", host_end, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        home = self.root / name
        (home / "tmp").mkdir(parents=True)
        host = Host(name, ns, address, home, host_end)
        self.hosts[name] = host
        return host

    def cut(self, name: str) -> None:
        """A partition: delete the host's link; its processes run on, unreachable."""
        _ip("link", "del", self.hosts[name].veth, ns=self.hosts[name].ns)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal every process in the host's namespace (SIGKILL: the machine is gone)."""
        for pid in self.hosts[name].pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def limit(self, rate: str) -> None:
        """Shape every host's outgoing link with a token bucket (tbf), e.g. rate='100mbit'."""
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "exec", host.ns, "tc", "qdisc", "replace", "dev", host.veth, "root",
                            "tbf", "rate", rate, "burst", "256kb", "latency", "50ms"], check=True,
                           capture_output=True)

    def unlimit(self) -> None:
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "exec", host.ns, "tc", "qdisc", "del", "dev", host.veth, "root"],
                           capture_output=True)

    def bytes_sent(self, name: str) -> int:
        """Bytes the host has sent on its link so far (its interface's counter)."""
        return self._counter(name, "tx_bytes")

    def bytes_received(self, name: str) -> int:
        """Bytes the host has received on its link so far."""
        return self._counter(name, "rx_bytes")

    def _counter(self, name: str, counter: str) -> int:
        host = self.hosts[name]
        done = subprocess.run(["ip", "netns", "exec", host.ns, "cat", f"/sys/class/net/{host.veth}/statistics/{counter}"],
                              capture_output=True, text=True)
        return int(done.stdout.strip() or 0)

    def pids_with(self, fragment: str) -> dict[str, list[int]]:
        """For each host, the pids in its namespace whose command line contains ``fragment``."""
        found: dict[str, list[int]] = {}
        for name, host in self.hosts.items():
            for pid in host.pids():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if fragment in cmdline:
                    found.setdefault(name, []).append(pid)
        return found

    def wait_listening(self, name: str, port: int, timeout: float = 60) -> None:
        """Wait until something listens at the host's address and ``port``, as seen from its own namespace."""
        host = self.hosts[name]
        probe = (f"import socket,sys,time\nd=time.time()+{timeout}\n"
                 f"while time.time()<d:\n  s=socket.socket()\n  s.settimeout(1)\n"
                 f"  if s.connect_ex(('{host.address}',{port}))==0: sys.exit(0)\n  time.sleep(0.2)\nsys.exit(1)")
        if host.run(["python3", "-c", probe], timeout=timeout + 10).returncode != 0:
            raise TimeoutError(f"nothing listens on {host.address}:{port} after {timeout} s")

    def close(self) -> None:
        for host in self.hosts.values():
            for process in host.processes:
                if process.poll() is None:
                    try:
                        os.killpg(process.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        deadline = time.monotonic() + 10
        for host in self.hosts.values():
            for process in host.processes:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for name, host in self.hosts.items():
            self.kill(name)
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
