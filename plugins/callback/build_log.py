# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
name: build_log
type: notification
short_description: Write the whole run to a build log and summarize phase and role timings
version_added: 0.1.0
description:
  - Writes every play, task and result of the run (already censored by C(no_log)) with timestamps to a log
    file, which the build playbook publishes as C(deploy/build.log).
  - The path is C($PIBAKE_BUILD_LOG) when set, otherwise C(build/logs/<playbook>-<time>-<pid>.log) next to the
    playbook's folder. The callback exports C(PIBAKE_BUILD_LOG) so that tasks can find the file.
  - At the end it prints the time of each play (phase) and each role, slowest first.
requirements:
  - Enabled through C(callbacks_enabled) in C(ansible.cfg) (the project's does).
options: {}
author:
  - pibake developers (@pibake)
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase

# Result keys that never carry secrets and help a reader of the log.
SHOWN_KEYS = ("msg", "rc", "cmd", "stderr_lines", "stdout_lines", "path", "dest", "changed", "skip_reason")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "pibake.image.build_log"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._log = None
        self._started = time.monotonic()
        self._phase = None
        self._phase_times = {}
        self._role_times = {}
        self._task_started = {}
        self._last_result = {}  # (task, host) -> when its previous result (a loop item) came

    # ------------------------------------------------------------ output
    def _write(self, line):
        if self._log is not None:
            self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            self._log.flush()

    def v2_playbook_on_start(self, playbook):
        path = os.environ.get("PIBAKE_BUILD_LOG")
        if not path:
            base = os.path.dirname(os.path.dirname(os.path.abspath(playbook._file_name)))
            name = os.path.splitext(os.path.basename(playbook._file_name))[0]
            path = os.path.join(base, "build", "logs", f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._log = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
        # Workers fork from this process after this point, so tasks can find the log through the environment.
        os.environ["PIBAKE_BUILD_LOG"] = path
        self._write(f"playbook {playbook._file_name}")

    def v2_playbook_on_play_start(self, play):
        self._close_phase()
        self._phase = (play.get_name() or "play").strip()
        self._phase_start = time.monotonic()
        self._write(f"PLAY [{self._phase}]")

    def _close_phase(self):
        if self._phase is not None:
            self._phase_times[self._phase] = self._phase_times.get(self._phase, 0.0) + time.monotonic() - self._phase_start

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_started[task._uuid] = time.monotonic()
        self._last_result = {key: when for key, when in self._last_result.items() if key[0] != task._uuid}
        self._write(f"TASK [{task.get_name().strip()}]")

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def _result(self, status, result):
        task = result._task
        # A loop reports every item and then the whole task: count each stretch of time once, so that role times
        # add up to the run's time.
        now, key = time.monotonic(), (task._uuid, result._host.get_name())
        elapsed = now - self._last_result.get(key, self._task_started.get(task._uuid, now))
        self._last_result[key] = now
        role = task._role.get_name() if task._role else None
        if role:
            self._role_times[role] = self._role_times.get(role, 0.0) + elapsed
        data = result._result
        if data.get("_ansible_no_log"):
            shown = {"censored": "the output has been hidden due to the fact that 'no_log: true' was specified for this result"}
        else:
            shown = {key: data[key] for key in SHOWN_KEYS if key in data}
        item = data.get("_ansible_item_label", data.get("item")) if not data.get("_ansible_no_log") else None
        label = f" (item={item})" if item is not None else ""
        self._write(f"{status}: [{result._host.get_name()}]{label} {elapsed:.2f}s {json.dumps(shown, default=str)[:4000]}")

    def v2_runner_on_ok(self, result):
        self._result("changed" if result._result.get("changed") else "ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("failed (ignored)" if ignore_errors else "FAILED", result)

    def v2_runner_on_skipped(self, result):
        self._result("skipping", result)

    def v2_runner_on_unreachable(self, result):
        self._result("UNREACHABLE", result)

    def v2_runner_item_on_ok(self, result):
        self.v2_runner_on_ok(result)

    def v2_runner_item_on_failed(self, result):
        self._result("FAILED", result)

    def v2_playbook_on_stats(self, stats):
        self._close_phase()
        self._phase = None
        total = time.monotonic() - self._started
        lines = [f"pibake timings (total {total:.1f} s)"]
        lines += [f"  phase {name:<40} {secs:8.1f} s" for name, secs in self._phase_times.items()]
        for name, secs in sorted(self._role_times.items(), key=lambda kv: -kv[1]):
            lines.append(f"  role  {name:<40} {secs:8.1f} s")
        for line in lines:
            self._write(line)
        self._display.display("\n".join(lines))
        for host in sorted(stats.processed.keys()):
            self._write(f"RECAP {host}: {json.dumps(stats.summarize(host))}")
        if self._log is not None:
            self._log.close()
            self._log = None
