"""The seed's two-terminal flow, as separate OS processes on loopback:
`deepgrid master CONF` in one, `deepgrid worker -ad HOST -a ALGO` in others."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deepgrid.data.idx import write_idx

DEEPGRID = [sys.executable, "-m", "deepgrid.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_fashion_mnist(directory: Path, n_train: int = 2000, n_test: int = 500) -> None:
    """IDX files shaped like Fashion-MNIST: class k lights up row band k."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, label * 2 : label * 2 + 3, :] = 250
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels)


@pytest.fixture()
def setting(tmp_path: Path) -> tuple[Path, dict[str, str], int]:
    data = tmp_path / "data"
    data.mkdir()
    fake_fashion_mnist(data)
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"""
model: mlp
job_name: cli-test
data_dir: {data}
batch_size: 32
averaging_frequency: 8
epochs: 2
network:
  hidden_layer_sizes: [32]
  activation: relu
""")
    env = {**os.environ, "DEEPGRID_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    return conf, env, free_port()


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(DEEPGRID + args, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_master_and_workers_as_separate_processes(setting, tmp_path: Path) -> None:
    conf, env, port = setting
    address = f"127.0.0.1:{port}"
    master = subprocess.Popen(DEEPGRID + ["master", str(conf), "--port", str(port), "--min-workers", "2",
                                         "--json", "-o", str(tmp_path / "model")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL)
    try:
        refused = run(["worker", "-ad", address, "-t", "worker", "-a", "dbn"], env)
        assert refused.returncode == 2
        assert "trains 'mlp'" in refused.stderr and "Traceback" not in refused.stderr

        first = subprocess.Popen(DEEPGRID + ["worker", "-ad", address, "-a", "mlp", "--workers", "1"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        joined = first.stderr.readline()  # "deepgrid: worker(s) ID joined job ..."
        assert "joined job 'cli-test'" in joined, joined
        worker_id = joined.split("worker(s) ", 1)[1].split()[0]
        status = ""
        for _ in range(60):  # the master waits for a second worker; the first shows in `deepgrid status`
            status = run(["status", "--job", "cli-test"], env).stdout
            if worker_id in status:
                break
            time.sleep(0.5)
        assert worker_id in status and "cli-test" in status

        second = run(["worker", "-ad", address, "-a", "mlp", "--workers", "1"], env, timeout=180)
        assert second.returncode == 0, second.stderr
        assert first.wait(timeout=60) == 0
        out, err = master.communicate(timeout=120)
    finally:
        if master.poll() is None:
            master.kill()
    assert master.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["workers"] == 2 and result["test_accuracy"] > 0.8
    assert (tmp_path / "model" / "weights.safetensors").is_file()


def test_an_unreachable_master_fails_fast_with_one_line(setting) -> None:
    _, env, port = setting
    # The engine gives up after CONNECT_TIMEOUT_S (20 s); the subprocess timeout only guards
    # against a hang (no timed assertion: shared machines are slow).
    result = run(["worker", "-ad", f"127.0.0.1:{port}", "-a", "mlp"], env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("deepgrid: error: No deepgrid master answers")
    assert "Traceback" not in result.stderr


def test_a_bad_worker_type_is_refused(setting) -> None:
    _, env, port = setting
    result = run(["worker", "-ad", f"127.0.0.1:{port}", "-t", "master"], env, timeout=60)
    assert result.returncode == 2 and "not a worker type" in result.stderr


def test_a_worker_finds_the_master_through_zookeeper_alone(setting, tmp_path: Path) -> None:
    """The seed's ZookeeperConfigurationRetriever: the worker is given the registry and the job name only."""
    from tests.zookeeper_server import ZooKeeperServer, require_zookeeper

    require_zookeeper()
    conf, env, port = setting
    with ZooKeeperServer() as zk:
        registry = zk.url("/deepgrid-e2e")
        master = subprocess.Popen(DEEPGRID + ["master", str(conf), "--port", str(port), "--min-workers", "1",
                                             "--registry", registry, "--json", "-o", str(tmp_path / "model")],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL)
        try:
            for _ in range(120):  # until the master has registered the job (no fixed wait)
                listed = run(["conf", "list", "--registry", registry], env)
                if "cli-test" in listed.stdout:
                    break
                assert master.poll() is None, master.stderr.read()[-2000:]
                time.sleep(0.5)
            worker = run(["worker", "--registry", registry, "--job", "cli-test", "-a", "mlp", "--workers", "1"],
                         env, timeout=180)
            assert worker.returncode == 0, worker.stderr[-2000:]
            assert f"master at 127.0.0.1:{port}" in worker.stderr
            out, err = master.communicate(timeout=120)
        finally:
            if master.poll() is None:
                master.kill()
        assert master.returncode == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1])["workers"] == 1


def test_a_killed_master_resumes_and_its_worker_process_reattaches(setting, tmp_path: Path) -> None:
    import signal

    conf, env, port = setting
    conf.write_text(conf.read_text().replace("epochs: 2", "epochs: 30").replace("averaging_frequency: 8",
                                                                                  "averaging_frequency: 2"))
    ckpt = tmp_path / "model" / "checkpoints"
    master_args = ["master", str(conf), "--port", str(port), "--min-workers", "1", "--json", "-o",
                   str(tmp_path / "model")]
    head_pid = None
    master = subprocess.Popen(DEEPGRID + master_args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL)
    worker = subprocess.Popen(DEEPGRID + ["worker", "-ad", f"127.0.0.1:{port}", "-a", "mlp", "--workers", "1"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL)
    resumed = None
    try:
        for _ in range(240):  # until a few checkpoints exist (no fixed wait)
            if ckpt.is_dir() and len(list(ckpt.glob("ckpt-*"))) >= 2:
                break
            assert master.poll() is None, master.stderr.read()[-2000:]
            time.sleep(0.25)
        head_pid = json.loads((tmp_path / "home" / "runs" / "cli-test" / "head.json").read_text())["pid"]
        master.send_signal(signal.SIGKILL)
        master.wait(timeout=30)
        resumed = subprocess.run(DEEPGRID + master_args + ["--resume", str(ckpt)], env=env, capture_output=True,
                                 text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming on the engine head the previous master left" in resumed.stderr
        assert json.loads(resumed.stdout.strip().splitlines()[-1])["workers"] == 1  # the worker came back
        _, worker_err = worker.communicate(timeout=60)
        assert worker.returncode == 0, worker_err[-2000:]
        assert "went away; waiting" in worker_err and worker_err.count("joined job 'cli-test'") == 2
    finally:
        for process in (master, worker):
            if process.poll() is None:
                process.kill()
        if head_pid is not None:  # the resumed master stops the head; make sure, whatever happened
            try:
                os.killpg(head_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
