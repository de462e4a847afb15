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
