"""S3 for data and checkpoints (issue 12, item 2), against moto in server mode on loopback.

Checkpoints on ``s3://`` are written, pruned (this run's only), listed (manifest present) and
resumed; a failed manifest upload leaves the previous checkpoint the one a resume loads; a
``data_dir: s3://...`` run with 2 worker actors reading the files themselves trains and resumes
through the CLI; missing, wrong and impossible AWS settings are one line each, exit status 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from deepgrid.checkpoint import CheckpointWriter, load_latest_checkpoint, load_run_state
from deepgrid.checkpoint.remote import MANIFEST_FILE, RemoteCheckpoints
from deepgrid.config.conf import Conf
from deepgrid.data.mnist import load_splits
from deepgrid.errors import ClusterError, ConfigError, DeepgridError, ModelError
from deepgrid.models.mlp import MLP
from deepgrid.storage import S3Store, S3Url, local_view, parse_s3_url
from tests.helpers import assert_user_error
from tests.integration.moto_server import MotoServer, moto_server  # noqa: F401 (a fixture)
from tests.source_files import write_source

SCRIPT = Path(sys.executable).parent / "deepgrid"
ROOT = Path(__file__).resolve().parents[2]
BUCKET = "deepgrid-test"


@pytest.fixture
def aws(moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:  # noqa: F811
    """This process pointed at moto, a fresh HOME and DEEPGRID_HOME, an empty bucket; the env returned."""
    moto_server.reset()
    env = moto_server.patch_env(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path / "deepgrid-home"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never wait for an instance role
    moto_server.client().create_bucket(Bucket=BUCKET)
    return {**env, "DEEPGRID_HOME": str(tmp_path / "deepgrid-home"), "AWS_EC2_METADATA_DISABLED": "true"}


def keys(prefix: str) -> list[str]:
    return [obj.key for obj in S3Store().list(S3Url(BUCKET, prefix))]


def writer_rounds(writer: CheckpointWriter, model: MLP, rounds: range) -> None:
    for round_ in rounds:
        params = model.get_flat_params() + round_
        writer.submit(params, {"round": round_, "status": "training"}, {"momentum": np.full(3, round_, np.float32)})
        writer.flush()


def test_checkpoints_written_pruned_listed_and_resumed(aws: dict[str, str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = S3Store()
    location = f"s3://{BUCKET}/runs/ckpt"
    # The user's own objects and another run's complete checkpoint under the same prefix.
    store.put_bytes(b"notes", parse_s3_url(f"{location}/notes.txt"))
    other = f"{location}/ckpt-000000001-otherrun"
    store.put_bytes(b"{}", parse_s3_url(f"{other}/model.json"))
    store.put_bytes(json.dumps({"files": {}, "saved_at": 0}).encode(), parse_s3_url(f"{other}/{MANIFEST_FILE}"))

    model = MLP(n_in=6, hidden_layer_sizes=(4,), seed=1)
    writer = CheckpointWriter(Path(location), MLP(n_in=6, hidden_layer_sizes=(4,), seed=1), keep=2, run_id="myrun")
    try:
        writer_rounds(writer, model, range(1, 5))
    finally:
        writer.close()
    assert len(writer.upload_seconds) == 4 and all(s > 0 for s in writer.upload_seconds)

    remote = RemoteCheckpoints.open(location)
    assert remote.list("myrun") == ["ckpt-000000003-myrun", "ckpt-000000004-myrun"]  # keep 2
    assert remote.list()[-1] == "ckpt-000000004-myrun"  # the run written last comes last
    left = keys("runs/ckpt")
    assert "runs/ckpt/notes.txt" in left and f"runs/ckpt/ckpt-000000001-otherrun/{MANIFEST_FILE}" in left
    manifest = remote.manifest("ckpt-000000004-myrun")
    assert set(manifest["files"]) == {"model.json", "weights.safetensors", "run_state.safetensors"}
    assert manifest["round"] == 4 and manifest["upload_s"] >= 0

    restored, meta = load_latest_checkpoint(Path(location))  # as the runner hands it over: a Path
    assert meta["round"] == 4 and meta["run_id"] == "myrun"
    np.testing.assert_allclose(restored.get_flat_params(), model.get_flat_params() + 4, rtol=1e-6)
    assert load_run_state(Path(location))["momentum"].tolist() == [4, 4, 4]
    named, meta = load_latest_checkpoint(Path(f"{location}/ckpt-000000003-myrun"))
    assert meta["round"] == 3

    # A resumed run on a fresh host (empty local mirror) never overwrites a checkpoint in the bucket.
    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path / "fresh-host"))
    resumed = CheckpointWriter(Path(location), MLP(n_in=6, hidden_layer_sizes=(4,), seed=1), keep=2, run_id="myrun")
    assert resumed.directory.is_relative_to(tmp_path / "fresh-host")
    try:
        writer_rounds(resumed, model, range(4, 5))
    finally:
        resumed.close()
    assert remote.list("myrun") == ["ckpt-000000003-myrun", "ckpt-000000004-myrun.1"]


def test_a_failed_manifest_upload_leaves_the_previous_checkpoint(aws: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    location = f"s3://{BUCKET}/crash"
    model = MLP(n_in=6, hidden_layer_sizes=(4,), seed=1)
    writer = CheckpointWriter(Path(location), MLP(n_in=6, hidden_layer_sizes=(4,), seed=1), keep=3, run_id="run1")
    assert writer.remote is not None
    put_bytes = writer.remote.store.put_bytes

    def crash_on_manifest(data: bytes, url: S3Url) -> None:
        if url.key.endswith(MANIFEST_FILE):
            raise ClusterError("simulated crash between the data and the manifest")
        put_bytes(data, url)

    try:
        writer_rounds(writer, model, range(1, 2))
        monkeypatch.setattr(writer.remote.store, "put_bytes", crash_on_manifest)
        with pytest.raises(ClusterError, match="simulated crash"):
            writer_rounds(writer, model, range(2, 3))
        # The data of round 2 are there, its manifest is not: it does not count.
        assert any("ckpt-000000002-run1/weights.safetensors" in k for k in keys("crash"))
        assert RemoteCheckpoints.open(location).list() == ["ckpt-000000001-run1"]
        _, meta = load_latest_checkpoint(Path(location))
        assert meta["round"] == 1
        # The next good upload clears the leftover.
        monkeypatch.setattr(writer.remote.store, "put_bytes", put_bytes)
        writer_rounds(writer, model, range(3, 4))
    finally:
        writer.close()
    assert not any("ckpt-000000002" in k for k in keys("crash"))
    assert RemoteCheckpoints.open(location).list() == ["ckpt-000000001-run1", "ckpt-000000003-run1"]


def test_data_view_is_cached_by_etag(aws: dict[str, str], tmp_path: Path) -> None:
    store = S3Store()
    store.put_bytes(b"one", S3Url(BUCKET, "data/train.csv"))
    store.put_bytes(b"two", S3Url(BUCKET, "data/sub/test.csv"))
    view = local_view(S3Url(BUCKET, "data"))
    assert (view / "train.csv").read_bytes() == b"one" and (view / "sub" / "test.csv").read_bytes() == b"two"
    assert str(view).startswith(aws["DEEPGRID_HOME"])
    store.put_bytes(b"changed", S3Url(BUCKET, "data/train.csv"))  # a new ETag: a new copy
    assert (local_view(S3Url(BUCKET, "data")) / "train.csv").read_bytes() == b"changed"
    store.delete(BUCKET, ["data/sub/test.csv"])  # deleted from the prefix: gone from the view too
    view = local_view(S3Url(BUCKET, "data"))
    assert sorted(p.relative_to(view).as_posix() for p in view.rglob("*")) == ["train.csv"]


def test_sharded_data_dir_on_s3_reads_every_shard_in_order(aws: dict[str, str], tmp_path: Path) -> None:
    fields = write_source("npz", tmp_path / "whole")
    store = S3Store()
    for split in ("train", "test"):
        with np.load(tmp_path / "whole" / f"{split}.npz") as arrays:
            x, y = arrays["x"], arrays["y"]
        for index, rows in enumerate(np.array_split(np.arange(len(y)), 3)):
            shard = tmp_path / f"{split}-{index:05d}.npz"
            np.savez(shard, x=x[rows], y=y[rows])
            store.upload(shard, S3Url(BUCKET, f"shards/{split}-{index:05d}.npz"))
    conf = Conf(dataset="npz", data_dir=f"s3://{BUCKET}/shards", network=fields["network"])
    train, test = load_splits(conf)
    whole_train, whole_test = load_splits(conf.replace(data_dir=fields["data_dir"]))
    assert len(train) == 600 and len(test) == 200
    assert train.digest() == whole_train.digest() and test.digest() == whole_test.digest()


def test_one_line_errors_in_process(aws: dict[str, str], moto_server: MotoServer,  # noqa: F811
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def one_line(error: pytest.ExceptionInfo[DeepgridError], *fragments: str) -> None:
        message = str(error.value)
        assert "\n" not in message and all(f in message for f in fragments), message

    with pytest.raises(ClusterError) as missing:
        CheckpointWriter(Path("s3://no-such-bucket/x"), MLP(n_in=6, hidden_layer_sizes=(4,)), keep=1)
    one_line(missing, "'no-such-bucket' does not exist")
    with pytest.raises(ModelError) as empty:
        load_latest_checkpoint(Path(f"s3://{BUCKET}/nothing"))
    one_line(empty, "holds no complete checkpoint")
    with moto_server.require_auth(), pytest.raises(ClusterError) as bad:
        S3Store().list(S3Url(BUCKET, "x"))
    one_line(bad, "rejected the credentials (InvalidAccessKeyId)")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-eats-1")
    monkeypatch.setenv("AWS_REGION", "us-eats-1")
    with pytest.raises(ConfigError) as typo:
        S3Store()
    one_line(typo, "'us-eats-1' is not a known S3 region", "Did you mean 'us-east-1'?")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ClusterError) as none:
        S3Store()
    one_line(none, "No AWS credentials found")
    monkeypatch.setitem(sys.modules, "boto3", None)  # not installed
    with pytest.raises(ConfigError) as no_boto:
        S3Store()
    one_line(no_boto, "install deepgrid[aws]")


# -- end to end through the CLI ------------------------------------------------------------------
def run_conf(tmp_path: Path, **changes: Any) -> Path:
    fields = write_source("npz", tmp_path / "data")
    network = {"hidden_layer_sizes": [32], "activation": "relu", "finetune_lr": 0.05, **fields.pop("network")}
    conf = dict(model="mlp", network=network, workers=2, batch_size=16, averaging_frequency=4, epochs=2,
                data_feed="files", state_url="memory://", dashboard=None, job_name="s3run",
                **{k: v for k, v in fields.items() if k != "data_dir"}, **changes)
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def deepgrid(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "DEEPGRID_DATA"} | env
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=400,
                          stdin=subprocess.DEVNULL)


def upload_data(tmp_path: Path) -> None:
    store = S3Store()
    for path in sorted((tmp_path / "data").iterdir()):
        store.upload(path, S3Url(BUCKET, f"data/{path.name}"))


def test_cli_trains_from_s3_data_checkpoints_to_s3_and_resumes(aws: dict[str, str], tmp_path: Path) -> None:
    conf = run_conf(tmp_path, data_dir=f"s3://{BUCKET}/data", checkpoint_dir=f"s3://{BUCKET}/ckpt")
    upload_data(tmp_path)
    first = deepgrid(aws, tmp_path, "train", str(conf), "-o", str(tmp_path / "run1"), "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count("checkpoint uploaded to s3://deepgrid-test/ckpt/ckpt-") >= 2, first.stderr[-3000:]
    assert json.loads(first.stdout.strip().splitlines()[-1])["evaluation"]["accuracy"] > 0.9
    remote = RemoteCheckpoints.open(f"s3://{BUCKET}/ckpt")
    names = remote.list()
    assert 1 <= len(names) <= 3  # keep_checkpoints 3
    final = remote.manifest(names[-1])
    # Both workers read the data from the local cache the master filled, in this DEEPGRID_HOME.
    assert (Path(aws["DEEPGRID_HOME"]) / "cache" / "s3" / "views" / BUCKET / "data" / "train.npz").is_file()

    again = deepgrid(aws, tmp_path, "train", str(conf), "--epochs", "3", "-o", str(tmp_path / "run2"),
                     "--resume", f"s3://{BUCKET}/ckpt", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from round {final['round']}" in again.stderr, again.stderr[-3000:]
    after = remote.list()
    assert remote.manifest(after[-1])["run_id"] == final["run_id"]  # the same run carried on
    assert remote.manifest(after[-1])["round"] > final["round"]


def test_cli_aws_mistakes_are_one_line(aws: dict[str, str], moto_server: MotoServer,  # noqa: F811
                                       tmp_path: Path) -> None:
    upload_data_conf = run_conf(tmp_path, data_dir=f"s3://{BUCKET}/data", checkpoint_dir=None)
    upload_data(tmp_path)
    missing = run_conf(tmp_path / "m", data_dir="s3://no-such-bucket/data", checkpoint_dir=None)
    result = deepgrid(aws, tmp_path, "train", str(missing), "-o", str(tmp_path / "out"))
    assert_user_error(result.returncode, result.stderr, "'no-such-bucket' does not exist")

    typo = aws | {"AWS_DEFAULT_REGION": "us-eats-1", "AWS_REGION": "us-eats-1"}
    result = deepgrid(typo, tmp_path, "train", str(upload_data_conf), "-o", str(tmp_path / "out"))
    assert_user_error(result.returncode, result.stderr, "'us-eats-1' is not a known S3 region")

    with moto_server.require_auth():
        result = deepgrid(aws, tmp_path, "train", str(upload_data_conf), "-o", str(tmp_path / "out"))
    assert_user_error(result.returncode, result.stderr, "rejected the credentials (InvalidAccessKeyId)")

    bad_url = run_conf(tmp_path / "u", data_dir="s3://Bad_Bucket/data", checkpoint_dir=None)
    result = deepgrid(aws, tmp_path, "train", str(bad_url), "-o", str(tmp_path / "out"))
    assert_user_error(result.returncode, result.stderr, "s3://BUCKET/PREFIX")


def test_the_event_log_names_the_uploaded_checkpoint_and_its_time(aws: dict[str, str]) -> None:
    from deepgrid.distributed.callbacks import Checkpointer
    from deepgrid.distributed.events import EventLog
    from deepgrid.train.schedule import RunProgress

    location = f"s3://{BUCKET}/events/ckpt"
    events = EventLog(lambda message: None)
    writer = CheckpointWriter(Path(location), MLP(n_in=6, hidden_layer_sizes=(4,), seed=1), keep=2, run_id="evrun")
    checkpointer = Checkpointer(writer, {}, every=1, events=events)
    try:
        checkpointer.commit(MLP(n_in=6, hidden_layer_sizes=(4,), seed=1).get_flat_params(), RunProgress(), {})
        checkpointer.save(wait=True)
        checkpointer.settle()
    finally:
        writer.close()
    [event] = events.recent(kind="checkpoint")
    assert f"checkpoint written: {location}/ckpt-" in event.message and "uploaded in" in event.message, event.message
