# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Start a detached watcher process (the lease guard, the QEMU machine guard) and let it log."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import Callable


def log(message: str) -> None:
    """One time-stamped line on the detached process's stdout, which is its log file."""
    sys.stdout.write(f"{time.strftime('%F %T')} {message}\n")
    sys.stdout.flush()


def spawn(main: Callable[[], None], log_path: str) -> int:
    """Run ``main`` in a detached process (double fork, new session, no inherited descriptors, stdout and stderr
    appended to ``log_path``). Returns its pid in the caller."""
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:
        os.close(write_end)
        os.waitpid(first, 0)
        with os.fdopen(read_end, "rb") as handle:
            data = handle.read().strip()
        return int(data or 0)
    # First child: leave the terminal's session, then fork again so the watcher is no session leader.
    os.close(read_end)
    try:
        os.setsid()
        second = os.fork()
        if second:
            os.write(write_end, str(second).encode())
            os._exit(0)
        os.close(write_end)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # Ansible waits for the module's stdout to close: the watcher must hold no inherited descriptor.
        os.closerange(3, 65536)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = sys.stdout
        os.chdir("/")
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        # A module that forks a watcher may turn SIGTERM into an exception; the watcher keeps the default.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        main()
    except BaseException:  # a watcher must never die silently
        traceback.print_exc()
    finally:
        os._exit(0)
