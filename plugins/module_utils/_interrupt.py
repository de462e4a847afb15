# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Make an interrupted ansible-playbook end, even when ansible-core's own shutdown hangs.

On Ctrl-C, ansible-core (2.19) forwards SIGINT to its workers, which exit at once. A worker that was just writing a
message into the results queue dies holding the queue's write lock (a semaphore shared by all workers) with half a
message in the pipe, and the strategy's cleanup then waits forever to put its end marker into that queue:
ansible-playbook never exits.

The first SIGINT arms a watchdog thread. From ``grace`` seconds on it looks at the main thread: when that thread
waits for the write lock of a multiprocessing queue and no worker (a process forked from this one) is alive, nobody
can ever release the lock (and the pipe behind it is corrupt anyway), so the watchdog ends the process with 99,
ansible-playbook's exit code for an interrupt, after removing ansible's local temporary folder, the one thing of
the skipped shutdown that would stay behind; the lease guards release the build's loop devices and mounts. Should
the process still run after ``deadline`` seconds for any other reason, the watchdog writes every thread's stack to
stderr and ends it the same way.

The watchdog never uses Ansible's display (its lock may be what hangs); it writes straight to file descriptor 2.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import sys
import threading
import time
from typing import List, Optional

from ansible_collections.pibake.image.plugins.module_utils._lease import command_line

EXIT_INTERRUPTED = 99
_MP = os.sep + "multiprocessing" + os.sep


def say(text: str) -> None:
    try:
        os.write(2, f"[pibake] {text}\n".encode())
    except OSError:
        pass


def blocked_queue_lock(frame):
    """The multiprocessing lock ``frame`` (a thread's innermost frame) waits for inside a queue's ``put``, or None."""
    if frame is None or frame.f_code.co_name != "__enter__" or not frame.f_code.co_filename.endswith(
            _MP + "synchronize.py"):
        return None
    caller = frame.f_back
    if caller is None or caller.f_code.co_name != "put" or not caller.f_code.co_filename.endswith(_MP + "queues.py"):
        return None
    return frame.f_locals.get("self")


def live_forks(pid: Optional[int] = None) -> List[int]:
    """Children of ``pid`` that are forks of it (same command line) and have not exited: ansible's workers."""
    pid = pid or os.getpid()
    own = command_line(pid)
    found = []
    for tid in _listdir(f"/proc/{pid}/task"):
        for child in _read(f"/proc/{pid}/task/{tid}/children").split():
            stat = _read(f"/proc/{child}/stat")
            state = stat.rpartition(")")[2].split()[:1]
            if state and state[0] not in ("Z", "X") and command_line(int(child)) == own:
                found.append(int(child))
    return found


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


class Watchdog(threading.Thread):
    """Started by the first interrupt; see the module docstring."""

    def __init__(self, main_ident: int, grace: float, deadline: float):
        super().__init__(name="pibake-interrupt-watchdog", daemon=True)
        self.main_ident, self.grace, self.deadline = main_ident, grace, deadline

    def run(self) -> None:
        started = time.monotonic()
        time.sleep(self.grace)
        while time.monotonic() - started < self.deadline:
            frame = sys._current_frames().get(self.main_ident)  # pylint: disable=protected-access
            if blocked_queue_lock(frame) is not None and not live_forks():
                say("ansible-playbook's results queue was left locked by a worker that the interrupt ended (an "
                    "ansible-core shutdown hang); exiting now, the lease guards release the image")
                self.end()
            time.sleep(0.5)
        say(f"ansible-playbook did not finish within {self.deadline:.0f} s of the interrupt; exiting now (the thread "
            f"stacks follow, for a bug report), the lease guards release the image")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        self.end()

    @staticmethod
    def end() -> None:
        """Leave without the hung shutdown: flush what can be flushed, remove ansible's local temporary folder."""
        flusher = threading.Thread(target=_flush, daemon=True)  # stdout's lock may be held by a stuck thread
        flusher.start()
        flusher.join(1.0)
        local_tmp = _ansible_local_tmp()
        if local_tmp:
            shutil.rmtree(local_tmp, ignore_errors=True)
        os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access  # the normal exit path is what hangs


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _ansible_local_tmp() -> Optional[str]:
    """This process's ansible-local-* folder, when ansible-core created one (its atexit handler removes it)."""
    constants = sys.modules.get("ansible.constants")
    path = getattr(constants, "DEFAULT_LOCAL_TMP", None) if constants is not None else None
    return path if isinstance(path, str) and os.path.basename(path).startswith("ansible-local-") else None


def arm_on_interrupt(grace: float = 3.0, deadline: float = 30.0) -> bool:
    """Chain a handler before the current SIGINT handler that starts the watchdog on the first interrupt.

    Call from the main thread after ansible-core installed its own handler. Returns whether it was installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None) or getattr(previous, "pibake_watchdog", False):
        return False
    main_ident = threading.get_ident()
    started: List[Watchdog] = []

    def on_interrupt(signum, frame):
        if not started:
            started.append(Watchdog(main_ident, grace, deadline))
            started[0].start()
        if callable(previous):
            return previous(signum, frame)
        signal.signal(signum, signal.SIG_DFL)  # the default action: end the process
        os.kill(os.getpid(), signum)
        return None

    on_interrupt.pibake_watchdog = True
    signal.signal(signal.SIGINT, on_interrupt)
    return True
