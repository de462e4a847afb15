# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The snapshot cache of the customize phase (issue #9).

After each role the image is saved under a key that chains everything the image state depends on so far: the
base image's digest (and how much it was grown), then per role its name, the digest of its files, the digest of
the collection's plugins and the role's variables, and the previous key. A rebuild starts from the deepest
snapshot whose key still matches; a changed role changes its own key and therefore every later one.

Store layout, one flat folder (``<cache_dir>/snapshots``):

  <key>.img                  the disk image after the role (sparse, boot files written into its FAT)
  <key>.json                 the record: role, position, roles so far, size, created, last_used
  <key>.img.partial-<pid>    a snapshot being written; renamed into place only when complete
  .lock                      serializes commits, lookups and evictions of concurrent builds

A snapshot counts only once its record exists, and the record is written last (temp name + rename), so a build
killed at any point never leaves a half snapshot that a later build would use.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

from ansible_collections.pibake.image.plugins.module_utils import _lease
from ansible_collections.pibake.image.plugins.module_utils._base_image import _pid_alive
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

RECORD_VERSION = 1
PARTIAL = ".img.partial-"


# ---------------------------------------------------------------- keys


def _digest_of(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()


def base_key(base_sha256: str, grow_bytes: int) -> str:
    """The key of the unmodified (grown) base image: the root of every chain."""
    return _digest_of({"v": RECORD_VERSION, "base_sha256": base_sha256, "grow": int(grow_bytes)})


def role_key(previous: str, role: str, tree: str, plugins: str, variables: Dict[str, object]) -> str:
    """The key of the image state after ``role``, given the key of the state it started from."""
    return _digest_of({"previous": previous, "role": role, "tree": tree, "plugins": plugins, "vars": variables})


def chain_keys(base: str, roles: Sequence[Dict[str, object]], plugins: str) -> List[Optional[str]]:
    """Keys of every role in order; ``None`` from the first role whose variables could not be known (``vars`` None).

    ``roles``: dicts with ``name``, ``tree`` (digest of the role's files) and ``vars`` (templated values or None).
    """
    keys: List[Optional[str]] = []
    previous: Optional[str] = base
    for role in roles:
        if previous is None or role.get("vars") is None:
            previous = None
        else:
            previous = role_key(previous, str(role["name"]), str(role["tree"]), plugins, role["vars"])  # type: ignore[arg-type]
        keys.append(previous)
    return keys


# ---------------------------------------------------------------- store


class Store:
    """The snapshots folder."""

    def __init__(self, cache_dir: str):
        self.path = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), "snapshots")

    def image(self, key: str) -> str:
        return os.path.join(self.path, key + ".img")

    def record_path(self, key: str) -> str:
        return os.path.join(self.path, key + ".json")

    def partial(self, key: str) -> str:
        """A temp name for a snapshot being written, owned by this process."""
        os.makedirs(self.path, exist_ok=True)
        return os.path.join(self.path, f"{key}{PARTIAL}{os.getpid()}")

    @contextmanager
    def locked(self) -> Iterator[None]:
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, ".lock"), "a+", encoding="ascii") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_record(self, record: Dict[str, object]) -> None:
        _lease.write_json(self.record_path(str(record["key"])), record)

    def load(self, key: str) -> Optional[Dict[str, object]]:
        """The record of a complete snapshot, or None (missing, unreadable, or its image is gone or cut short)."""
        try:
            with open(self.record_path(key), encoding="utf-8") as handle:
                record = json.load(handle)
            size = os.stat(self.image(key)).st_size
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != key or record.get("size") != size:
            return None
        return record

    def commit(self, key: str, partial: str, record: Dict[str, object]) -> Dict[str, object]:
        """Move a finished ``partial`` image into place, then write its record (the step that makes it count)."""
        now = time.time()
        full = dict(record, key=key, version=RECORD_VERSION, size=os.stat(partial).st_size, created=now, last_used=now)
        with self.locked():
            os.replace(partial, self.image(key))
            self._write_record(full)
        return full

    def touch(self, key: str) -> None:
        """Mark a snapshot as just used (least-recently-used eviction)."""
        with self.locked():
            record = self.load(key)
            if record is not None:
                record["last_used"] = time.time()
                self._write_record(record)

    def deepest(self, keys: Sequence[Optional[str]], mark_used: bool = True) -> int:
        """Index of the deepest role whose snapshot exists, or -1. Marks it and its ancestors as used (unless
        ``mark_used`` is false: check mode).

        Writes nothing where there is nothing to find (no key, no snapshots folder): a build with the cache off
        leaves the disk as it was.
        """
        found = -1
        if not any(keys) or not os.path.isdir(self.path):
            return found
        with self.locked():
            for index, key in enumerate(keys):
                if key is not None and self.load(key) is not None:
                    found = index
        for key in keys[:found + 1] if mark_used else ():
            if key is not None:
                self.touch(key)
        return found

    def entries(self) -> List[Dict[str, object]]:
        """Records of every complete snapshot, least recently used first."""
        found = []
        for name in os.listdir(self.path) if os.path.isdir(self.path) else []:
            if name.endswith(".json"):
                record = self.load(name[:-5])
                if record is not None:
                    record["disk_bytes"] = _disk_bytes(self.image(name[:-5])) + _disk_bytes(self.record_path(name[:-5]))
                    found.append(record)
        return sorted(found, key=lambda record: float(record.get("last_used") or 0))

    def remove(self, key: str) -> None:
        """Record first: from then on the snapshot no longer counts, whatever happens to the image."""
        for path in (self.record_path(key), self.image(key)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def sweep(self, stale_after: float = 600.0) -> List[str]:
        """Delete leftovers of killed builds: partial images of dead processes, images or temp records without a
        record (older than ``stale_after`` seconds: a commit may be between its two renames right now)."""
        removed = []
        now = time.time()
        for name in os.listdir(self.path) if os.path.isdir(self.path) else []:
            path = os.path.join(self.path, name)
            if PARTIAL in name:
                pid = name.rsplit("-", 1)[-1]
                if pid.isdigit() and _pid_alive(int(pid)):
                    continue
            elif name.endswith(".img"):
                if os.path.exists(self.record_path(name[:-4])):
                    continue
                if now - _mtime(path) < stale_after:
                    continue
            elif ".json.tmp." in name:
                if now - _mtime(path) < stale_after:
                    continue
            else:
                continue
            try:
                os.unlink(path)
                removed.append(name)
            except FileNotFoundError:
                pass
        return removed

    def evict(self, max_bytes: int, keep: Sequence[str] = ()) -> List[str]:
        """Remove least recently used snapshots until they take at most ``max_bytes`` on disk.

        ``keep`` are removed only after every other one (the snapshot just taken), or first when one alone takes
        more than ``max_bytes``. Returns the keys removed.
        """
        removed: List[str] = []
        with self.locked():
            self.sweep()
            entries = self.entries()

            # A kept snapshot goes last, unless it alone is over the limit: then first, sparing the others.
            def order(record):
                if record["key"] not in keep:
                    return 1
                return 0 if int(record["disk_bytes"]) > max_bytes else 2

            entries.sort(key=lambda record: (order(record), float(record.get("last_used") or 0)))
            total = sum(int(record["disk_bytes"]) for record in entries)
            for record in entries:
                if total <= max_bytes:
                    break
                self.remove(str(record["key"]))
                total -= int(record["disk_bytes"])
                removed.append(str(record["key"]))
        return removed

    def total_bytes(self) -> int:
        return sum(int(record["disk_bytes"]) for record in self.entries())


def _disk_bytes(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def plan(store: Store, role_names: Sequence[str], keys: Sequence[Optional[str]],
         mark_used: bool = True) -> Dict[str, object]:
    """Which snapshot to start from and which roles still run."""
    if len(role_names) != len(keys):
        raise PibakeError("The snapshot plan needs one key per role; this is a bug in pibake, please report it.")
    index = store.deepest(keys, mark_used=mark_used)
    return {
        "restore": store.image(str(keys[index])) if index >= 0 else "",
        "restore_key": keys[index] if index >= 0 else "",
        "restored": list(role_names[:index + 1]),
        "remaining": [{"name": name, "key": key or ""} for name, key in zip(role_names[index + 1:], keys[index + 1:])],
    }
