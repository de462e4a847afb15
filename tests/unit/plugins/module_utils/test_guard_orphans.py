# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The lease guard remembers its owner's process tree and stops the workers a killed owner leaves running."""

import subprocess
import sys
import time

from ansible_collections.pibake.image.plugins.module_utils import _guard

# A parent that starts a child in a session of its own (as ansible-core does for its workers), prints the
# child's pid, then waits.
OWNER = r"""
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "300"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(300)
"""


def test_a_dead_owners_worker_is_found_and_stopped():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(owner.stdout.readline())
        known = _guard.descendants(owner.pid)
        assert worker in known and known[worker] is not None
        owner.kill()
        owner.wait()
        time.sleep(0.2)
        assert _guard.descendants(owner.pid) == {}  # re-parented: only the remembered tree still names it
        assert _guard.stop_orphans(known, grace=2.0) == [worker]
        deadline = time.time() + 5
        while time.time() < deadline and _guard._lease.process_start_time(worker) is not None:
            time.sleep(0.1)
        assert _guard._lease.process_start_time(worker) is None
    finally:
        owner.kill()


def test_a_reused_pid_is_left_alone():
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        assert _guard.stop_orphans({bystander.pid: "not-its-start-time"}, grace=0.2) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


# A parent that forks a worker (same command line) into a session of its own, as ansible-core's workers are,
# prints its pid, then waits.
FORKING_OWNER = r"""
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()
    time.sleep(300)
    os._exit(0)
print(pid, flush=True)
time.sleep(300)
"""


def _wait_gone(pid: int) -> bool:
    deadline = time.time() + 5
    while time.time() < deadline and _guard._lease.process_start_time(pid) is not None:
        time.sleep(0.1)
    return _guard._lease.process_start_time(pid) is None


def test_a_worker_forked_after_the_last_poll_is_found_by_its_command_line():
    owner = subprocess.Popen([sys.executable, "-c", FORKING_OWNER], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(owner.stdout.readline())
        cmdline = _guard._lease.command_line(owner.pid)
        start = _guard._lease.process_start_time(owner.pid)
        # While the owner lives, its worker is not an orphan.
        assert worker not in _guard.forked_orphans(cmdline, start, spare=set())
        owner.kill()
        owner.wait()
        time.sleep(0.2)
        found = _guard.forked_orphans(cmdline, start, spare=set())
        assert list(found) == [worker]
        assert _guard.forked_orphans(cmdline, start, spare={worker}) == {}
        assert _guard.stop_orphans(found, grace=2.0) == [worker]
        assert _wait_gone(worker)
    finally:
        owner.kill()


def test_processes_started_before_the_owner_are_never_counted():
    owner = subprocess.Popen([sys.executable, "-c", FORKING_OWNER], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(owner.stdout.readline())
        cmdline = _guard._lease.command_line(owner.pid)
        owner.kill()
        owner.wait()
        later = str(int(_guard._lease.process_start_time(worker)) + 10**6)
        assert _guard.forked_orphans(cmdline, later, spare=set()) == {}
        _guard.stop_orphans({worker: _guard._lease.process_start_time(worker)}, grace=2.0)
        assert _wait_gone(worker)
    finally:
        owner.kill()
