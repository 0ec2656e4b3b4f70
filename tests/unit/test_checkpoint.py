"""Model files: what save writes, every way a saved model can be damaged, and atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deepgrid.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    CheckpointWriter,
    atomic_write,
    check_resume_conf,
    list_checkpoints,
    load_latest_checkpoint,
    load_run_state,
    read_model_meta,
    save_checkpoint,
)
from deepgrid.config.conf import Conf
from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.errors import ConfigError, DeepgridError, ModelError
from deepgrid.models.base import Model
from deepgrid.models.mlp import MLP


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.fixture
def saved(tmp_path) -> Path:
    model = MLP(n_in=20, hidden_layer_sizes=(8,), seed=1)
    return model.save(tmp_path / "model", extra={"test_accuracy": 0.5})


def rewrite_meta(directory: Path, **changes) -> None:
    meta = json.loads((directory / CONFIG_FILE).read_text())
    meta.update(changes)
    (directory / CONFIG_FILE).write_text(json.dumps(meta))


def test_save_writes_json_and_safetensors_only(saved):
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temporary files left
    meta = read_model_meta(saved)
    assert meta["format"] == FORMAT_VERSION and meta["model"] == "mlp" and meta["test_accuracy"] == 0.5
    assert meta["network"]["hidden_layer_sizes"] == [8]
    loaded = Model.load(saved)
    np.testing.assert_array_equal(loaded.get_flat_params(), MLP(n_in=20, hidden_layer_sizes=(8,), seed=1)
                                  .get_flat_params())


def test_save_overwrites_an_earlier_save(saved):
    other = MLP(n_in=20, hidden_layer_sizes=(8,), seed=2)
    other.save(saved)
    np.testing.assert_array_equal(Model.load(saved).get_flat_params(), other.get_flat_params())


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError) as error:
        Model.load(tmp_path / "nope")
    assert_one_line(error, "nope", "does not exist")


def test_directory_without_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as error:
        Model.load(tmp_path / "empty")
    assert_one_line(error, "not a saved model", CONFIG_FILE, WEIGHTS_FILE)


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_directory_missing_one_file(saved, missing):
    (saved / missing).unlink()
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, "not a saved model")


@pytest.mark.parametrize("text", ["{\"model\": \"mlp\", ", "not json at all", b"\xff\xfe\x00{"],
                         ids=["truncated", "garbage", "binary"])
def test_damaged_model_json(saved, text):
    path = saved / CONFIG_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, str(path), "damaged")


@pytest.mark.parametrize("content", ["[1, 2]", "{\"model\": \"mlp\"}", "{\"network\": {}}"])
def test_model_json_without_entries(saved, content):
    (saved / CONFIG_FILE).write_text(content)
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, "damaged", "`model`", "`network`")


def test_model_json_with_invalid_network(saved):
    meta = json.loads((saved / CONFIG_FILE).read_text())
    rewrite_meta(saved, network={**meta["network"], "hidden_layer_sizes": [0]})
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, "invalid network configuration", "hidden_layer_sizes")


def test_model_json_naming_an_unknown_kind(saved):
    rewrite_meta(saved, model="resnet")
    with pytest.raises(DeepgridError) as error:  # ModelError would be apter: reported
        Model.load(saved)
    assert_one_line(error, "resnet")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "header only"])
def test_damaged_weights(saved, damage):
    path = saved / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes({
        "truncated": data[: len(data) // 2],
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
        "header only": data[:8],
    }[damage])
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, str(path), "damaged")


def test_weights_that_do_not_fit_the_network(saved):
    meta = json.loads((saved / CONFIG_FILE).read_text())
    rewrite_meta(saved, network={**meta["network"], "hidden_layer_sizes": [16]})
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, WEIGHTS_FILE, "does not fit")


def test_weights_with_missing_tensors(saved):
    save_file({"0.weight": torch.zeros(8, 20)}, str(saved / WEIGHTS_FILE))
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, "does not fit")


def test_weights_of_another_kind(saved, tmp_path):
    from deepgrid.models import registry

    if "rbm" not in registry.names():
        pytest.skip("no rbm model registered")
    rbm = registry.get("rbm")(n_in=20, hidden_layer_sizes=(8,))
    rbm.save(tmp_path / "rbm")
    (saved / WEIGHTS_FILE).write_bytes((tmp_path / "rbm" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ModelError) as error:
        Model.load(saved)
    assert_one_line(error, "does not fit")


# -- atomic_write ----------------------------------------------------------------------------------


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write(target, lambda p: p.write_text("first"))
    atomic_write(target, lambda p: p.write_text("second"))
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def fail(path: Path) -> None:
        path.write_text("half of the ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]  # the temporary file is gone


def test_failed_save_keeps_the_previous_model(saved, monkeypatch):
    import deepgrid.models.files as model_files

    before = Model.load(saved).get_flat_params()

    def broken_save_file(state, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(model_files, "save_file", broken_save_file)
    with pytest.raises(OSError):
        MLP(n_in=20, hidden_layer_sizes=(8,), seed=9).save(saved)
    np.testing.assert_array_equal(Model.load(saved).get_flat_params(), before)
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


# -- run checkpoints (issue 8: defects 2, 3, 5, 6 and 8) -------------------------------------------
# Each test names the defect it covers; each fails on the code before its fix.


def small_mlp(seed: int = 1) -> MLP:
    return MLP(n_in=20, hidden_layer_sizes=(8,), seed=seed)


def params_of(value: float) -> np.ndarray:
    return np.full(small_mlp().n_params, value, dtype=np.float32)


def run_meta(round_: int, **extra) -> dict:
    return {"conf": Conf(model="mlp", network=small_mlp().conf).to_dict(), "phase": "finetune", "phase_index": 0,
            "epoch": 0, "round": round_, "param_version": round_, "done_jobs": [], "status": "training", **extra}


def write_rounds(directory: Path, rounds, keep: int = 2, **writer_options) -> CheckpointWriter:
    """Checkpoints as the runner writes them (CheckpointWriter built as runner.setup builds it);
    round r's parameters are all r, and so is its run state."""
    writer = CheckpointWriter(directory, small_mlp(), keep, **writer_options)
    try:
        for r in rounds:
            writer.submit(params_of(r), run_meta(r), {"block_step": np.full(3, r, dtype=np.float32)})
            writer.flush()
    finally:
        writer.close()
    return writer


def test_a_fresh_run_neither_deletes_nor_is_deleted_by_an_earlier_runs_checkpoints(tmp_path):
    """Defect 2: pruning by name order deleted the new run's own checkpoints, keeping the old run's."""
    ckpt = tmp_path / "ckpt"
    write_rounds(ckpt, range(1800, 1804))  # an earlier run's last rounds
    earlier = sorted(p.name for p in ckpt.iterdir())
    assert len(earlier) == 2
    write_rounds(ckpt, range(1, 5))  # a fresh run into the same directory
    names = sorted(p.name for p in ckpt.iterdir())
    assert set(earlier) <= set(names), "a fresh run deleted another run's checkpoints"
    assert len(names) == 4, names  # each run keeps its own newest two
    mine = [n for n in names if n not in earlier]
    assert [int(n.split("-")[1]) for n in sorted(mine)] == [3, 4]


def test_resume_loads_the_newest_run_whole(tmp_path):
    """Defect 2: --resume loaded the earlier run's final checkpoint (highest round number) instead of
    the newest run's, and run_state could come from another checkpoint than the model."""
    ckpt = tmp_path / "ckpt"
    write_rounds(ckpt, range(1800, 1804))
    second = write_rounds(ckpt, range(1, 5))
    model, meta = load_latest_checkpoint(ckpt)
    assert meta["round"] == 4 and meta["run_id"] == second.run_id
    np.testing.assert_array_equal(model.get_flat_params(), params_of(4))
    np.testing.assert_array_equal(load_run_state(ckpt)["block_step"], np.full(3, 4, dtype=np.float32))
    # A resumed run carries the run id on: its checkpoints and the ones it resumed from are one run.
    third = write_rounds(ckpt, range(5, 7), run_id=meta["run_id"])
    assert third.run_id == second.run_id
    assert [p.name.split("-")[1] for p in list_checkpoints(ckpt, second.run_id)] == ["000000005", "000000006"]
    assert load_latest_checkpoint(ckpt)[1]["round"] == 6


def test_the_same_round_saved_again_never_leaves_no_checkpoint(tmp_path, monkeypatch):
    """Defect 5: the same-round re-save removed the target before renaming its replacement in; a
    crash in between (here: the rename fails) left no checkpoint at all with keep_checkpoints: 1."""
    ckpt = tmp_path / "ckpt"
    model = small_mlp()
    model.set_flat_params(params_of(7))
    save_checkpoint(ckpt, model, run_meta(7), keep=1)
    real_replace = os.replace

    def crash_on_checkpoint_rename(src, dst):
        if Path(dst).name.startswith("ckpt-"):
            raise OSError("killed before the rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_checkpoint_rename)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(ckpt, model, run_meta(7, status="done"), keep=1)
    monkeypatch.setattr(os, "replace", real_replace)
    restored, meta = load_latest_checkpoint(ckpt)
    assert meta["round"] == 7
    np.testing.assert_array_equal(restored.get_flat_params(), params_of(7))
    # And when it succeeds, keep_checkpoints: 1 ends with exactly the new one, whole.
    save_checkpoint(ckpt, model, run_meta(7, status="done"), keep=1)
    found = list_checkpoints(ckpt)
    assert len(found) == 1 and load_latest_checkpoint(ckpt)[1]["status"] == "done"
    assert [p.name for p in ckpt.iterdir() if p.name.startswith(".")] == []  # no staging or trash left


def test_keep_one_always_holds_one_complete_checkpoint(tmp_path):
    """Defect 5 (keep_checkpoints: 1): after every write exactly one whole checkpoint is there."""
    ckpt = tmp_path / "ckpt"
    writer = CheckpointWriter(ckpt, small_mlp(), 1)
    try:
        for r in (1, 2, 3, 3):  # the last: the final save of round 3
            writer.submit(params_of(r), run_meta(r, status="done" if r == 3 else "training"))
            writer.flush()
            assert len(list_checkpoints(ckpt)) == 1
            assert load_latest_checkpoint(ckpt)[1]["round"] == r
    finally:
        writer.close()


def test_a_checkpoint_is_fsynced_before_it_counts_and_before_older_ones_go(tmp_path, monkeypatch):
    """Defect 5: files and directories are flushed to the disk (fsync) before a checkpoint counts as
    written, and older checkpoints are removed only after that."""
    import deepgrid.checkpoint as checkpoint

    ckpt = tmp_path / "ckpt"
    model = small_mlp()
    save_checkpoint(ckpt, model, run_meta(1), keep=1, tensors={"block_step": np.zeros(3, dtype=np.float32)})
    first = list_checkpoints(ckpt)[0]
    synced: list[tuple[str, bool]] = []  # (path fsynced, was the older checkpoint still there)
    real_fsync = os.fsync

    def record(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), first.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    target = save_checkpoint(ckpt, model, run_meta(2), keep=1, tensors={"block_step": np.zeros(3, dtype=np.float32)})
    paths = [Path(p).name for p, _ in synced]
    for name in (WEIGHTS_FILE, CONFIG_FILE, checkpoint.RUN_STATE_FILE):
        assert any(p.startswith(f".{name}.") or p == name for p in paths), f"{name} was not fsynced: {paths}"
    assert any(Path(p).name.startswith(checkpoint.STAGING_PREFIX) for p, _ in synced), "staging dir not fsynced"
    directory_syncs = [still_there for p, still_there in synced if Path(p) == ckpt.resolve()]
    assert directory_syncs, "the checkpoint directory was not fsynced after the rename"
    assert directory_syncs[-1], "the older checkpoint was removed before the new one was on the disk"
    assert not first.exists() and target.exists()


# -- resuming under another Conf (defect 3) ---------------------------------------------------------


def saved_conf(**changes) -> dict:
    return json.loads(json.dumps(Conf(model="mlp", **changes).to_dict()))


@pytest.mark.parametrize("field, saved, now", [
    ("batch_size", 64, 32),
    ("averaging_frequency", 100, 50),
    ("train_limit", None, 1000),
    ("validation_fraction", 0.1, 0.2),
    ("dataset", "fashion-mnist", "mnist"),
    ("binarize", False, True),
])
def test_resume_refuses_a_conf_that_cuts_the_data_or_jobs_differently(field, saved, now):
    """Defect 3: resuming with another job cut or data silently skipped or repeated batches."""
    with pytest.raises(ConfigError) as error:
        check_resume_conf(saved_conf(**{field: saved}), Conf(model="mlp", **{field: now}))
    assert_one_line(error, field, repr(saved), repr(now), "Set", "another checkpoint_dir")


@pytest.mark.parametrize("network_change", [{"seed": 7}, {"hidden_layer_sizes": (64,)}, {"finetune_lr": 0.5}])
def test_resume_refuses_another_network(network_change):
    """Defect 3: the whole network, seed included, must be the checkpoint's."""
    with pytest.raises(ConfigError) as error:
        check_resume_conf(saved_conf(), Conf(model="mlp", network=NeuralNetConfiguration(**network_change)))
    (field,) = network_change
    assert_one_line(error, f"network.{field}", "Set")


def test_resume_refuses_another_model_kind():
    with pytest.raises(ConfigError) as error:
        check_resume_conf(saved_conf(), Conf(model="dbn"))
    assert_one_line(error, "model='mlp'", "model='dbn'")


def test_resume_allows_what_does_not_define_data_jobs_or_network():
    saved = saved_conf(state_url="redis://:***@host:6379/0")
    check_resume_conf(saved, Conf(model="mlp", workers=7, state_url="redis://localhost:6379/0", checkpoint_every=5,
                                  keep_checkpoints=9, epochs=30, round_deadline_s=60, heartbeat_timeout_s=3,
                                  data_dir="/elsewhere", job_name="renamed", patience=4))


def test_load_latest_checkpoint_checks_the_conf_before_loading(tmp_path):
    """Defect 3, wired: load_latest_checkpoint(conf=...) refuses a mismatch, naming the field."""
    ckpt = tmp_path / "ckpt"
    write_rounds(ckpt, [1])
    conf = Conf(model="mlp", network=small_mlp().conf)
    load_latest_checkpoint(ckpt, conf=conf)
    with pytest.raises(ConfigError) as error:
        load_latest_checkpoint(ckpt, conf=conf.replace(averaging_frequency=50))
    assert_one_line(error, "averaging_frequency=100", "averaging_frequency=50")


def test_a_torch_module_run_resumes_through_the_model_factory(tmp_path):
    """Defect 3: a TorchModel run failed to resume with "newest checkpoint is damaged" (the model was
    rebuilt from the registry by name, and a user's module is not there)."""
    from torch import nn

    from deepgrid.models.module import TorchModel

    network = NeuralNetConfiguration(n_in=20, n_out=10, hidden_layer_sizes=(8,))

    def factory() -> TorchModel:
        torch.manual_seed(0)
        return TorchModel(nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 10)), conf=network)

    ckpt = tmp_path / "ckpt"
    trained = factory()
    trained.set_flat_params(np.arange(trained.n_params, dtype=np.float32))
    writer = CheckpointWriter(ckpt, factory(), 2)
    writer.submit(trained.get_flat_params(), run_meta(3) | {"conf": Conf(model="mlp", network=network).to_dict()})
    writer.close()
    with pytest.raises(ModelError) as error:  # without the factory: what to pass, not "damaged"
        load_latest_checkpoint(ckpt)
    assert_one_line(error, "model_factory")
    assert "damaged" not in str(error.value)
    model, meta = load_latest_checkpoint(ckpt, model_factory=factory, conf=Conf(model="mlp", network=network))
    assert isinstance(model, TorchModel) and meta["round"] == 3
    np.testing.assert_array_equal(model.get_flat_params(), trained.get_flat_params())


# -- secrets at rest (defect 6) -----------------------------------------------------------------------
PASSWORD = "p@ss/w0rd@x"  # '@' and '/' in it: the masking must reach the URL's last '@'


def test_checkpoints_and_saved_models_hold_no_password(tmp_path):
    """Defect 6: the raw state_url password was written into every checkpoint's and the final model's model.json."""
    conf = Conf(model="mlp", network=small_mlp().conf, state_url=f"redis://:{PASSWORD}@redis.lan:6379/0")
    writer = CheckpointWriter(tmp_path / "ckpt", small_mlp(), 2)
    writer.submit(params_of(1), run_meta(1) | {"conf": conf.to_dict()})  # the runner's meta: the raw dict
    written = writer.flush()
    writer.close()
    small_mlp().save(tmp_path / "model", extra={"conf": conf.to_dict()})  # cli.report's extra
    for path in (written / CONFIG_FILE, tmp_path / "model" / CONFIG_FILE):
        text = path.read_text()
        for piece in (PASSWORD, "p@ss", "w0rd"):
            assert piece not in text, f"{piece!r} in {path}"
        assert json.loads(text)["conf"]["state_url"] == "redis://:***@redis.lan:6379/0"


# -- bad input (defect 8) -----------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("round", "12"), ("round", -1), ("round", True), ("done_jobs", 5), ("done_jobs", ["a"]),
    ("phase_index", [0]), ("epoch", 1.5), ("phase", 3), ("best_loss", "low"), ("bad_checks", None),
    ("conf", []), ("run_id", "../x"), ("model", 5), ("network", "mlp"),
])
def test_a_checkpoint_model_json_with_wrong_types_is_one_line(tmp_path, key, value):
    """Defect 8: wrong types in a checkpoint's model.json ended in a traceback in the runner's set-up."""
    ckpt = tmp_path / "ckpt"
    write_rounds(ckpt, [1])
    (newest,) = list_checkpoints(ckpt)
    rewrite_meta(newest, **{key: value})
    with pytest.raises(ModelError) as error:
        load_latest_checkpoint(ckpt)
    assert_one_line(error, "damaged", f"`{key}`", newest.name)
