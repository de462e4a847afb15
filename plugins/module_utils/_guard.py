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

from ansible_collections.pibake.image.plugins.module_utils import _lease, _session

POLL_SECONDS = 0.5


def _watch(lease_path: str) -> None:
    while True:
        record = _lease.load(lease_path)
        if record is None and not os.path.exists(lease_path):
            return
        if record is not None and not _lease.owner_alive(record):
            sys.stdout.write(f"{time.strftime('%F %T')} owner {record.get('owner_pid')} of {record.get('id')} is gone; reaping\n")
            sys.stdout.flush()
            _session.reap(lease_path)
            return
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
