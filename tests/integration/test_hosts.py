"""The cluster across real hosts: network namespaces joined by a bridge, each with its own
address, HOME and TMPDIR, running `deepgrid master` and `deepgrid worker` as a user would.

Where each process runs is checked by the namespace it lives in (``ip netns pids``): a worker
host must run its own ``ray::Worker`` actor processes, the master's host none of them.
Needs root (CI runs as root); elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from deepgrid.distributed.cluster import RAY_SETTINGS
from deepgrid.distributed.engine import LEAN_SETTINGS
from tests.helpers import assert_user_error, missing_server
from tests.integration.test_master_worker_cli import fake_fashion_mnist
from tests.netns import Host, Network, unavailable

REASON = unavailable()


@pytest.fixture(autouse=True)
def hosts_available() -> None:
    """Skip where namespaces cannot be made (not root); under DEEPGRID_REQUIRE_SERVERS=1 (CI, which
    runs as root) fail instead, so that CI never passes green without these tests."""
    if REASON is not None:
        missing_server(REASON)

DEEPGRID = [sys.executable, "-m", "deepgrid.cli"]
PORT = 6380  # each host has its own network stack: the default port is free on each
ACTOR = "ray::Worker"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hosts-data")
    fake_fashion_mnist(directory, n_train=3000, n_test=500)
    return directory


def write_conf(path: Path, data_dir: Path | None, **extra: object) -> Path:
    """A small MLP job; ``data_dir`` None leaves each host to find its data ($DEEPGRID_DATA)."""
    fields = {"model": "mlp", "job_name": "hosts", "batch_size": 32, "averaging_frequency": 4, "epochs": 4,
              **({"data_dir": str(data_dir)} if data_dir else {}), **extra}
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


class Lines:
    """A process's stderr lines, read as they come, each with the time it arrived."""

    def __init__(self, stream, on_line: Callable[[str], None] | None = None) -> None:
        self.lines: list[tuple[float, str]] = []
        self.on_line = on_line  # called in the reader thread as each line arrives
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        try:
            for line in stream:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                if self.on_line is not None:
                    self.on_line(line)
        except ValueError:  # the test closed the stream (finish() after a kill) while this thread read it
            pass

    def text(self) -> str:
        """The lines, less the effective configuration (YAML) that the master prints first."""
        return "\n".join(line for _, line in self.lines
                         if line.startswith("deepgrid") or not re.match(r"\s*([a-z_0-9]+:( |$)|- )", line))

    def wait_for(self, pattern: str, timeout: float = 120, after: float = 0.0) -> tuple[float, str]:
        """The first line matching ``pattern`` that arrived after ``after``; waits for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for stamp, line in list(self.lines):
                if stamp >= after and re.search(pattern, line):
                    return stamp, line
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.text()[-6000:]}")

    def join(self, timeout: float = 30) -> None:
        self._thread.join(timeout)


def worker_ids_of(lines: Lines, address: str) -> list[str]:
    """The ids of the workers that joined the master from ``address`` (its log says so)."""
    return [m.group(1) for _, line in lines.lines
            if (m := re.search(r"worker (\S+) joined from .*\(" + re.escape(address) + r"\)", line))]


def start_redis(net: Network, name: str) -> str:
    """A redis-server on the host, bound to its address, with a password; returns the state URL."""
    from tests.redis_server import require_redis_server

    host = net.hosts[name]
    host.popen([require_redis_server(), "--bind", host.address, "--port", "6379", "--requirepass", "s3cret",
                "--dir", str(host.home), "--appendonly", "yes", "--save", ""],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    net.wait_listening(name, 6379)
    return f"redis://:s3cret@{host.address}:6379/0"


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
    the master's host runs none (--workers 0), and the model trains to a sound accuracy. The
    training data reach each host once, however many actors it runs (w1 runs two)."""
    with Network(["master", "w1", "w2"]) as net:
        master, w1, w2 = net.hosts["master"], net.hosts["w1"], net.hosts["w2"]
        conf = write_conf(tmp_path / "conf.yaml", data_dir, epochs=6)
        run = start_master(master, conf, "--min-workers", "3", "-o", str(tmp_path / "model"))
        received: dict[str, int] = {}

        def set_up(line: str) -> None:
            # Set-up done, every actor holds the data: the bytes each host received so far, read the
            # moment the line arrives (a poll of its own, on a busy machine, would count rounds too).
            if not received and "training mlp" in line:
                received.update({name: net.bytes_received(name) for name in ("w1", "w2")})

        log = Lines(run.stderr, on_line=set_up)
        token = wait_token(master)
        workers = [start_worker(w1, master, token, "--workers", "2"), start_worker(w2, master, token)]
        seen: dict[str, set[int]] = {}
        settings: dict[str, dict[str, str]] = {}  # an actor's environment, by host
        while run.poll() is None:  # where does each actor process live, while the run trains?
            for name, pids in net.pids_with(ACTOR).items():
                seen.setdefault(name, set()).update(pids)
                if not settings.get(name):
                    settings[name] = environment_of(pids[0])
            time.sleep(0.3)
        code, out, _ = finish(run)
        log.join()
        assert code == 0, log.text()[-4000:]
        result = json.loads(out.strip().splitlines()[-1])
        for worker in workers:
            worker_code, _, worker_err = finish(worker, 60)
            assert worker_code == 0, worker_err[-2000:]
            assert "joined the master's engine" in worker_err
    data_bytes = 3000 * 784 * 4  # the training set as float32
    print(f"\nactor processes by host: {seen}; bytes received by set-up: {received} "
          f"(training set {data_bytes:,} bytes); accuracy {result['test_accuracy']}")
    assert len(seen.get("w1", ())) == 2 and len(seen.get("w2", ())) == 1, f"actor processes by host: {seen}"
    assert "master" not in seen, f"the master's host ran worker actors: {seen}"
    for name in ("w1", "w2"):  # once per host: two actors on w1 did not fetch it twice
        assert data_bytes <= received[name] < 1.5 * data_bytes, received
    assert result["workers"] == 3
    assert result["test_accuracy"] > 0.8, (result, log.text()[-6000:])
    wanted = {**LEAN_SETTINGS, **RAY_SETTINGS}  # what deepgrid gives the nodes it starts reaches their actors
    for name in ("w1", "w2"):
        assert {k: settings[name].get(k) for k in wanted} == wanted, settings


def environment_of(pid: int) -> dict[str, str]:
    """The environment a process was started with."""
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    pairs = (entry.decode(errors="replace").partition("=") for entry in entries)
    return {name: value for name, _, value in pairs if name}


EPOCHS_B = 40


def test_a_cut_off_host_and_a_killed_host_lose_no_batch(data_dir: Path, tmp_path: Path) -> None:
    """(b) One worker host cut off mid-epoch (its link deleted: a partition), another killed
    outright (every process of the host): the run completes and every mini-batch of every epoch
    is trained exactly once. Default settings."""
    with Network(["master", "w1", "w2"]) as net:
        master, w1, w2 = net.hosts["master"], net.hosts["w1"], net.hosts["w2"]
        conf = write_conf(tmp_path / "conf.yaml", data_dir, epochs=EPOCHS_B)
        run = master.popen(DEEPGRID + ["master", str(conf), "--bind", master.address, "--json", "--workers", "1",
                                       "--min-workers", "3", "-o", str(tmp_path / "model")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        log = Lines(run.stderr)
        token = wait_token(master)
        start_worker(w1, master, token)
        start_worker(w2, master, token)
        log.wait_for(r"finetune epoch 2/")
        cut_ids = worker_ids_of(log, w1.address)
        assert cut_ids, log.text()[-3000:]
        cut_at = time.monotonic()
        net.cut("w1")
        requeued_at, line = log.wait_for(rf"worker {re.escape(cut_ids[0])} .*re-queued", after=cut_at)
        detection = requeued_at - cut_at
        killed_at = time.monotonic()
        net.kill("w2")
        log.wait_for(rf"worker {re.escape(worker_ids_of(log, w2.address)[0])} .*(dropped|re-queued)", after=killed_at)
        code, out, _ = finish(run)
        log.join()
        assert code == 0, log.text()[-4000:]
    result = json.loads(out.strip().splitlines()[-1])
    print(f"\ncut-off host: its job re-queued {detection:.1f} s after the cut ({line.strip()}); "
          f"jobs by host: {result['jobs_by_host']}")
    assert detection <= 10.0 + 2.0  # heartbeat_timeout_s (default 10 s) + 2 s
    assert len(result["ledger"]) == EPOCHS_B
    for epoch in result["ledger"]:
        assert epoch["missing"] == 0 and epoch["repeated"] == 0, epoch
    assert result["test_accuracy"] > 0.8


def test_a_host_that_joins_mid_run_gets_jobs(data_dir: Path, tmp_path: Path) -> None:
    """(c) A worker host started while the run trains joins it and gets jobs from the next round."""
    with Network(["master", "w1", "w2"]) as net:
        master, w1, w2 = net.hosts["master"], net.hosts["w1"], net.hosts["w2"]
        conf = write_conf(tmp_path / "conf.yaml", data_dir, epochs=60)
        run = start_master(master, conf, "--min-workers", "1")
        log = Lines(run.stderr)
        token = wait_token(master)
        start_worker(w1, master, token)
        log.wait_for(r"finetune epoch 2/")
        start_worker(w2, master, token)
        log.wait_for(r"joined from .*\(" + re.escape(w2.address) + r"\)")
        code, out, _ = finish(run)
        log.join()
        assert code == 0, log.text()[-4000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["jobs_by_host"].get(w2.address, 0) > 0, result["jobs_by_host"]
    assert all(epoch["missing"] == 0 and epoch["repeated"] == 0 for epoch in result["ledger"])


def test_a_master_killed_and_resumed_gets_its_remote_workers_back(data_dir: Path, tmp_path: Path) -> None:
    """(d) SIGKILL the master mid-run; `deepgrid master --resume DIR` on the same host and port
    trains on, and the worker hosts' `deepgrid worker` processes re-attach by themselves. The
    state is in Redis on the master's host, so the ledger of the epoch under way survives."""
    with Network(["master", "w1", "w2"]) as net:
        master, w1, w2 = net.hosts["master"], net.hosts["w1"], net.hosts["w2"]
        conf = write_conf(tmp_path / "conf.yaml", data_dir, epochs=30, state_url=start_redis(net, "master"))
        out_dir = tmp_path / "model"
        first = start_master(master, conf, "--min-workers", "2", "-o", str(out_dir))
        log = Lines(first.stderr)
        token = wait_token(master)
        workers = [start_worker(w1, master, token), start_worker(w2, master, token)]
        log.wait_for(r"finetune epoch 3/")
        first.kill()  # SIGKILL: no checkpoint at exit, no goodbye to the workers
        first.wait()
        resumed = start_master(master, conf, "--min-workers", "2", "-o", str(out_dir),
                               "--resume", str(out_dir / "checkpoints"))
        code, out, err = finish(resumed)
        assert code == 0, err[-4000:]
        assert "resuming from round" in err
        for worker in workers:
            worker_code, _, worker_err = finish(worker, 60)
            assert worker_code == 0, worker_err[-2000:]
            assert "went away" in worker_err and worker_err.count("joined job") == 2, worker_err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert all(epoch["missing"] == 0 for epoch in result["ledger"]), result["ledger"]
    assert set(result["jobs_by_host"]) == {w1.address, w2.address}
    assert result["test_accuracy"] > 0.8


def test_a_worker_without_the_masters_token_is_refused_at_once(data_dir: Path, tmp_path: Path) -> None:
    """A new user's master makes its token; a worker host with none, or with another, is refused
    in seconds with one line that says how to get the right one."""
    with Network(["master", "w1"]) as net:
        master, w1 = net.hosts["master"], net.hosts["w1"]
        run = start_master(master, write_conf(tmp_path / "conf.yaml", data_dir), "--min-workers", "1")
        wait_token(master)
        net.wait_listening("master", PORT)
        wrong = tmp_path / "wrong-token"
        wrong.write_text("0" * 64)
        for token_args in ([], ["--token-file", str(wrong)]):
            started = time.monotonic()
            refused = w1.run(DEEPGRID + ["worker", "-ad", f"{master.address}:{PORT}", *token_args], timeout=60)
            elapsed = time.monotonic() - started
            assert_user_error(refused.returncode, refused.stderr, "token")
            assert "--token-file" in refused.stderr
            assert elapsed < 20, f"refused only after {elapsed:.0f} s"
        assert not net.pids_with("raylet").get("w1"), "a refused host must not stay a node"
        run.kill()


def test_files_feed_refuses_a_host_whose_data_differ(data_dir: Path, tmp_path: Path) -> None:
    """data_feed: files: every host reads its own copy; a host whose copy differs is refused by name."""
    with Network(["master", "w1"]) as net:
        master, w1 = net.hosts["master"], net.hosts["w1"]
        other = tmp_path / "other-data"
        other.mkdir()
        fake_fashion_mnist(other, n_train=2000, n_test=500)
        conf = write_conf(tmp_path / "conf.yaml", None, data_feed="files")
        run = master.popen(DEEPGRID + ["master", str(conf), "--bind", master.address, "--min-workers", "1"],
                           env={"DEEPGRID_DATA": str(data_dir)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        token = wait_token(master)
        # Each host reads the files at its own $DEEPGRID_DATA: the worker host's hold other examples.
        refused = w1.run(DEEPGRID + ["worker", "-ad", f"{master.address}:{PORT}", "--workers", "1",
                                     "--token-file", str(token)], env={"DEEPGRID_DATA": str(other)}, timeout=180)
        run.kill()
    assert_user_error(refused.returncode, refused.stderr, w1.address, "other training data")


def test_the_cluster_recipe_with_redis_and_zookeeper_on_the_master_host(data_dir: Path, tmp_path: Path) -> None:
    """(e) The README's recipe: host A runs Redis (password) and ZooKeeper (digest ACL), bound to
    A's address, and the master; hosts B and C know only ZooKeeper's address and the job name;
    `deepgrid status` on B shows every worker with its host. Data read from each host's disk."""
    from tests.zookeeper_server import MAIN_CLASS, ZOOKEEPER_JAR, require_zookeeper

    require_zookeeper()
    with Network(["a", "b", "c"]) as net:
        a, b, c = net.hosts["a"], net.hosts["b"], net.hosts["c"]
        state = start_redis(net, "a")
        zk_cfg = a.home / "zoo.cfg"
        (a.home / "zk").mkdir()
        zk_cfg.write_text(f"tickTime=500\ndataDir={a.home / 'zk'}\nclientPort=2181\nclientPortAddress={a.address}\n"
                          "admin.enableServer=false\n")
        a.popen(["java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", str(ZOOKEEPER_JAR), MAIN_CLASS, str(zk_cfg)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        net.wait_listening("a", 2181, timeout=90)
        registry = f"zk://{a.address}:2181/deepgrid"
        zk_auth = {"DEEPGRID_ZK_AUTH": "deepgrid:zk-s3cret"}
        conf = write_conf(tmp_path / "conf.yaml", data_dir, job_name="recipe", data_feed="files", epochs=30)
        run = a.popen(DEEPGRID + ["master", str(conf), "--bind", a.address, "--state", state, "--registry", registry,
                                  "--min-workers", "2", "--json", "-o", str(tmp_path / "model")], env=zk_auth,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        log = Lines(run.stderr)
        token = wait_token(a)
        log.wait_for("registered in zk://")
        workers = [host.popen(DEEPGRID + ["worker", "--registry", registry, "--job", "recipe", "--workers", "1",
                                          "--token-file", str(token)], env=zk_auth,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for host in (b, c)]
        status = ""
        while run.poll() is None and not (b.address in status and c.address in status and "round 0 " not in status):
            status = b.run(DEEPGRID + ["status", "--state", state, "--job", "recipe"], timeout=60).stdout
            time.sleep(0.5)
        code, out, _ = finish(run)
        log.join()
        assert code == 0, log.text()[-4000:]
        for worker in workers:
            worker_code, _, worker_err = finish(worker, 60)
            assert worker_code == 0, worker_err[-2000:]
            assert "from the registry" in worker_err
        listening = a.run(["ss", "-ltnH"]).stdout
    print(f"\nstatus seen from host b during the run:\n{status}")
    assert b.address in status and c.address in status, status
    for port in ("6379", "2181"):  # servers bound to A's address, not to every interface
        bound = [line.split()[3].replace("[::ffff:", "").replace("]", "")  # Java's IPv4-mapped form
                 for line in listening.splitlines() if line.split()[3].endswith(f":{port}")]
        assert bound and all(address == f"{a.address}:{port}" for address in bound), listening
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["jobs_by_host"]) == {b.address, c.address}
    assert all(epoch["missing"] == 0 and epoch["repeated"] == 0 for epoch in result["ledger"])
    assert result["test_accuracy"] > 0.8


def test_a_worker_host_stopped_with_sigterm_leaves_and_the_run_goes_on(data_dir: Path, tmp_path: Path) -> None:
    """SIGTERM to `deepgrid worker` (a service manager stopping it): its node leaves the cluster,
    the master drops its workers, and the run completes on the other host."""
    with Network(["master", "w1", "w2"]) as net:
        master, w1, w2 = net.hosts["master"], net.hosts["w1"], net.hosts["w2"]
        conf = write_conf(tmp_path / "conf.yaml", data_dir, epochs=60)
        run = start_master(master, conf, "--min-workers", "2")
        log = Lines(run.stderr)
        token = wait_token(master)
        start_worker(w1, master, token)
        leaving = start_worker(w2, master, token)
        log.wait_for(r"finetune epoch 2/")
        leaving.terminate()
        code, _, err = finish(leaving, 90)
        assert code != 0 and "Traceback" not in err, err[-2000:]
        assert not net.pids_with("raylet").get("w2"), "the stopped host's node is still running"
        gone = worker_ids_of(log, w2.address)[0]
        log.wait_for(rf"worker {re.escape(gone)} .*dropped")
        code, out, _ = finish(run)
        log.join()
        assert code == 0, log.text()[-4000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert all(epoch["missing"] == 0 for epoch in result["ledger"])
