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
import sys
import time
import traceback
from typing import Dict, List

from ansible_collections.pibake.image.plugins.module_utils import _lease, _session

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


def _log(message: str) -> None:
    sys.stdout.write(f"{time.strftime('%F %T')} {message}\n")
    sys.stdout.flush()


def _watch(lease_path: str) -> None:
    workers: Dict[int, object] = {}
    while True:
        record = _lease.load(lease_path)
        if record is None and not os.path.exists(lease_path):
            return
        if record is not None and not _lease.owner_alive(record):
            _log(f"owner {record.get('owner_pid')} of {record.get('id')} is gone; reaping")
            stopped = stop_orphans(workers)
            if stopped:
                _log(f"stopped the owner's remaining workers {stopped}")
            _session.reap(lease_path)
            return
        if record is not None and int(record.get("owner_pid") or 0) > 0:
            # Remember the owner's process tree while it lives: once it dies, its workers are re-parented.
            workers.update(descendants(int(record["owner_pid"])))
        time.sleep(POLL_SECONDS)


def start_guard(lease_path: str) -> int:
    """Fork the guard (double fork, new session, no inherited pipes). Returns the guard's pid in the parent."""
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:
        os.close(write_end)
        os.waitpid(first, 0)
        with os.fdopen(read_end, "rb") as handle:
            data = handle.read().strip()
        return int(data or 0)
    # First child: leave the terminal's session, then fork again so the guard is no session leader.
    os.close(read_end)
    os.setsid()
    second = os.fork()
    if second:
        os.write(write_end, str(second).encode())
        os._exit(0)
    try:
        os.close(write_end)
        log_path = os.path.join(os.path.dirname(lease_path), "guard.log")
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # Ansible waits for the module's stdout to close: the guard must hold no inherited descriptor.
        os.closerange(3, 65536)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = sys.stdout
        os.chdir("/")
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        # The module that forks the guard turns SIGTERM into an exception; the guard keeps the default.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _watch(lease_path)
    except BaseException:  # the guard must never die silently
        traceback.print_exc()
    finally:
        os._exit(0)
