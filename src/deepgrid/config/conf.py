"""Conf: the run and the cluster, apart from the network (as in the seed).

A ``Conf`` names the model kind (the seed's ``setMultiLayerClazz``), holds the
``NeuralNetConfiguration``, and says how the run is split: batch size per
worker, epochs, workers, averaging frequency, and where the cluster's services
live. Loaded from YAML or JSON (``Conf.load``), overridden from the CLI
(``conf.replace``), printed at start with secrets masked (``conf.describe``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from deepgrid.config.cloud import check_cloud
from deepgrid.config.dashboard_address import DEFAULT as DASHBOARD_DEFAULT
from deepgrid.config.dashboard_address import check_dashboard
from deepgrid.config.model_names import check_model_name
from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.config.secrets import mask_secrets, public_conf
from deepgrid.config.validation import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Rule,
    check,
    check_location,
    reject_unknown_keys,
)
from deepgrid.errors import ConfigError, invalid

MNIST_DATASETS = ("fashion-mnist", "mnist")
# A user's own data (deepgrid.data.sources): files train.* and test.* in data_dir, or a callable.
DATA_SOURCES = ("npz", "npy", "csv", "parquet", "images", "callable")
DATASETS = MNIST_DATASETS + DATA_SOURCES
# Each has a module in deepgrid/distributed/strategies/.
STRATEGIES = ("average", "async", "sharing", "allreduce")

RULES: dict[str, Rule] = {
    "model": Rule("str"),
    "dataset": Rule("choice", choices=DATASETS),
    "data_dir": Rule("opt_str"),
    "binarize": Rule("bool"),
    "label_column": Rule("str"),
    "x_key": Rule("str"),
    "y_key": Rule("str"),
    "image_mode": Rule("choice", choices=("grayscale", "rgb")),
    "data_source": Rule("opt_str"),
    "memory_map": Rule("bool"),
    "train_limit": Rule("opt_int", low=1),
    "test_limit": Rule("opt_int", low=1),
    "validation_fraction": Rule("float", low=0, high=0.5),
    "batch_size": POSITIVE_INT,
    "epochs": Rule("opt_int", low=1),
    "workers": Rule("opt_int", low=1),
    "averaging_frequency": POSITIVE_INT,
    "block_momentum": Rule("opt_float", low=0, high=0.99),
    "reset_momentum": Rule("bool"),
    "pull_jobs": Rule("bool"),
    "strategy": Rule("choice", choices=STRATEGIES),
    "sharing_sparsity": Rule("float", low=0, high=1, low_open=True),
    "max_staleness": NON_NEGATIVE_INT,
    "allreduce_timeout_s": Rule("float", low=0.5),
    "data_feed": Rule("choice", choices=("object_store", "files")),
    "device": Rule("choice", choices=("cpu", "cuda")),
    "threads_per_worker": POSITIVE_INT,
    "patience": NON_NEGATIVE_INT,
    "min_improvement": Rule("float", low=0),
    "job_name": Rule("str"),
    "engine_address": Rule("opt_str"),
    "state_url": Rule("str"),
    "registry_url": Rule("opt_str"),
    "checkpoint_dir": Rule("opt_str"),
    "checkpoint_every": POSITIVE_INT,
    "keep_checkpoints": POSITIVE_INT,
    "heartbeat_timeout_s": Rule("float", low=0.5),
    "round_deadline_s": Rule("float", low=1),
    "dashboard": Rule("opt_str"),  # then check_dashboard: HOST:PORT or off
}

# A job name becomes a directory name (runs/<job_name>), a registry entry, a ZooKeeper node and part
# of every Redis key (and of SCAN patterns): no path separators, no leading dot, no whitespace or
# control characters, none of Redis's key separator and glob characters.
_BAD_JOB_NAME_CHARS = re.compile(r"[/\\:*?\[\]{}\s\x00-\x1f\x7f]")
MAX_JOB_NAME = 100


# The models whose training steps honour network.precision: bf16 (models/cd.py).
BF16_MODELS = ("rbm", "dbn", "sda")


@dataclass(frozen=True)
class Conf:
    """Everything about the run and the cluster. See the module docstring."""

    model: str = "dbn"  # a built-in kind, a `deepgrid.models` entry point, or pkg.module:ClassOrFactory
    network: NeuralNetConfiguration = field(default_factory=NeuralNetConfiguration)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None  # else $DEEPGRID_DATA, then Debian's /usr/share/datasets/<dataset>
    binarize: bool = False  # inputs scaled to [0, 1]; True thresholds them at 0.5
    # dataset csv/parquet: the column of class indices; every other column is a feature.
    label_column: str = "label"
    x_key: str = "x"  # dataset npz: the arrays' names in train.npz and test.npz
    y_key: str = "y"
    # dataset images: each image converted to one channel (grayscale) or three (rgb) and resized to
    # the square side that network.n_in gives (n_in = channels * side * side).
    image_mode: str = "grayscale"
    data_source: str | None = None  # dataset callable: "pkg.module:function", called with "train"/"test"
    # dataset csv/parquet/images: stream each split once into an on-disk .npy cache and train from it
    # memory-mapped, as dataset npy does (data larger than memory; deepgrid.data.stream_cache).
    memory_map: bool = False
    train_limit: int | None = None  # use only the first N training examples (quick runs)
    test_limit: int | None = None
    validation_fraction: float = 0.0  # held out of training for early stopping
    batch_size: int = 64  # per worker, as the seed split it
    epochs: int | None = None  # passes of fine-tuning; None takes network.finetune_epochs
    workers: int | None = None  # None: one per CPU core, as the seed's master did
    # Mini-batches per job between parameter averages. 100 from bench/bench_distributed.py --sweep-k:
    # a round costs about 4-5 ms of Ray round trip (parameters out and back), 3% of 100 batches of the
    # MLP but 14% of 20; accuracy after 2 epochs was the same at 20, 50 and 100.
    averaging_frequency: int = 100
    # Block momentum (BMUF) applied to each round's averaged step; None: 1 - 1/N for N workers
    # (0 for one worker; `sharing`: 0), 0: plain averaging. Measured (bench_distributed.py, MLP, 2 workers, 2
    # epochs): test accuracy 0.8538 -> 0.8564 at K = 100 and 0.8438 -> 0.8618 at K = 50.
    block_momentum: float | None = None
    # average: a worker given other parameters than its own (the round's mean) drops its SGD
    # momentum buffers, as CNTK's BMUF does by default. Kept, they compound with the block
    # momentum: the MLP on Fashion-MNIST at K = 10, 3 epochs, test accuracy 0.859/0.855/0.849
    # against 0.836/0.844/0.832 with 2/4/8 workers (at K = 100 within -0.6..+0.3 points;
    # bench/README.md, bench_momentum.py); with 4 workers and K = 4 a small MLP's parameters
    # grew without bound. Adam's and Adagrad's statistics are always kept.
    reset_momentum: bool = True
    # A worker that is done while a slower one will be busy for longer than its own next job takes
    # that job in the same round (so a straggler holds nobody up). False: one job per worker per
    # round, the same split whatever the timing (the same seed then gives the same parameters).
    pull_jobs: bool = True
    # How the master turns the workers' results into the next parameters (deepgrid.distributed.strategies).
    strategy: str = "average"
    # sharing: the share of a job's update entries each worker sends (the rest waits in its
    # residual); 0.01 sends 1/100 of the dense bytes (one int32 an entry). 1 sends whole updates.
    sharing_sparsity: float = 0.01
    # async: an update computed from parameters that more than this many other updates have changed
    # since counts less (1 / (1 + excess)); with N workers the usual staleness is N - 1.
    max_staleness: int = 4
    # allreduce: how long a collective step waits for a peer. A killed peer is noticed at once (its
    # connection closes: ~20 ms measured); this bounds a hung one. Kept under the round deadline's
    # 5 s floor, the others' jobs then go back to the queue unblamed and the group re-forms without
    # it, instead of all of them overrunning the round (a strike each). Raise it for models whose
    # one all-reduce takes seconds.
    allreduce_timeout_s: float = 4.0
    # "object_store": the master puts the data into Ray's object store once and workers map it
    # (zero-copy on one machine); "files": each worker reads the data files from its own disk.
    data_feed: str = "object_store"
    device: str = "cpu"
    threads_per_worker: int = 1
    patience: int = 0  # early stopping: rounds without improvement before stopping; 0 = off
    min_improvement: float = 1e-3
    job_name: str = "deepgrid"
    engine_address: str | None = None  # Ray address; None starts a local Ray
    state_url: str = "memory://"
    registry_url: str | None = None
    checkpoint_dir: str | None = None
    # Rounds between checkpoints. 1: every round is saved by a background thread while the next
    # one trains, so a killed master loses at most one round. Measured: saving a 2.2 MB model
    # takes 4-8 ms off the training thread and ~0.1 ms on it (copying the parameters), against
    # rounds of 80+ ms already at averaging_frequency 20; raise it for very large models.
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    heartbeat_timeout_s: float = 10.0
    round_deadline_s: float = 120.0
    # Where the master serves its live page and JSON API (deepgrid.dashboard): HOST:PORT, port 0 a
    # free one. Loopback needs no token; any other address asks for one, printed with the URL.
    # None or "off": no dashboard.
    dashboard: str | None = DASHBOARD_DEFAULT
    cloud: dict[str, Any] | None = None  # `deepgrid cluster up` on AWS: see deepgrid.config.cloud

    def __post_init__(self) -> None:
        for name, rule in RULES.items():
            object.__setattr__(self, name, check(name, getattr(self, name), rule))
        if isinstance(self.network, dict):
            object.__setattr__(self, "network", NeuralNetConfiguration.from_dict(self.network))
        if not isinstance(self.network, NeuralNetConfiguration):
            raise ConfigError(invalid("network", self.network, "a NeuralNetConfiguration or a mapping"))
        object.__setattr__(self, "model", check_model_name(self.model))
        if self.memory_map and self.dataset not in ("csv", "parquet", "images", "npy"):
            raise ConfigError(invalid("memory_map", True, f"false for dataset {self.dataset}",
                                      "It streams csv, parquet and images to disk; npy is always mapped."))
        if self.network.precision == "bf16" and self.model not in BF16_MODELS:
            # The other models would train in float32 all the same: say so rather than ignore it.
            raise ConfigError(invalid("network.precision", "bf16", f"float32 for model {self.model}",
                                      f"bf16 is for the pretraining models ({', '.join(BF16_MODELS)}); see docs/precision.md."))
        check_job_name(self.job_name)
        for name in ("data_dir", "checkpoint_dir"):  # a path, or s3://bucket/prefix (deepgrid.storage)
            check_location(name, getattr(self, name))
        object.__setattr__(self, "dashboard", check_dashboard(self.dashboard))
        object.__setattr__(self, "cloud", check_cloud(self.cloud))

    @property
    def finetune_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.network.finetune_epochs

    @property
    def model_args(self) -> dict[str, Any]:
        """The keyword arguments a user's model (``model: pkg.module:Class``) is built with."""
        return dict(self.network.model_args)

    @property
    def effective_workers(self) -> int:
        return self.workers if self.workers is not None else max(1, os.cpu_count() or 1)

    def replace(self, **changes: Any) -> Conf:
        """A copy with the given fields changed; ``None`` values are ignored (CLI flags not given)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        reject_unknown_keys("Conf", changes, [f.name for f in fields(self)])
        return dataclasses.replace(self, **changes)

    # -- serialisation -------------------------------------------------------
    def to_dict(self, *, mask_secrets: bool = False) -> dict[str, Any]:
        """Every field, the network as a dict. ``mask_secrets``: URLs' passwords as ``***``, the form
        to print or to store (model.json, registry entries); a masked state_url's password is read
        from the environment again (see deepgrid.state.redis)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["network"] = self.network.to_dict()
        return public_conf(out) if mask_secrets else out

    def public_dict(self) -> dict[str, Any]:
        """``to_dict(mask_secrets=True)``: what may be printed or stored at rest."""
        return self.to_dict(mask_secrets=True)

    @classmethod
    def from_dict(cls, data: Any) -> Conf:
        if not isinstance(data, dict):
            raise ConfigError(f"A configuration must be a mapping of keys to values; got {type(data).__name__}.")
        if "model_args" in data:  # a user's model's arguments beside `model:`; they live in the network
            data = fold_model_args(data)
        reject_unknown_keys("the configuration", data, [f.name for f in fields(cls)])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Conf:
        """Read a Conf from a YAML (.yaml/.yml) or JSON (.json) file."""
        return cls.from_dict(read_mapping(path))

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        text = self.to_json() if path.suffix == ".json" else self.to_yaml()
        path.write_text(text)

    def describe(self) -> str:
        """The effective configuration as YAML, secrets masked: printed at start."""
        return mask_secrets(yaml.safe_dump(self.public_dict(), sort_keys=False))


def fold_model_args(data: dict[str, Any]) -> dict[str, Any]:
    """A Conf mapping's top-level ``model_args`` moved into its network (network.model_args)."""
    data = dict(data)
    args = data.pop("model_args")
    network = data.get("network", {})
    network = network.to_dict() if isinstance(network, NeuralNetConfiguration) else network
    if not isinstance(network, dict):
        return data  # Conf() names the bad network
    if network.get("model_args") not in (None, {}, args):
        raise ConfigError("model_args is given twice, at the top and in network, with different values; keep one.")
    data["network"] = {**network, "model_args": args}
    return data


def check_job_name(name: Any) -> str:
    """A job name safe as a directory, a registry entry, a ZooKeeper node and a Redis key prefix."""
    if (not isinstance(name, str) or not name or len(name) > MAX_JOB_NAME or name.startswith(".")
            or _BAD_JOB_NAME_CHARS.search(name)):
        raise ConfigError(invalid(
            "job_name", name, f"1 to {MAX_JOB_NAME} characters without '/', '\\', ':', whitespace, *?[]{{}} "
            "or a leading dot (it names a directory and Redis keys)", "Name the run like 'fmnist-dbn'."))
    return name


def read_mapping(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML or JSON file, with one clear line for each way it can fail."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Configuration file {str(path)!r} does not exist; pass the path of a .yaml or .json file.")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}.") from None
