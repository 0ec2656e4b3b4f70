"""The default registry: a directory of JSON files, one per job (``<dir>/<name>.json``).

``file:///path/to/dir`` or a plain path; without one, ``$DEEPGRID_HOME/registry``.
Writes go to a temporary file renamed into place (``atomic_write``), so a reader
never sees half an entry. ``watch`` polls each watched file's modification time
from one daemon thread: no extra dependency, and a shared file system works too.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from deepgrid.checkpoint import atomic_write
from deepgrid.config.conf import Conf
from deepgrid.errors import ConfigError, invalid
from deepgrid.registry.base import WatchCallback, check_job_name, encode_entry, parse_entry, unknown_job
from deepgrid.state.status import deepgrid_home

logger = logging.getLogger(__name__)

SUFFIX = ".json"
POLL_S = 0.2


def directory_from_url(url: str | None) -> Path:
    if not url:
        return deepgrid_home() / "registry"
    if "://" not in url:
        return Path(url).expanduser()
    parts = urlsplit(url)
    # file://host/path would name another machine's disk; only the local one is meant.
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path or parts.query:
        raise ConfigError(invalid("registry_url", url, "file:///absolute/dir or a plain directory path"))
    return Path(unquote(parts.path))


class FileConfigRegistry:
    """Confs as ``<directory>/<name>.json``. See the module docstring."""

    def __init__(self, url: str | os.PathLike[str] | None = None, *, poll_s: float = POLL_S) -> None:
        self.directory = directory_from_url(os.fspath(url) if url is not None else None)
        self.url = f"file://{self.directory.absolute()}"
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"Registry {self.directory} is a file; expected a directory (new or existing).")
        self._poll_s = poll_s
        self._watches: list[tuple[str, WatchCallback]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, tuple[int, int, int] | None] = {}

    def _path(self, name: str) -> Path:
        return self.directory / f"{check_job_name(name)}{SUFFIX}"

    def register(self, name: str, conf: Conf) -> None:
        payload = encode_entry(conf)
        try:
            atomic_write(self._path(name), lambda p: p.write_bytes(payload))
        except OSError as e:
            raise ConfigError(f"Cannot write registry entry {name!r} in {self.directory}: {e.strerror or e}.") from None

    def retrieve(self, name: str) -> Conf:
        path = self._path(name)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            raise unknown_job(name, self.list(), self.url) from None
        except OSError as e:
            raise ConfigError(f"Cannot read registry entry {name!r} ({path}): {e.strerror or e}.") from None
        return parse_entry(name, payload, self.url)

    def list(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.directory.iterdir()
                      if p.name.endswith(SUFFIX) and not p.name.startswith(".") and p.is_file())

    def watch(self, name: str, callback: WatchCallback) -> None:
        path = self._path(name)
        with self._lock:
            self._watches.append((name, callback))
            self._seen.setdefault(name, _signature(path))
            if self._thread is None:
                # A daemon thread: a forgotten close() must not keep the process alive.
                self._thread = threading.Thread(target=self._poll, name="deepgrid-registry-watch", daemon=True)
                self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_s):
            with self._lock:
                watches = list(self._watches)
            for name in {n for n, _ in watches}:
                signature = _signature(self._path(name))
                if signature is None or signature == self._seen.get(name):
                    continue  # unchanged, or removed: a removed entry is no new Conf
                self._seen[name] = signature
                try:
                    conf = self.retrieve(name)
                except ConfigError as e:
                    logger.warning("deepgrid: ignoring a change to %s: %s", name, e)
                    continue
                for watched, callback in watches:
                    if watched == name:
                        callback(conf)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> FileConfigRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileConfigRegistry({str(self.directory)!r})"


def _signature(path: Path) -> tuple[int, int, int] | None:
    # mtime alone can miss two writes within the clock's resolution; a rename-into-place
    # write also changes the inode, and usually the size.
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)
