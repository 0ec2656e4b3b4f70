"""A local cache of S3 objects, keyed by bucket, key and ETag, and directory views built from it.

Readers of data files (numpy, pyarrow, PIL, the IDX reader) want a local directory; an ``s3://``
data_dir is turned into one: every object under the prefix is downloaded once into
``<cache>/objects/<bucket>/<key>/<ETag>/<name>`` (a changed object has a new ETag, so a stale copy
is never read) and hard-linked into ``<cache>/views/<bucket>/<prefix>/`` under its relative name;
a file whose object was deleted from the prefix leaves the view when it is next built.
Downloads go to a temporary name and are renamed into place, so processes on one host (the master
and its worker actors) can fill the same cache at once and none reads a half-written file.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path

from deepgrid.errors import DataError
from deepgrid.storage.s3 import S3Object, S3Store, S3Url

log = logging.getLogger("deepgrid")

_UNSAFE = re.compile(r"[^0-9A-Za-z._-]")


def cache_root() -> Path:
    """``$DEEPGRID_HOME/cache/s3`` when DEEPGRID_HOME is set, else ``~/.cache/deepgrid/s3``."""
    home = os.environ.get("DEEPGRID_HOME")
    return Path(home) / "cache" / "s3" if home else Path.home() / ".cache" / "deepgrid" / "s3"


def _safe_parts(key: str) -> list[str]:
    """A key's parts as path components that cannot climb out of the cache ("..", "." dropped)."""
    return [part for part in key.split("/") if part not in ("", ".", "..")]


def object_path(obj: S3Object, bucket: str, root: Path | None = None) -> Path:
    """Where the cache keeps (or would keep) this version (ETag) of ``obj``."""
    root = root if root is not None else cache_root()
    parts = _safe_parts(obj.key)
    folder = root.joinpath("objects", bucket, *parts, _UNSAFE.sub("_", obj.etag) or "no-etag")
    return folder / (parts[-1] if parts else "object")


def is_cached(obj: S3Object, bucket: str, root: Path | None = None) -> bool:
    """Whether this host's cache holds this version of ``obj`` whole (nothing is downloaded)."""
    target = object_path(obj, bucket, root)
    return target.is_file() and target.stat().st_size == obj.size


def fetch_object(store: S3Store, obj: S3Object, bucket: str, root: Path | None = None) -> Path:
    """The local copy of ``obj`` (downloaded unless the cache holds this ETag already)."""
    target = object_path(obj, bucket, root)
    if is_cached(obj, bucket, root):
        return target
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
    os.close(fd)
    try:
        store.download(S3Url(bucket, obj.key), Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _link(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` atomically: a hard link (no second copy), a copy across devices."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        os.link(source, tmp)
    except OSError:
        import shutil

        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def local_view(url: S3Url, store: S3Store | None = None, root: Path | None = None) -> Path:
    """A local directory holding every object under ``url`` by its name relative to the prefix."""
    root = root if root is not None else cache_root()
    store = store if store is not None else S3Store()
    started = time.perf_counter()
    objects = [obj for obj in store.list(url) if not obj.key.endswith("/")]  # "folder" markers hold nothing
    if not objects:
        raise DataError(f"{url} holds no objects; upload the data files under that prefix or fix the URL.")
    view = root.joinpath("views", url.bucket, *_safe_parts(url.key))
    view.mkdir(parents=True, exist_ok=True)
    fetched, listed = 0, set()
    for obj in objects:
        relative = _safe_parts(obj.key[len(url.prefix):])
        if not relative:
            continue
        local = fetch_object(store, obj, url.bucket, root)
        target = view.joinpath(*relative)
        listed.add(target)
        try:
            same = target.stat().st_ino == local.stat().st_ino
        except OSError:
            same = False
        if not same:
            _link(local, target)
            fetched += 1
    removed = _prune(view, listed)
    if fetched or removed:
        log.info("%s: %d file(s) in the local cache %s, %d no longer under the prefix removed from it (%.2f s)",
                 url, fetched, view, removed, time.perf_counter() - started)
    return view


def _prune(view: Path, listed: set[Path]) -> int:
    """Unlink the view's files whose object is no longer under the prefix (deleted since an earlier
    run): a reader globbing the view (``train-*.npz``) must not find them. Returns how many. Dot
    files are other processes' links in progress; the cached objects themselves stay."""
    removed, folders = 0, {folder for target in listed for folder in target.parents}
    for path in sorted(view.rglob("*"), reverse=True):  # deepest first: a folder after its files
        if path.name.startswith("."):
            continue
        if path.is_dir():  # a listed object's folder stays: another process may be linking into it
            if path not in folders and not any(path.iterdir()):
                path.rmdir()
        elif path not in listed:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
