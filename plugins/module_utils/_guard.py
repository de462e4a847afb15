# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The lease guard: a small detached process that tears a session down when its owner dies.

Ansible runs no `always:` block after Ctrl-C or kill -9, so teardown cannot live only in the playbook. The
guard runs in its own session (Ctrl-C in the terminal does not reach it), polls the owner's pid and start
time, and reaps the lease as soon as the owner is gone. It exits when the lease is detached normally.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Dict, List, Set

from ansible_collections.pibake.image.plugins.module_utils import _daemon, _lease, _session

POLL_SECONDS = 0.5


def _children_map() -> Dict[int, List[int]]:
    """Parent pid -> child pids of every process now."""
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def descendants(pid: int) -> Dict[int, object]:
    """The processes below ``pid`` now, with their start times (to tell a reused pid apart)."""
    children = _children_map()
    found: Dict[int, object] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child in found or child == os.getpid():
            continue
        found[child] = _lease.process_start_time(child)
        todo.extend(children.get(child, []))
    return found


def _session_id(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return 0


def forked_orphans(owner_cmdline: str, owner_start: object, spare: Set[int]) -> Dict[int, object]:
    """The workers a dead owner forked, found after the fact, with everything below them.

    The guard learns the owner's tree by polling, so a worker forked in the last interval before the kill is not
    in it. Ansible's workers are forks (same command line as the owner, started after it) that made a session of
    their own; once the owner is dead their parent is init or a subreaper, never a process with that command
    line. ``spare``: pids never to count (owners of live sessions).
    """
    if not owner_cmdline or owner_start is None:
        return {}
    found: Dict[int, object] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in spare or int(name) == os.getpid():
            continue
        pid = int(name)
        start = _lease.process_start_time(pid)
        if start is None or int(start) < int(str(owner_start)) or _session_id(pid) != pid:
            continue
        if _lease.command_line(pid) != owner_cmdline:
            continue
        if _lease.command_line(_lease.parent_pid(pid)) == owner_cmdline:
            continue  # a worker of a live run with the same command line
        found[pid] = start
        found.update(descendants(pid))
    return found


def _live_owners() -> Set[int]:
    owners = set()
    for path in _lease.all_leases():
        record = _lease.load(path)
        if record is not None and _lease.owner_alive(record):
            owners.add(int(record.get("owner_pid") or 0))
    return owners


def stop_orphans(known: Dict[int, object], grace: float = 5.0) -> List[int]:
    """SIGTERM, then SIGKILL, the remembered descendants of a dead owner that still run.

    ansible-core runs each task's worker in a session of its own, so killing ansible-playbook (even its process
    group) leaves the task running; it could recreate files in the working folder after the reap removed it.
    """
    def alive() -> List[int]:
        return [pid for pid, start in known.items() if start is not None and _lease.process_start_time(pid) == start]

    stopped = alive()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and alive():
            time.sleep(0.1)
    return stopped


def _watch(lease_path: str) -> None:
    workers: Dict[int, object] = {}
    owner_cmdline = ""
    while True:
        record = _lease.load(lease_path)
        if record is None and not os.path.exists(lease_path):
            return
        if record is not None and not _lease.owner_alive(record):
            _daemon.log(f"owner {record.get('owner_pid')} of {record.get('id')} is gone; reaping")
            workers.update(forked_orphans(owner_cmdline, record.get("owner_start"), _live_owners()))
            stopped = stop_orphans(workers)
            if stopped:
                _daemon.log(f"stopped the owner's remaining workers {stopped}")
            _session.reap(lease_path)
            return
        if record is not None and int(record.get("owner_pid") or 0) > 0:
            # Remember the owner's process tree while it lives: once it dies, its workers are re-parented.
            workers.update(descendants(int(record["owner_pid"])))
            owner_cmdline = owner_cmdline or _lease.command_line(int(record["owner_pid"]))
        time.sleep(POLL_SECONDS)


def start_guard(lease_path: str) -> int:
    """Start the guard of ``lease_path`` as a detached process. Returns its pid."""
    return _daemon.spawn(lambda: _watch(lease_path), os.path.join(os.path.dirname(lease_path), "guard.log"))
