# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Bench helper: write the wall time of every task (start to result) as JSON lines to $PIBAKE_PERTASK_OUT."""

from __future__ import annotations

DOCUMENTATION = r"""
name: pibake_pertask
type: aggregate
short_description: Record per-task wall times for bench/customize-pertask
description:
  - Appends one JSON line per task result (task name, host, status, seconds) to the file named by
    E(PIBAKE_PERTASK_OUT).
requirements:
  - enabled in the bench only (C(ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins))
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "pibake_pertask"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._out = os.environ.get("PIBAKE_PERTASK_OUT", "")
        self._started: dict = {}

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._started[task._uuid] = time.monotonic()

    def _record(self, result, status: str) -> None:
        if not self._out:
            return
        task = result._task
        start = self._started.get(task._uuid)
        if start is None:
            return
        line = {"task": task.get_name(), "host": result._host.get_name(), "status": status,
                "seconds": round(time.monotonic() - start, 4)}
        with open(self._out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")
