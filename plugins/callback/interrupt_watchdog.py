# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
name: interrupt_watchdog
type: aggregate
short_description: Make ansible-playbook end after Ctrl-C even when ansible-core's shutdown hangs
version_added: 0.1.0
description:
  - ansible-core 2.19 can hang forever after Ctrl-C (SIGINT) when one of its workers, ended by the interrupt, was
    writing into the results queue at that moment and left the queue's lock taken; the strategy then waits for that
    lock during its cleanup.
  - This callback adds a watchdog to the interrupt. From O(grace) seconds after the first SIGINT on, when the main
    thread waits for a queue lock and no worker is alive any more (nothing can release the lock, and the queue holds
    half a message), it prints one line on stderr, removes ansible's local temporary folder and exits with 99, the
    exit code of an interrupted run. When ansible-playbook still runs O(deadline) seconds after the interrupt, for
    whatever reason, it prints every thread's stack to stderr and exits the same way. Either way the build's lease
    guards release its loop devices and mounts.
  - Runs nothing until an interrupt comes.
requirements:
  - Enabled through C(callbacks_enabled) in C(ansible.cfg) (the project's does).
options:
  grace:
    description: Seconds after the interrupt before the watchdog looks for an orphaned queue lock.
    type: float
    default: 3.0
    env:
      - name: PIBAKE_INTERRUPT_GRACE
    ini:
      - section: pibake_interrupt_watchdog
        key: grace
  deadline:
    description: Seconds after the interrupt after which a still running ansible-playbook exits with 99.
    type: float
    default: 30.0
    env:
      - name: PIBAKE_INTERRUPT_DEADLINE
    ini:
      - section: pibake_interrupt_watchdog
        key: deadline
author:
  - pibake developers (@pibake)
"""

from ansible.plugins.callback import CallbackBase

from ansible_collections.pibake.image.plugins.module_utils._interrupt import arm_on_interrupt


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "pibake.image.interrupt_watchdog"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook):
        # ansible-core's task queue manager has installed its SIGINT handler by now; ours runs first, then its.
        arm_on_interrupt(grace=float(self.get_option("grace")), deadline=float(self.get_option("deadline")))
