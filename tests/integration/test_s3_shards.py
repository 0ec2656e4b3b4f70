"""Each worker host reads its own shards (issue 12), against moto in server mode on loopback.

(a) one machine, two worker actors, ``data_dir: s3://...`` made of 6 shard files: shard-blocked
epochs train to a sound held-out accuracy, every mini-batch of every epoch is trained once and no
job mixes two shards. (b) two worker hosts made of network namespaces, each with its own HOME and
DEEPGRID_HOME: each host's cache holds only some of the shards, together all, and the run trains
to a sound accuracy (root only: tests/netns.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepgrid.config.conf import Conf
from deepgrid.dashboard.view import RunView
from deepgrid.data.dataset import ArrayDataset
from deepgrid.data.mnist import load_splits
from deepgrid.data.shards import shard_blocks
from deepgrid.distributed import engine
from deepgrid.distributed.progress import run_jobs
from deepgrid.distributed.runner import ActorNetworkRunner
from deepgrid.storage import S3Store, S3Url
from deepgrid.train.loop import phase_seed
from tests.integration.moto_server import MotoServer, moto_server  # noqa: F401 (a fixture)
from tests.integration.synthetic import mlp_network
from tests.source_files import N_CLASSES, N_IN, splits

BUCKET = "deepgrid-shards"
N_SHARDS = 6


def upload_shards(directory: Path, prefix: str = "shards", n_shards: int = N_SHARDS) -> None:
    """The blobs' training split as ``n_shards`` npz files under ``prefix`` (and one test.npz)."""
    directory.mkdir(parents=True, exist_ok=True)
    store = S3Store()
    data = splits(n_train=960, n_test=300)
    x, y = data["train"]
    for index, rows in enumerate(np.array_split(np.arange(len(y)), n_shards)):
        path = directory / f"train-{index:05d}.npz"
        np.savez(path, x=x[rows], y=y[rows])
        store.upload(path, S3Url(BUCKET, f"{prefix}/{path.name}"))
    np.savez(directory / "test.npz", x=data["test"][0], y=data["test"][1])
    store.upload(directory / "test.npz", S3Url(BUCKET, f"{prefix}/test.npz"))


def shard_conf(**changes: Any) -> Conf:
    base: dict[str, Any] = dict(model="mlp", dataset="npz", data_dir=f"s3://{BUCKET}/shards", data_feed="files",
                                workers=2, batch_size=16, averaging_frequency=4, epochs=3, network=mlp_network(n_in=N_IN, n_out=N_CLASSES),
                                state_url="memory://", dashboard=None, job_name="shards")
    return Conf(**(base | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def one_machine(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """moto with the shards uploaded, and a local Ray whose actors see moto and this DEEPGRID_HOME."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        moto_server.reset()
        moto_server.patch_env(patch, home)
        patch.setenv("DEEPGRID_HOME", str(home / "deepgrid"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        moto_server.client().create_bucket(Bucket=BUCKET)
        upload_shards(tmp_path_factory.mktemp("shards"))
        engine.start_local(num_cpus=4)  # after the environment: the actors inherit it
        try:
            yield home / "deepgrid"
        finally:
            engine.shutdown()


def accuracy(runner: ActorNetworkRunner, test: ArrayDataset) -> float:
    model = runner.model
    model.set_flat_params(runner.params)
    return float(model.score(test.x, test.y))


def test_one_machine_two_workers_train_shard_blocked_epochs(one_machine: Path) -> None:
    import ray

    conf = shard_conf()
    runner = ActorNetworkRunner("master")
    handed: list[dict[str, Any]] = []  # every job the tracker handed out
    try:
        runner.setup(conf)
        assert runner.shards is not None and len(runner.shards.names) == N_SHARDS
        claim = runner.tracker.claim_job

        def recording_claim(worker_id: str, shards: Any = None) -> Any:
            job = claim(worker_id, shards)
            if job is not None:
                handed.append(job.to_dict())
            return job

        runner.tracker.claim_job = recording_claim  # type: ignore[method-assign]
        runner.train()
        infos = ray.get([handle.actor.info.remote() for handle in runner.workers.values()])
    finally:
        runner.shutdown()
    assert accuracy(runner, load_splits(conf)[1]) > 0.9
    layout = runner.shards
    n = layout.n_batches(conf.batch_size)
    assert [s["missing"] + s["repeated"] for s in runner.ledger_summary()] == [0] * conf.epochs
    for epoch in range(conf.epochs):
        assert runner.ledger[("finetune", epoch)] == {i: 1 for i in range(n)}
        blocks = {s: (a, b) for s, a, b in shard_blocks(layout.counts, conf.batch_size,
                                                        phase_seed(conf.network.seed, 0), epoch)}
        jobs = [j for j in handed if j["epoch"] == epoch]
        assert {j["shard"] for j in jobs} == set(range(N_SHARDS))
        for job in jobs:  # each job's batches lie in its shard's block
            first, end = blocks[job["shard"]]
            assert first <= job["start"] < job["stop"] <= end, job
    # The progress bar and the dashboard count the jobs and batches the runner really cut.
    assert run_jobs(runner) == (len(handed), len(handed))
    view = RunView(runner)
    assert view.batches_per_epoch == n and view.jobs_per_epoch * conf.epochs == len(handed)
    # One host: the master read every shard into the cache its actors share, and they report it.
    assert [info["shards"] for info in infos] == [list(range(N_SHARDS))] * 2
    assert len(list((one_machine / "cache" / "s3" / "objects" / BUCKET / "shards").glob("train-*"))) == N_SHARDS


def test_async_strategy_hands_out_shard_jobs_too(one_machine: Path) -> None:
    """Without a round barrier (strategy: async) workers are topped up job by job: the same home map
    decides, and every mini-batch of every epoch is still trained exactly once."""
    conf = shard_conf(strategy="async")
    runner = ActorNetworkRunner("master")
    try:
        runner.setup(conf)
        runner.train()
    finally:
        runner.shutdown()
    assert [s["missing"] + s["repeated"] for s in runner.ledger_summary()] == [0] * conf.epochs
    assert runner.dispatcher.homes is not None and len(runner.dispatcher.homes.home) == N_SHARDS
    assert accuracy(runner, load_splits(conf)[1]) > 0.9


# -- (b) across hosts ---------------------------------------------------------------------------
UPLOAD = """
import sys
from pathlib import Path
import boto3
s3 = boto3.client("s3")
s3.create_bucket(Bucket=sys.argv[1])
for path in sorted(Path(sys.argv[2]).iterdir()):
    s3.upload_file(str(path), sys.argv[1], f"shards/{path.name}")
"""


def shards_held(home: Path) -> list[str]:
    """The training shards a host's S3 cache holds (whole files, any ETag)."""
    objects = home / ".deepgrid" / "cache" / "s3" / "objects" / BUCKET / "shards"
    return sorted(folder.name for folder in objects.glob("train-*") if any(folder.glob("*/train-*")))


def run_on_hosts(tmp_path: Path, epochs: int = 4,
                 during: Callable[[Any, Any], None] | None = None) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """moto and `deepgrid master` on one host, `deepgrid worker` on hosts w1 and w2 (their own HOME
    and DEEPGRID_HOME); ``during(net, log)`` runs while the master trains. Returns the master's
    --json result and the shards each worker host's cache holds at the end."""
    from tests.helpers import missing_server
    from tests.integration.test_hosts import DEEPGRID, PORT, Lines, finish, wait_token
    from tests.netns import Network, unavailable

    reason = unavailable()
    if reason is not None:
        missing_server(f"worker hosts are network namespaces: {reason}")
    data = tmp_path / "data"
    data.mkdir()
    written = splits(n_train=960, n_test=300)
    x, y = written["train"]
    for index, rows in enumerate(np.array_split(np.arange(len(y)), N_SHARDS)):
        np.savez(data / f"train-{index:05d}.npz", x=x[rows], y=y[rows])
    np.savez(data / "test.npz", x=written["test"][0], y=written["test"][1])
    with Network(["master", "w1", "w2"]) as net:
        master = net.hosts["master"]
        aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{master.address}:5000",
               "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent/aws-config",
               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials"}
        master.popen([sys.executable, "-m", "moto.server", "-H", master.address, "-p", "5000"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        net.wait_listening("master", 5000)
        uploaded = master.run([sys.executable, "-c", UPLOAD, BUCKET, str(data)], env=aws)
        assert uploaded.returncode == 0, uploaded.stderr[-2000:]
        conf = tmp_path / "conf.yaml"
        conf.write_text(json.dumps(dict(
            model="mlp", job_name="shards", dataset="npz", data_dir=f"s3://{BUCKET}/shards", data_feed="files",
            batch_size=16, averaging_frequency=4, epochs=epochs,
            network=mlp_network(n_in=N_IN, n_out=N_CLASSES))))
        run = master.popen(DEEPGRID + ["master", str(conf), "--bind", master.address, "--json", "--min-workers", "2",
                                       "-o", str(tmp_path / "model")], env=aws,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        log = Lines(run.stderr)
        token = wait_token(master)
        for name in ("w1", "w2"):
            net.hosts[name].popen(DEEPGRID + ["worker", "-ad", f"{master.address}:{PORT}", "-a", "mlp", "--workers",
                                              "1", "--token-file", str(token)], env=aws,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if during is not None:
            during(net, log)
        code, out, _ = finish(run, 400)
        log.join()
        assert code == 0, log.text()[-4000:]
        held = {name: shards_held(net.hosts[name].home) for name in ("w1", "w2")}
    result = json.loads(out.strip().splitlines()[-1])
    print(f"\nshards held by host: {held}; jobs by host: {result['jobs_by_host']}; "
          f"accuracy {result['test_accuracy']}")
    assert all(epoch["missing"] == 0 and epoch["repeated"] == 0 for epoch in result["ledger"]), result["ledger"]
    assert result["test_accuracy"] > 0.9, result
    return result, held


ALL_SHARDS = [f"train-{i:05d}.npz" for i in range(N_SHARDS)]


def test_two_worker_hosts_each_download_only_their_own_shards(tmp_path: Path) -> None:
    """(b) Each worker host's cache holds some of the shards and never all, together all of them;
    the run trains to a sound accuracy with every mini-batch of every epoch trained once."""
    _, held = run_on_hosts(tmp_path)
    assert all(0 < len(shards) < N_SHARDS for shards in held.values()), held
    assert sorted(set(held["w1"]) | set(held["w2"])) == ALL_SHARDS, held


def test_a_killed_host_s_shards_are_adopted_and_no_batch_is_lost(tmp_path: Path) -> None:
    """(b) Host w2 killed (every process) in the second epoch: host w1 adopts its shards (its cache
    ends with all of them) and every mini-batch of every epoch is still trained exactly once."""
    from tests.integration.test_hosts import worker_ids_of

    def kill_w2(net: Any, log: Any) -> None:
        log.wait_for(r"finetune epoch 1/")
        net.kill("w2")
        log.wait_for(rf"worker {re.escape(worker_ids_of(log, net.hosts['w2'].address)[0])} .*(dropped|re-queued)")

    result, held = run_on_hosts(tmp_path, epochs=5, during=kill_w2)
    assert held["w1"] == ALL_SHARDS, held
    assert 0 < len(held["w2"]) < N_SHARDS, held
