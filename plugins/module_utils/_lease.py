# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Leases: what an image session attached and mounted, and who owns it.

A lease is written *before* each loop device or mount is made (intent first), so a build killed at any instant
leaves a record from which everything it made can be found again — and nothing else. A session is stale when
its owner process is gone (pid and start time no longer match); stale sessions are reaped by the lease guard,
by the next build and by playbooks/clean.yml.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from typing import Dict, Iterator, List, Optional

DEFAULT_LEASE_DIR = "/run/pibake/leases"


def lease_dir() -> str:
    return os.environ.get("PIBAKE_LEASE_DIR") or DEFAULT_LEASE_DIR


def process_start_time(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def parent_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return 0
    return int(stat[stat.rfind(")") + 2:].split()[1])


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def find_owner_pid(start: Optional[int] = None) -> int:
    """The ansible-playbook (or ansible) process this code runs under: the topmost such ancestor.

    Ansible's workers are forks of the main process and show the same command line, so the topmost one is the
    process whose death means the run is over. Without any, the direct parent owns the session.
    """
    pid = start or os.getpid()
    owner = 0
    while pid > 1:
        words = command_line(pid).split()
        if any(os.path.basename(word).startswith(("ansible-playbook", "ansible")) for word in words[:3]):
            owner = pid
        pid = parent_pid(pid)
    return owner or os.getppid()


def owner_alive(record: Dict[str, object]) -> bool:
    pid = int(record.get("owner_pid") or 0)
    if pid <= 0:
        return bool(record.get("persistent"))
    return process_start_time(pid) == record.get("owner_start")


def new_record(kind: str, owner_pid: int, persistent: bool, **fields) -> Dict[str, object]:
    return {
        "id": f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
        "kind": kind,
        "owner_pid": 0 if persistent else owner_pid,
        "owner_start": None if persistent else process_start_time(owner_pid),
        "persistent": persistent,
        "created": time.time(),
        "state": "attaching",
        "loops": [],
        "mounts": [],
        **fields,
    }


def path_of(record: Dict[str, object]) -> str:
    return os.path.join(lease_dir(), f"{record['id']}.json")


def write_json(path: str, data: Dict[str, object]) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename): readers see the old or the new, whole."""
    temp = f"{path}.tmp.{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def save(record: Dict[str, object]) -> str:
    """Write the lease atomically (temp file + rename) and return its path."""
    os.makedirs(lease_dir(), mode=0o700, exist_ok=True)
    path = path_of(record)
    write_json(path, record)
    return path


def load(path: str) -> Optional[Dict[str, object]]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def remove(record: Dict[str, object]) -> None:
    path = path_of(record)
    for name in (path, path + ".lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def all_leases() -> List[str]:
    try:
        names = sorted(os.listdir(lease_dir()))
    except FileNotFoundError:
        return []
    return [os.path.join(lease_dir(), name) for name in names if name.endswith(".json")]


@contextlib.contextmanager
def locked(lease_path: str, blocking: bool = True) -> Iterator[bool]:
    """Hold the lease's lock (a sibling .lock file) while changing what it describes.

    Yields False when ``blocking`` is off and another live process holds it. The kernel drops the lock when
    its holder dies, so a killed build never leaves it held.
    """
    os.makedirs(os.path.dirname(lease_path), mode=0o700, exist_ok=True)
    fd = os.open(lease_path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
