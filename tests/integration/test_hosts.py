"""The cluster across real hosts: network namespaces joined by a bridge, each with its own
address, HOME and TMPDIR, running `deepgrid master` and `deepgrid worker` as a user would.

Where each process runs is checked by the namespace it lives in (``ip netns pids``): a worker
host must run its own ``ray::Worker`` actor processes, the master's host none of them.
Needs root (CI runs as root); elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_master_worker_cli import fake_fashion_mnist
from tests.netns import Host, Network, unavailable

REASON = unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

DEEPGRID = [sys.executable, "-m", "deepgrid.cli"]
PORT = 6380  # each host has its own network stack: the default port is free on each
ACTOR = "ray::Worker"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hosts-data")
    fake_fashion_mnist(directory, n_train=3000, n_test=500)
    return directory


def write_conf(path: Path, data_dir: Path, **extra: object) -> Path:
    fields = {"model": "mlp", "job_name": "hosts", "data_dir": str(data_dir), "batch_size": 32,
              "averaging_frequency": 4, "epochs": 4, **extra}
    lines = [f"{k}: {json.dumps(v)}" for k, v in fields.items()]
    path.write_text("\n".join(lines) + "\nnetwork:\n  hidden_layer_sizes: [64]\n  activation: relu\n")
    return path


def start_master(master: Host, conf: Path, *args: str) -> subprocess.Popen:
    return master.popen(DEEPGRID + ["master", str(conf), "--bind", master.address, "--json", *args],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_token(master: Host, timeout: float = 60) -> Path:
    """The master makes its token on start (its HOME is new); a worker host is given the file."""
    token = master.home / ".ray" / "auth_token"
    deadline = time.monotonic() + timeout
    while not token.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert token.exists(), "the master made no Ray token"
    assert token.stat().st_mode & 0o077 == 0, "the token must be readable by its owner only"
    return token


def start_worker(host: Host, master: Host, token: Path | None, *args: str) -> subprocess.Popen:
    token_args = ["--token-file", str(token)] if token else []
    return host.popen(DEEPGRID + ["worker", "-ad", f"{master.address}:{PORT}", "-a", "mlp", "--workers", "1",
                                  *token_args, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"timed out; stderr:\n{err[-3000:]}") from None
    return process.returncode, out, err


def test_worker_hosts_train_on_their_own_cores(data_dir: Path, tmp_path: Path) -> None:
    """(a) A master host and two worker hosts: each worker host's actors run in its own namespace,
    the master's host runs none (--workers 0), and the model trains to a sound accuracy."""
    with Network(["master", "w1", "w2"]) as net:
        master, w1, w2 = net.hosts["master"], net.hosts["w1"], net.hosts["w2"]
        conf = write_conf(tmp_path / "conf.yaml", data_dir, epochs=6)
        run = start_master(master, conf, "--min-workers", "2", "-o", str(tmp_path / "model"))
        token = wait_token(master)
        workers = [start_worker(w1, master, token), start_worker(w2, master, token)]
        seen: dict[str, set[int]] = {}
        while run.poll() is None:  # where does each actor process live, while the run trains?
            for name, pids in net.pids_with(ACTOR).items():
                seen.setdefault(name, set()).update(pids)
            time.sleep(0.3)
        code, out, err = finish(run)
        assert code == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        for worker in workers:
            worker_code, _, worker_err = finish(worker, 60)
            assert worker_code == 0, worker_err[-2000:]
            assert "joined the master's engine" in worker_err
    print(f"\nactor processes by host: {seen}; accuracy {result['test_accuracy']}")
    assert seen.get("w1") and seen.get("w2"), f"actor processes by host: {seen}"
    assert "master" not in seen, f"the master's host ran worker actors: {seen}"
    assert result["workers"] == 2
    assert result["test_accuracy"] > 0.8, result
