"""Shard-blocked epochs: a training split made of shard files, each host reading only its own.

With ``data_feed: files`` and a training split of two or more shard files (``train-00000.npz``,
``train-00001.npz``, ...; npz, csv or parquet), an epoch's batch order is blocked by shard: the
shards come in a seeded random order per epoch, the examples are shuffled within their shard, and
no mini-batch (and no job) mixes two shards. A worker then needs only the shards of the jobs it
trains, and reads each at its first such job (:class:`WorkerShards`); for an ``s3://`` data_dir it
downloads only those objects, through the ETag-keyed cache its host's actors share.

The master reads every shard (it needs their sizes, and holds the validation examples) and hands
the workers a :class:`ShardLayout`: the files, the rows kept of each (``train_limit``), the
training examples of each and their digests, which a worker checks each shard it reads against.
``validation_fraction`` is held out of each shard alike (seeded by the shard's number), so a worker
that reads one shard knows its training examples without the others.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deepgrid.data.dataset import ArrayDataset
from deepgrid.errors import DataError

if TYPE_CHECKING:
    from deepgrid.config.conf import Conf

SHARDED_KINDS = ("npz", "csv", "parquet")


@dataclass(frozen=True)
class ShardLayout:
    """What a worker needs to read the training shards itself; JSON-friendly (it travels to hosts)."""

    names: tuple[str, ...]  # file names relative to data_dir, in name order
    keep: tuple[int, ...]  # rows of each file kept (train_limit counts from the first shard)
    counts: tuple[int, ...]  # training examples of each shard (its validation part held out)
    digests: tuple[str, ...]  # ArrayDataset.digest() of each shard's training examples
    digest: str  # of every shard's training examples end to end: the run's data digest
    objects: tuple[tuple[str, int, str], ...] = ()  # s3 data_dir: each shard's (key, size, ETag)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardLayout:
        return cls(tuple(data["names"]), tuple(data["keep"]), tuple(data["counts"]), tuple(data["digests"]),
                   data["digest"], tuple(tuple(o) for o in data.get("objects", ())))  # type: ignore[misc]

    def n_batches(self, batch_size: int) -> int:
        """Mini-batches of an epoch: each shard drops its own ragged last batch."""
        return sum(count // batch_size for count in self.counts)


# -- the order of an epoch ---------------------------------------------------------------------
def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for part in parts:  # mixed as ArrayDataset.batch_order mixes (seed, epoch), kept within 63 bits
        seed = (seed * 1_000_003 + part) % (1 << 63)
    return torch.Generator().manual_seed(seed)


def shard_blocks(counts: tuple[int, ...] | list[int], batch_size: int, seed: int,
                 epoch: int) -> list[tuple[int, int, int]]:
    """The epoch's blocks as (shard, first batch position, end position), in the epoch's order:
    the shards in a seeded random order, each block as many batches as the shard fills."""
    order = torch.randperm(len(counts), generator=_generator(seed, epoch, 1)).tolist()
    blocks, position = [], 0
    for shard in order:
        n = counts[shard] // batch_size
        if n:
            blocks.append((shard, position, position + n))
            position += n
    return blocks


def shard_batch_order(count: int, batch_size: int, seed: int, epoch: int, shard: int) -> torch.Tensor:
    """A shard's examples (its own indices) per mini-batch of its block, shape (n_batches, B)."""
    n = count // batch_size
    order = torch.randperm(count, generator=_generator(seed, epoch, 2 + shard))
    return order[: n * batch_size].view(n, batch_size)


# -- reading ------------------------------------------------------------------------------------
def sharded_files(conf: Conf, split: str = "train") -> tuple[Path, list[Path]] | None:
    """(data directory, shard files) when ``split`` is read shard by shard, else None (one file,
    another kind, memory_map, a fed data set: today's whole-split path)."""
    if conf.data_feed != "files" or conf.dataset not in SHARDED_KINDS or conf.memory_map or conf.data_dir is None:
        return None
    from deepgrid.data.sources import _data_dir, split_files

    directory = _data_dir(conf)
    files = split_files(directory, split, conf.dataset)
    if len(files) < 2 or files[0].name == f"{split}.{conf.dataset}":
        return None
    return directory, files


def read_shard(conf: Conf, path: Path, keep: int, shard: int,
               raw: tuple[Any, Any] | None = None) -> tuple[ArrayDataset, ArrayDataset | None]:
    """(training, validation or None) examples of one shard file, as every host reads them:
    its first ``keep`` rows, ``validation_fraction`` held out seeded by the shard's number."""
    from deepgrid.data.sources import _read_file, finish

    x, y = raw if raw is not None else _read_file(path, conf.dataset, conf)
    data = finish(x, y, n_in=conf.network.n_in, n_out=conf.network.n_out, binarize=conf.binarize, limit=keep,
                  where=str(path))
    if conf.validation_fraction > 0:
        return data.split(conf.validation_fraction, seed=conf.network.seed + 7919 * (shard + 1))
    return data, None


def master_shards(conf: Conf) -> tuple[ShardLayout, ArrayDataset, ArrayDataset | None] | None:
    """The layout, training and validation examples of a sharded training split; None when the
    split is not read shard by shard (:func:`sharded_files`)."""
    found = sharded_files(conf)
    if found is None:
        return None
    from deepgrid.data.sources import _read_file

    names: list[str] = []
    keep: list[int] = []
    trains: list[ArrayDataset] = []
    validations: list[ArrayDataset] = []
    left = conf.train_limit
    for path in found[1]:
        raw = _read_file(path, conf.dataset, conf)
        kept = len(raw[1]) if left is None else min(len(raw[1]), left)
        if kept == 0:
            break  # train_limit reached: the later shards are not part of the run
        train, validation = read_shard(conf, path, kept, len(names), raw)
        names.append(path.name)
        keep.append(kept)
        trains.append(train)
        if validation is not None:
            validations.append(validation)
        left = None if left is None else left - kept
    objects: tuple[tuple[str, int, str], ...] = ()
    from deepgrid.storage import S3Store, is_s3, parse_s3_url

    if is_s3(conf.data_dir):  # the versions the master read: a worker fetches exactly these
        url = parse_s3_url(conf.data_dir, "data_dir")
        listed = {obj.key: obj for obj in S3Store().list(url)}
        objects = tuple((listed[key].key, listed[key].size, listed[key].etag)
                        for key in (url.prefix + name for name in names))
    train = _concat(trains)
    layout = ShardLayout(tuple(names), tuple(keep), tuple(len(t) for t in trains),
                         tuple(t.digest() for t in trains), train.digest(), objects)
    return layout, train, _concat(validations) if validations else None


def _concat(parts: list[ArrayDataset]) -> ArrayDataset:
    for part in parts[1:]:
        if part.x.shape[1:] != parts[0].x.shape[1:]:
            raise DataError(f"shards of a split must have the same columns: {tuple(part.x.shape[1:])} against "
                            f"{tuple(parts[0].x.shape[1:])}.")
    return ArrayDataset(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


class WorkerShards:
    """A worker's view of the shards: each read (downloaded for s3) at the first job that needs it."""

    def __init__(self, conf: Conf, layout: ShardLayout, device: str = "cpu") -> None:
        self.conf, self.layout, self.device = conf, layout, device
        self._loaded: dict[int, ArrayDataset] = {}

    @property
    def examples(self) -> int:
        return sum(self.layout.counts)

    def get(self, shard: int) -> ArrayDataset:
        """Shard ``shard``'s training examples, read now if this worker has not read them yet."""
        if shard not in self._loaded:
            name = self.layout.names[shard]
            train, _ = read_shard(self.conf, self._local_path(shard), self.layout.keep[shard], shard)
            if train.digest() != self.layout.digests[shard]:
                raise DataError(f"shard {name} on host {socket.gethostname()} holds other examples than the "
                                f"master's copy; every host must read the same data files.")
            if self.device != "cpu":
                train = ArrayDataset(train.x.to(self.device), train.y.to(self.device))
            self._loaded[shard] = train
        return self._loaded[shard]

    def _local_path(self, shard: int) -> Path:
        if not self.layout.objects:
            from deepgrid.storage import local_dir

            return Path(local_dir(self.conf.data_dir)).expanduser() / self.layout.names[shard]
        from deepgrid.storage import S3Object, S3Store, fetch_object, parse_s3_url

        url = parse_s3_url(self.conf.data_dir, "data_dir")
        return fetch_object(S3Store(), S3Object(*self.layout.objects[shard]), url.bucket)

    def held(self) -> list[int]:
        """The shards this worker's host holds: in its S3 cache (any of its actors may have fetched
        them), or for a local data_dir the ones this worker has read."""
        if not self.layout.objects:
            return sorted(self._loaded)
        from deepgrid.storage import S3Object, is_cached, parse_s3_url

        bucket = parse_s3_url(self.conf.data_dir, "data_dir").bucket
        return [s for s, obj in enumerate(self.layout.objects) if is_cached(S3Object(*obj), bucket)]
