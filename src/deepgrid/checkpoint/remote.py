"""Run checkpoints on S3 (``checkpoint_dir: s3://bucket/prefix``): written locally, then uploaded.

*Whole or absent.* S3 has no directory rename, so a checkpoint counts only when its manifest
(``<name>/manifest.json``: each file's size and SHA-256, the run id, round and ``saved_at``) is
there, and the manifest is uploaded last, after every data file. A crash or a failed upload in
between leaves data without a manifest: listings skip it, a resume loads the previous checkpoint,
and the run's next successful upload deletes the leftover. Pruning deletes a checkpoint's manifest
first, so a half-deleted one never counts either.

*Only this run's.* Pruning and clean-up touch only keys under ``<prefix>/ckpt-<round>-<run id>*/``
of the writer's own run id; anything else under the prefix (other runs, the user's objects) stays.

*Names.* The local mirror (``<cache>/checkpoints/<bucket>/<prefix>``) names checkpoints as
deepgrid.checkpoint.naming does; a resumed run on a fresh host has an empty mirror, so the remote
name takes the next generation of a round the bucket already holds instead of overwriting it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepgrid.checkpoint.naming import checkpoint_name, parse_checkpoint_name
from deepgrid.errors import ModelError
from deepgrid.storage import S3Store, S3Url, cache_root, parse_s3_url

log = logging.getLogger("deepgrid")

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1


@dataclass
class RemoteCheckpoint:
    """One checkpoint folder under the prefix: its keys, and whether its manifest is there."""

    name: str
    round: int
    run_id: str
    generation: int
    keys: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return any(key.endswith(f"/{MANIFEST_FILE}") for key in self.keys)

    def keys_manifest_first(self) -> list[str]:
        return sorted(self.keys, key=lambda key: not key.endswith(f"/{MANIFEST_FILE}"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class RemoteCheckpoints:
    """The checkpoints under one ``s3://bucket/prefix``."""

    def __init__(self, url: S3Url, store: S3Store | None = None) -> None:
        self.url = url
        self.store = store if store is not None else S3Store()

    @classmethod
    def open(cls, location: str | os.PathLike[str]) -> RemoteCheckpoints:
        return cls(parse_s3_url(location, "checkpoint_dir"))

    @property
    def mirror(self) -> Path:
        """The local directory checkpoints are written into before they are uploaded."""
        return cache_root().joinpath("checkpoints", self.url.bucket, *self.url.key.split("/") if self.url.key else ())

    def scan(self) -> dict[str, RemoteCheckpoint]:
        """Every checkpoint folder under the prefix, complete or not, by name."""
        found: dict[str, RemoteCheckpoint] = {}
        for obj in self.store.list(self.url):
            name, _, rest = obj.key[len(self.url.prefix):].partition("/")
            parsed = parse_checkpoint_name(name)
            if parsed is None or not rest:
                continue  # not a checkpoint's: never touched
            entry = found.setdefault(name, RemoteCheckpoint(name, *parsed))
            entry.keys.append(obj.key)
        return found

    def list(self, run_id: str | None = None) -> list[str]:
        """Complete checkpoints' names, oldest first, as deepgrid.checkpoint.list_checkpoints orders
        local ones: ``run_id``'s by round, or every run's with the run written last at the end."""
        runs: dict[str, list[RemoteCheckpoint]] = {}
        for entry in self.scan().values():
            if entry.complete and (run_id is None or entry.run_id == run_id):
                runs.setdefault(entry.run_id, []).append(entry)
        for entries in runs.values():
            entries.sort(key=lambda e: (e.round, e.generation))
        ordered = sorted(runs.values(), key=lambda entries: (self._saved_at(entries[-1]), entries[-1].round))
        return [e.name for entries in ordered for e in entries]

    def manifest(self, name: str) -> dict[str, Any]:
        raw = self.store.get_bytes(self.url.child(f"{name}/{MANIFEST_FILE}"))
        try:
            manifest = json.loads(raw)
        except ValueError:
            manifest = None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ModelError(f"{self.url.child(name)}/{MANIFEST_FILE} is damaged (not a deepgrid checkpoint "
                             "manifest); delete that checkpoint to resume from the one before it.")
        return manifest

    def _saved_at(self, entry: RemoteCheckpoint) -> float:
        value = self.manifest(entry.name).get("saved_at")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0

    # -- writing ----------------------------------------------------------------------------
    def publish(self, local: Path, keep: int) -> tuple[S3Url, float]:
        """Upload the local checkpoint ``local`` (data files, then its manifest), then prune its run's
        older ones; returns its URL and the seconds the upload took."""
        parsed = parse_checkpoint_name(local.name)
        if parsed is None:
            raise ModelError(f"{local} is not a checkpoint directory (ckpt-<round>-<run id>).")
        round_, run_id, generation = parsed
        before = self.scan()
        taken = [e.generation for e in before.values() if e.run_id == run_id and e.round == round_]
        if taken:
            generation = max(generation, 1 + max(taken))
        name = checkpoint_name(round_, run_id, generation)
        target = self.url.child(name)
        started = time.perf_counter()
        files = sorted(p for p in local.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
        entries: dict[str, dict[str, Any]] = {}
        for path in files:
            entries[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
            self.store.upload(path, target.child(path.name))
        data_s = time.perf_counter() - started
        meta = _read_json(local / "model.json")
        manifest = {"format": MANIFEST_FORMAT, "checkpoint": name, "run_id": run_id, "round": round_,
                    "saved_at": meta.get("saved_at", time.time()), "files": entries, "upload_s": round(data_s, 4)}
        self.store.put_bytes(json.dumps(manifest, indent=1).encode(), target.child(MANIFEST_FILE))  # last
        seconds = time.perf_counter() - started
        written = RemoteCheckpoint(name, round_, run_id, generation,
                                   [target.child(n).key for n in [*entries, MANIFEST_FILE]])
        self._prune({**before, name: written}, written, keep)
        return target, seconds

    def _prune(self, found: dict[str, RemoteCheckpoint], written: RemoteCheckpoint, keep: int) -> None:
        """Delete the run's checkpoints beyond the newest ``keep`` rounds, older copies of a round,
        and the run's manifest-less leftovers older than ``written`` (this writer's own failed uploads)."""
        mine = sorted((e for e in found.values() if e.run_id == written.run_id), key=lambda e: (e.round, e.generation))
        newest_of_round: dict[int, RemoteCheckpoint] = {}
        old: list[RemoteCheckpoint] = []
        for entry in mine:
            if not entry.complete:
                if (entry.round, entry.generation) < (written.round, written.generation):
                    old.append(entry)
                continue
            if entry.round in newest_of_round:
                old.append(newest_of_round[entry.round])
            newest_of_round[entry.round] = entry
        rounds = sorted(newest_of_round)
        old += [newest_of_round[r] for r in rounds[:-keep]]
        keys = [key for entry in old if entry.name != written.name for key in entry.keys_manifest_first()]
        if keys:
            self.store.delete(self.url.bucket, keys)

    # -- reading ----------------------------------------------------------------------------
    def download(self, name: str) -> Path:
        """The complete checkpoint ``name`` as a local directory (the cached copy when it is current),
        each file checked against the manifest."""
        manifest = self.manifest(name)
        local = cache_root().joinpath("resume", self.url.bucket, *self.url.key.split("/") if self.url.key else (),
                                      name)
        raw = json.dumps(manifest, sort_keys=True)
        cached = local / MANIFEST_FILE
        if cached.is_file() and cached.read_text() == raw:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=local.parent, prefix=f".download-{name}-"))
        try:
            for file_name, expected in manifest["files"].items():
                if "/" in file_name or file_name in ("", ".", ".."):
                    raise ModelError(f"{self.url.child(name)}/{MANIFEST_FILE} names a file {file_name!r} outside "
                                     "its checkpoint; it is damaged.")
                path = staging / file_name
                self.store.download(self.url.child(f"{name}/{file_name}"), path)
                if path.stat().st_size != expected.get("size") or _sha256(path) != expected.get("sha256"):
                    raise ModelError(f"{self.url.child(name)}/{file_name} does not match its manifest (size or "
                                     "SHA-256); the checkpoint is damaged: delete it to resume from the one before.")
            (staging / MANIFEST_FILE).write_text(raw)
            if local.exists():
                shutil.rmtree(local)
            os.replace(staging, local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return local

    def resolve(self) -> Path:
        """What ``--resume s3://bucket/prefix[/ckpt-name]`` loads, downloaded: the named checkpoint,
        or the newest complete one under the prefix."""
        if parse_checkpoint_name(self.url.name) is not None:
            parent = RemoteCheckpoints(S3Url(self.url.bucket, self.url.key.rpartition("/")[0]), self.store)
            if self.url.name not in parent.list():
                raise ModelError(f"{self.url} is not a complete checkpoint (no {MANIFEST_FILE}); resume from its "
                                 f"prefix s3://{self.url.bucket}/{parent.url.key} to load the newest one.")
            return parent.download(self.url.name)
        names = self.list()
        if not names:
            raise ModelError(f"{self.url} holds no complete checkpoint (ckpt-*/{MANIFEST_FILE}); nothing to resume from.")
        return self.download(names[-1])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
