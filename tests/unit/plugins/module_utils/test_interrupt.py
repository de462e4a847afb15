# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_interrupt: after SIGINT, a main thread stuck on a queue lock that a dead worker left taken ends the process with
99 at once; a lock held by a live worker is waited for; any other hang ends at the deadline with thread stacks; a
run without interrupt is left alone. Each case runs in a real Python process with a real multiprocessing queue."""

import os
import subprocess
import sys
import textwrap
import time

from ansible_collections.pibake.image.plugins.module_utils import _interrupt

COLLECTIONS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(_interrupt.__file__))))
PRELUDE = f"""
import multiprocessing, os, signal, sys, threading, time
sys.path.insert(0, {os.path.dirname(os.path.dirname(COLLECTIONS))!r})
from ansible_collections.pibake.image.plugins.module_utils._interrupt import arm_on_interrupt
queue = multiprocessing.get_context("fork").SimpleQueue()
signal.signal(signal.SIGINT, signal.default_int_handler)  # as ansible-core's own; a background job starts ignoring it

def worker(linger):  # like an ansible worker ended by the interrupt while it wrote into the results queue
    queue._wlock.acquire()
    time.sleep(linger)
    os._exit(1)

def interrupt():
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
"""


def _run(body, timeout=30):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=timeout, check=False)
    return proc, time.monotonic() - started


def test_a_queue_lock_left_by_a_dead_worker_ends_the_process_with_99():
    proc, seconds = _run("""
        dead = multiprocessing.get_context("fork").Process(target=worker, args=(0,))
        dead.start(); dead.join()
        arm_on_interrupt(grace=0.2, deadline=20)
        interrupt()
        queue.put("end")  # what the strategy's cleanup does: without the watchdog this waits forever
        print("put went through")
    """)
    assert proc.returncode == 99, proc.stderr
    assert seconds < 10
    assert proc.stdout.splitlines() == ["KeyboardInterrupt"]
    assert "results queue was left locked by a worker that the interrupt ended" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_lock_held_by_a_live_worker_is_waited_for():
    proc, seconds = _run("""
        arm_on_interrupt(grace=0.2, deadline=20)
        alive = multiprocessing.get_context("fork").Process(target=worker, args=(2.5,))
        alive.start()
        time.sleep(0.3)
        interrupt()
        queue.put("end")
    """)
    assert proc.returncode == 99, proc.stderr
    assert seconds >= 2.5, "the watchdog acted while the worker holding the lock was alive"
    assert "results queue was left locked" in proc.stderr


def test_any_other_hang_ends_at_the_deadline_with_the_thread_stacks():
    proc, seconds = _run("""
        arm_on_interrupt(grace=0.2, deadline=1.5)
        interrupt()
        threading.Event().wait()  # stuck on something that is not a queue lock
    """)
    assert proc.returncode == 99
    assert 1.5 <= seconds < 10
    assert "did not finish within 2 s of the interrupt" in proc.stderr
    assert "Thread 0x" in proc.stderr and "in <module>" in proc.stderr  # faulthandler's stacks


def test_the_interrupt_still_reaches_the_previous_handler_and_a_normal_exit_is_left_alone():
    proc, _seconds = _run("""
        calls = []
        signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
        assert arm_on_interrupt(grace=5, deadline=20)
        assert not arm_on_interrupt(grace=5, deadline=20)  # once is enough
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        print(calls, threading.active_count() == 2, flush=True)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[2] True"
    assert proc.stderr == ""


def test_only_a_queue_put_waiting_for_its_lock_counts_as_blocked():
    assert _interrupt.blocked_queue_lock(sys._getframe()) is None  # pylint: disable=protected-access
    assert _interrupt.blocked_queue_lock(None) is None


def test_live_forks_are_the_children_with_our_command_line():
    child = subprocess.Popen(["sleep", "5"])
    try:
        assert child.pid not in _interrupt.live_forks()  # another program: not a worker
    finally:
        child.kill()
        child.wait()
    pid = os.fork()
    if pid == 0:
        time.sleep(2)
        os._exit(0)  # pylint: disable=protected-access
    try:
        assert pid in _interrupt.live_forks()
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert pid not in _interrupt.live_forks()
