# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Print ansible-runner events for a person at a terminal.

The compact form shows each play and task name, the progress lines and summaries that pibake's callbacks print
(``pibake.image.progress``: progress of long steps and the output files; ``pibake.image.build_log``: phase and role
timings), warnings, failures and the recap. ``full=True`` prints everything ansible-playbook would.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

# Events whose stdout is shown as it is in the compact form.
SHOWN = ("verbose", "warning", "deprecated", "error", "playbook_on_stats", "runner_on_unreachable",
         "playbook_on_no_hosts_matched", "playbook_on_no_hosts_remaining")
DEBUG_ACTIONS = ("debug", "ansible.builtin.debug", "ansible.legacy.debug")


class EventPrinter:
    """Callable for ansible-runner's ``event_handler``."""

    def __init__(self, stream: Optional[TextIO] = None, full: bool = False, timestamps: bool = False):
        self.stream = stream or sys.stdout
        self.full = full
        self.timestamps = timestamps
        self.started = time.monotonic()

    def _print(self, text: str) -> None:
        if not text:
            return
        if self.timestamps:
            stamp = f"[{time.monotonic() - self.started:7.1f}s] "
            text = "\n".join(stamp + line if line else line for line in text.split("\n"))
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: dict) -> bool:
        kind = event.get("event", "")
        stdout = (event.get("stdout") or "").rstrip("\n")
        if self.full:
            self._print(stdout)
            return True
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self._print(f"== {(data.get('play') or data.get('name') or '').strip()}")
        elif kind in ("playbook_on_task_start", "playbook_on_handler_task_start"):
            name = (data.get("task") or data.get("name") or "").strip()
            role = data.get("role")
            self._print(f"-- {role + ' : ' if role and role not in name else ''}{name}")
        elif kind in ("runner_on_ok", "runner_item_on_ok") and data.get("task_action") in DEBUG_ACTIONS:
            self._print(stdout)  # debug tasks are the playbooks' messages to the user
        elif kind == "runner_on_failed":
            if data.get("ignore_errors"):
                return True
            self._print(stdout)
        elif kind == "runner_item_on_failed":
            self._print(stdout)
        elif kind in SHOWN:
            self._print(stdout)
        return True
