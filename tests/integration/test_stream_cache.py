"""``memory_map: true``: CSV, Parquet and image folders streamed once into an on-disk .npy cache
(deepgrid.data.stream_cache) and trained from it memory-mapped.

The mapped data are the in-memory data to the bit (same digest, same parameters after a fit);
the conversion of a 200 MB CSV holds a small part of it at a time (peak RSS of a subprocess);
a second run reuses the cache; bad files give the in-memory reader's one line and leave no
cache; a truncated entry or one left by a killed conversion is never used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepgrid import Conf
from deepgrid.data.mapped import MappedDataset
from deepgrid.data.mnist import load_splits
from deepgrid.data.sources import load_source
from deepgrid.errors import ConfigError, DataError
from deepgrid.train.single import train_single_process
from tests.source_files import N_CLASSES, N_IN, splits, write_source, write_table

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("csv", "parquet", "images")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEEPGRID_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def cache_entries(home: Path) -> list[Path]:
    folder = home / "cache" / "data"
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def entries_for(home: Path, source: Path) -> list[Path]:
    """The complete cache entries converted from ``source``."""
    return [entry for entry in cache_entries(home) if (entry / "meta.json").is_file() and str(source.resolve())
            in [f[0] for f in json.loads((entry / "meta.json").read_text())["source"]["files"]]]


def conf_for(fields: dict[str, Any], **changes: Any) -> Conf:
    fields = dict(fields)
    network = {"hidden_layer_sizes": [16], "activation": "relu", "finetune_lr": 0.05, **fields.pop("network")}
    network.update(changes.pop("network", {}))
    base = {"model": "mlp", "batch_size": 16, "averaging_frequency": 5, "epochs": 2, **fields}
    return Conf(network=network, **{**base, **changes})


def one_line(error: pytest.ExceptionInfo[DataError], path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize("kind", KINDS)
def test_a_mapped_source_trains_the_same_parameters_as_in_memory(kind: str, tmp_path: Path, home: Path) -> None:
    conf = conf_for(write_source(kind, tmp_path / "data"), validation_fraction=0.1)
    in_memory = load_splits(conf)
    mapped = load_splits(conf.replace(memory_map=True))
    assert all(isinstance(split, MappedDataset) for split in mapped)
    assert [d.digest() for d in mapped] == [d.digest() for d in in_memory]
    assert len(cache_entries(home)) == 2  # train and test

    results = []
    for train in (in_memory[0], mapped[0]):
        torch.manual_seed(0)
        model, fit = train_single_process(conf, train, lambda line: None)
        results.append((model.get_flat_params(), [entry["loss"] for entry in fit.history]))
    (params_a, losses_a), (params_b, losses_b) = results
    assert losses_a == losses_b
    assert np.array_equal(params_a, params_b)
    _, test = mapped
    assert model.score(test.x, test.y) > 0.9


def test_limits_and_binarize_give_the_in_memory_examples(tmp_path: Path) -> None:
    for kind in KINDS:
        conf = conf_for(write_source(kind, tmp_path / kind), train_limit=50, test_limit=7, binarize=True)
        in_memory, mapped = load_splits(conf), load_splits(conf.replace(memory_map=True))
        assert [len(d) for d in mapped] == [50, 7]
        assert [d.digest() for d in mapped] == [d.digest() for d in in_memory], kind


def test_csv_shards_and_a_column_widened_after_the_first_block(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # The streaming reader types a column from its first block (1 MB); whole numbers there and
    # fractions later must still read as the whole-file reader reads them.
    rng = np.random.default_rng(5)
    rows = 30_000
    x = rng.normal(size=(rows, N_IN)).astype(np.float32)
    x[: rows // 2, 0] = np.round(x[: rows // 2, 0] * 10)
    y = rng.integers(0, N_CLASSES, rows)
    (tmp_path / "data").mkdir()
    write_table(tmp_path / "data" / "train-00000.csv", x[:20_000], y[:20_000])
    write_table(tmp_path / "data" / "train-00001.csv", x[20_000:], y[20_000:])
    write_table(tmp_path / "data" / "test.csv", x[:100], y[:100])
    conf = conf_for({"dataset": "csv", "data_dir": str(tmp_path / "data"), "network": {"n_in": N_IN, "n_out": 4}})
    with caplog.at_level("INFO", logger="deepgrid"):
        in_memory, mapped = load_splits(conf), load_splits(conf.replace(memory_map=True))
    assert len(mapped[0]) == rows
    assert any("column 'f0' holds double further down" in r.getMessage() for r in caplog.records)
    assert [d.digest() for d in mapped] == [d.digest() for d in in_memory]


def test_a_second_run_reuses_the_cache_and_a_changed_file_is_converted_again(
        tmp_path: Path, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf = conf_for(write_source("csv", tmp_path / "data"), memory_map=True)
    with caplog.at_level("INFO", logger="deepgrid"):
        load_source(conf, "train")
        [entry] = cache_entries(home)
        written = (entry / "x.npy").stat().st_mtime_ns
        caplog.clear()
        again = load_source(conf, "train")
    assert any("reusing its converted copy" in r.getMessage() for r in caplog.records)
    assert (entry / "x.npy").stat().st_mtime_ns == written and cache_entries(home) == [entry]

    x, y = splits()["train"]
    write_table(tmp_path / "data" / "train.csv", x[:300], y[:300])  # new size and time: a new key
    changed = load_source(conf, "train")
    assert (len(again), len(changed)) == (600, 300) and len(cache_entries(home)) == 2


def test_a_truncated_or_half_written_cache_is_not_used(tmp_path: Path, home: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    conf = conf_for(write_source("parquet", tmp_path / "data"), memory_map=True)
    expected = load_source(conf.replace(memory_map=False), "train").digest()
    load_source(conf, "train")
    [entry] = cache_entries(home)
    with open(entry / "x.npy", "r+b") as f:  # as if the disk lost its tail
        f.truncate(entry.joinpath("x.npy").stat().st_size - 1000)
    with caplog.at_level("WARNING", logger="deepgrid"):
        assert load_source(conf, "train").digest() == expected
    assert any("is incomplete" in r.getMessage() for r in caplog.records)

    # A conversion killed half way: its temporary folder, never renamed; the entry itself absent.
    entry.rename(entry.parent / f".{entry.name}.tmp-424242")
    assert cache_entries(home) == []
    assert load_source(conf, "train").digest() == expected
    assert cache_entries(home) == [entry] and not list(entry.parent.glob("*.tmp-*"))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_table_errors_are_the_in_memory_lines_and_leave_no_cache(kind: str, tmp_path: Path, home: Path) -> None:
    fields = write_source(kind, tmp_path)
    path = tmp_path / f"train.{kind}"
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields, label_column="class", memory_map=True))
    assert "no label column 'class'" in one_line(error, path)
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields, network={"n_in": N_IN + 1}, memory_map=True))
    assert f"{N_IN} features per example but network.n_in is {N_IN + 1}" in one_line(error, path)

    x, y = splits()["train"]
    y = y.copy()
    y[5] = N_CLASSES
    write_table(path, x, y)
    for memory_map in (False, True):
        with pytest.raises(DataError) as error:
            load_splits(conf_for(fields, memory_map=memory_map))
        assert f"label {N_CLASSES} (example 5) is out of range" in one_line(error, path)
    assert cache_entries(home) == []

    x = x.copy()
    x[400, 3] = np.nan
    y[5] = 0
    write_table(path, x, y)
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields, memory_map=True))
    assert "example 400 has a missing, NaN or infinite feature" in one_line(error, path)
    assert len(load_splits(conf_for(fields, memory_map=True, train_limit=400))[0]) == 400  # as in memory


def test_csv_errors_in_a_later_block(tmp_path: Path, home: Path) -> None:
    fields = write_source("csv", tmp_path, n_train=20_000)  # 3 MB: several 1 MB blocks
    path = tmp_path / "train.csv"
    text = path.read_text()
    path.write_text(text + "1,2,3\n")
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields, memory_map=True))
    assert "Expected 17 columns, got 3" in one_line(error, path)
    last = text.splitlines()[-1]
    path.write_text(text + "abc" + last[last.index(","):] + "\n")  # a word in f0, 3 MB down
    for memory_map in (False, True):
        with pytest.raises(DataError) as error:
            load_splits(conf_for(fields, memory_map=memory_map))
        assert "column 'f0' holds string, not numbers" in one_line(error, path)
    assert cache_entries(home) == []


def test_image_errors_are_the_in_memory_lines(tmp_path: Path, home: Path) -> None:
    fields = write_source("images", tmp_path)
    bad = tmp_path / "train" / "class2" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields, memory_map=True))
    assert "not a readable image" in one_line(error, bad)
    bad.unlink()
    with pytest.raises(DataError, match="n_in = 3 x side x side"):
        load_splits(conf_for(fields, image_mode="rgb", memory_map=True))
    with pytest.raises(DataError) as error:
        load_splits(conf_for(fields, network={"n_out": 3}, memory_map=True))
    assert "label 3 (example" in one_line(error, tmp_path / "train")
    assert cache_entries(home) == []
    rgb = load_splits(conf_for(fields, image_mode="rgb", network={"n_in": 3 * 4 * 4}, memory_map=True))
    assert rgb[0].x.shape == (600, 48)


def test_memory_map_is_refused_for_kinds_it_does_not_stream() -> None:
    for dataset in ("npz", "callable", "fashion-mnist"):
        with pytest.raises(ConfigError, match="memory_map"):
            Conf(dataset=dataset, memory_map=True)
    assert Conf(dataset="npy", memory_map=True).memory_map


def test_two_workers_train_a_mapped_csv_reading_their_files(tmp_path: Path) -> None:
    from deepgrid.distributed import engine
    from deepgrid.distributed.runner import ActorNetworkRunner

    conf = conf_for(write_source("csv", tmp_path / "data"), memory_map=True, workers=2, data_feed="files",
                    averaging_frequency=4, epochs=3, validation_fraction=0.1)
    _, test = load_splits(conf)
    engine.start_local(num_cpus=2)
    try:
        runner = ActorNetworkRunner("master", None)  # the runner and its workers convert or reuse, and compare digests
        try:
            runner.setup(conf)
            assert len(runner.workers) == 2
            model = runner.train()
        finally:
            runner.shutdown()
    finally:
        engine.shutdown()
    assert model.score(test.x, test.y) > 0.9


# -- a CSV of about 200 MB, converted in a subprocess -------------------------------------------
BIG_COLUMNS, BIG_BLOCK_ROWS, BIG_BLOCKS = 64, 20_000, 18

# The child measures its own peak resident memory while it loads, above what it held before:
# Python, torch and pyarrow imported, and the same load done once on a 10-row CSV (the libraries'
# first-use set-up, about 50 MB, is not the data's). VmHWM is reset for that (/proc/PID/clear_refs,
# "5"): ru_maxrss cannot be, and also counts the parent's peak when the child is started by vfork
# (exec moves the old memory map's peak into it), which would hide what is measured.
CHILD = """
import json, sys, time
from pathlib import Path
from deepgrid import Conf
from deepgrid.data.sources import load_source

def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024

conf = Conf.from_dict(json.loads(sys.argv[1]))
load_source(conf.replace(data_dir=sys.argv[2]), "train")
before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
started = time.perf_counter()
data = load_source(conf, "train")
print(json.dumps({"rows": len(data), "seconds": time.perf_counter() - started, "before_mb": before,
                  "grew_mb": status("VmHWM") - before}))
"""


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    block = rng.normal(size=(BIG_BLOCK_ROWS, BIG_COLUMNS))
    labels = rng.integers(0, 4, BIG_BLOCK_ROWS)
    text = "\n".join(",".join(f"{v:.5f}" for v in row) + f",{label}" for row, label in zip(block, labels,
                                                                                             strict=True)) + "\n"
    with open(directory / "train.csv", "w") as out:
        out.write(",".join(f"f{j}" for j in range(BIG_COLUMNS)) + ",label\n")
        for _ in range(BIG_BLOCKS):  # the same rows again: memory is what is measured, not learning
            out.write(text)
    (directory / "small").mkdir()
    write_table(directory / "small" / "train.csv", block[:10], labels[:10])
    return directory


def big_conf(directory: Path, **changes: Any) -> Conf:
    return Conf(model="mlp", dataset="csv", data_dir=str(directory),
                network={"n_in": BIG_COLUMNS, "n_out": 4}, **changes)


def child(conf: Conf, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEEPGRID_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(conf.to_dict()),
                             str(Path(conf.data_dir or "") / "small")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def measured(conf: Conf, home: Path) -> dict[str, Any]:
    out, err = child(conf, home).communicate(timeout=300)
    assert out.strip(), err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_converting_a_200_mb_csv_holds_a_small_part_of_it(big_csv: Path, home: Path) -> None:
    size_mb = (big_csv / "train.csv").stat().st_size / 2**20
    assert size_mb > 180
    streamed = measured(big_conf(big_csv, memory_map=True), home)
    held = measured(big_conf(big_csv), home)
    assert streamed["rows"] == held["rows"] == BIG_BLOCK_ROWS * BIG_BLOCKS
    print(f"\nCSV {size_mb:.0f} MB, {streamed['rows']:,} rows: streamed conversion {streamed['seconds']:.1f} s, "
          f"peak {streamed['grew_mb']:.0f} MB above the {streamed['before_mb']:.0f} MB held before; in memory "
          f"{held['seconds']:.1f} s, peak {held['grew_mb']:.0f} MB above")
    assert streamed["grew_mb"] < size_mb / 2
    assert held["grew_mb"] > size_mb / 2  # the bound is one the in-memory reader breaks
    reused = measured(big_conf(big_csv, memory_map=True), home)
    assert reused["seconds"] < streamed["seconds"] / 3 and reused["grew_mb"] < size_mb / 4


def test_a_conversion_killed_half_way_leaves_no_cache(big_csv: Path, home: Path) -> None:
    conf = big_conf(big_csv, memory_map=True)
    process = child(conf, home)
    deadline = time.monotonic() + 120
    partial = home / "cache" / "data"
    while time.monotonic() < deadline:
        written = list(partial.glob(".*.tmp-*/x.npy")) if partial.is_dir() else []
        if written and written[0].stat().st_size > 20 << 20:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the conversion wrote nothing within 120 s")
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert entries_for(home, big_csv / "train.csv") == []
    assert measured(conf, home)["rows"] == BIG_BLOCK_ROWS * BIG_BLOCKS
    assert len(entries_for(home, big_csv / "train.csv")) == 1 and not list(partial.glob(".*.tmp-*"))
