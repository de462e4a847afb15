# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
name: progress
type: aggregate
short_description: Show the progress of long pibake steps while they run, and list the output files at the end
version_added: 0.1.0
description:
  - Long steps (base image download, compression, registry push and pull, flashing) append progress lines to a
    progress file. While a task runs, this callback looks at that file every O(interval) seconds and prints its
    newest line on the terminal, so a long step never looks stuck.
  - The progress file of a task is found from the task's own options C(progress_file), C(progress_log) and
    C(log_file) (templated with the host's variables), from the file named by the environment variable
    C(PIBAKE_PROGRESS_FILE) (which this callback sets for the tasks it runs, so any step can write there), and from
    the paths and glob patterns in O(files). Only files changed since the task started are shown, and only files on
    the controller.
  - A task that runs longer than O(heartbeat) seconds without any progress line gets a C(still running) line now and
    then.
  - At the end of the run it lists the files the build wrote into the deploy folder (the C(written) list of
    M(pibake.image.deploy_outputs), registered as C(pibake_outputs) by the build) with their sizes.
  - Works with any stdout callback, and through ansible-runner (the lines arrive as C(verbose) events).
requirements:
  - Enabled through C(callbacks_enabled) in C(ansible.cfg), for example
    C(callbacks_enabled = pibake.image.build_log, pibake.image.progress).
options:
  interval:
    description: Seconds between two looks at the progress files.
    type: float
    default: 5
    env:
      - name: PIBAKE_PROGRESS_INTERVAL
    ini:
      - section: callback_pibake_progress
        key: interval
  heartbeat:
    description:
      - Seconds without a progress line after which a running task is reported as still running, and again after
        each further such period. V(0) turns it off.
    type: float
    default: 60
    env:
      - name: PIBAKE_PROGRESS_HEARTBEAT
    ini:
      - section: callback_pibake_progress
        key: heartbeat
  files:
    description:
      - More progress files or glob patterns to follow, for example V(/run/pibake/*.progress).
      - A relative path is taken from the folder above the playbook's folder (the repository root for
        C(playbooks/*.yml)).
    type: list
    elements: str
    default: ["build/*.progress", "/run/pibake/*.progress"]
    env:
      - name: PIBAKE_PROGRESS_FILES
    ini:
      - section: callback_pibake_progress
        key: files
  summary:
    description: List the output files with their sizes at the end of the run.
    type: bool
    default: true
    env:
      - name: PIBAKE_PROGRESS_SUMMARY
    ini:
      - section: callback_pibake_progress
        key: summary
author:
  - pibake developers (@pibake)
"""

import glob
import os
import tempfile
import threading
import time

from ansible.plugins.callback import CallbackBase

# Task options that name a file receiving progress lines (pibake.image modules).
PROGRESS_OPTIONS = ("progress_file", "progress_log", "log_file")
# Modules whose result lists files written into the deploy folder, and the variable the build registers them in.
OUTPUT_ACTIONS = ("pibake.image.deploy_outputs", "deploy_outputs")
OUTPUT_VARIABLE = "pibake_outputs"
TAIL_BYTES = 8192


def last_line(path, since=None):
    """The last non-empty line of a file, or None when the file is missing, empty or older than ``since``."""
    try:
        st = os.stat(path)
        if since is not None and st.st_mtime < since:
            return None
        with open(path, "rb") as handle:
            if st.st_size > TAIL_BYTES:
                handle.seek(st.st_size - TAIL_BYTES)
            tail = handle.read(TAIL_BYTES)
    except OSError:
        return None
    for raw in reversed(tail.splitlines()):
        line = raw.decode("utf-8", "replace").strip()
        if line:
            return line
    return None


def human_size(size):
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # not reached


def describe_outputs(paths):
    """Lines naming each output with its size (and its disk usage when it is sparse)."""
    lines = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            lines.append((os.path.basename(path), "missing"))
            continue
        size = human_size(st.st_size)
        used = getattr(st, "st_blocks", 0) * 512
        if st.st_size >= (1 << 20) and used < st.st_size * 0.9:
            size += f" ({human_size(used)} on disk)"
        lines.append((os.path.basename(path), size))
    width = max((len(entry[0]) for entry in lines), default=0)
    return [f"  {name:<{width}}  {size}" for name, size in lines]


def format_seconds(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Running:
    """One task running on one host."""

    def __init__(self, host, task_name, uuid, paths):
        self.host = host
        self.task_name = task_name
        self.uuid = uuid
        self.paths = paths
        self.started = time.time()
        self.last_line = None
        self.last_said = time.monotonic()


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "pibake.image.progress"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = None
        self._running = {}
        self._play = None
        self._base_dir = os.getcwd()
        self._outputs = []
        self._own_progress_file = None
        self.interval = 5.0
        self.heartbeat = 60.0
        self.extra_files = []
        self.summary = True

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self.interval = max(0.2, float(self.get_option("interval")))
        self.heartbeat = max(0.0, float(self.get_option("heartbeat")))
        self.extra_files = [f for f in (self.get_option("files") or []) if f]
        self.summary = bool(self.get_option("summary"))

    # ------------------------------------------------------------------ where progress goes
    def _ensure_progress_file(self):
        """Give every task a file it can append progress lines to: $PIBAKE_PROGRESS_FILE."""
        path = os.environ.get("PIBAKE_PROGRESS_FILE")
        if not path:
            handle, path = tempfile.mkstemp(prefix="pibake-progress.", suffix=".log")
            os.close(handle)
            self._own_progress_file = path
            # Workers fork from this process after this point, so the tasks they run inherit it.
            os.environ["PIBAKE_PROGRESS_FILE"] = path
        return path

    def _templated_paths(self, host, task):
        args = getattr(task, "args", None) or {}
        wanted = {key: args[key] for key in PROGRESS_OPTIONS if isinstance(args.get(key), str) and args[key]}
        if not wanted:
            return []
        paths = []
        try:
            from ansible.template import Templar

            play = self._play
            manager = play.get_variable_manager() if play is not None else None
            variables = manager.get_vars(play=play, host=host, task=task) if manager is not None else {}
            templar = Templar(loader=play.get_loader() if play is not None else None, variables=variables)
        except Exception:  # pylint: disable=broad-exception-caught  # progress is best effort
            templar = None
        for value in wanted.values():
            if "{{" in value or "{%" in value:
                if templar is None:
                    continue
                try:
                    value = templar.template(value)
                except Exception:  # pylint: disable=broad-exception-caught  # e.g. a loop variable not known yet
                    continue
            if isinstance(value, str) and value:
                paths.append(os.path.expanduser(str(value)))
        return paths

    def _pattern_paths(self):
        paths = []
        for pattern in self.extra_files:
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = os.path.join(self._base_dir, pattern)
            paths.append(pattern)
        return paths

    # ------------------------------------------------------------------ the display thread
    def _start_thread(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pibake-progress", daemon=True)
            self._thread.start()

    def _loop(self):
        while not self._stop:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop:
                break
            try:
                self.tick()
            except Exception:  # pylint: disable=broad-exception-caught  # never break the run for a progress line
                pass

    def newest_line(self, running):
        """The newest line among the files of a running task, changed since it started."""
        best = None
        for path in running.paths:
            candidates = glob.glob(path) if glob.has_magic(path) else [path]
            for candidate in candidates:
                try:
                    mtime = os.stat(candidate).st_mtime
                except OSError:
                    continue
                if mtime < running.started - 1:
                    continue
                line = last_line(candidate)
                if line and (best is None or mtime > best[0]):
                    best = (mtime, line)
        return best[1] if best else None

    def tick(self):
        """Print what changed since the last look (called by the display thread, and by tests)."""
        with self._lock:
            running = list(self._running.values())
        for item in running:
            line = self.newest_line(item)
            now = time.monotonic()
            message = None
            if line and line != item.last_line:
                item.last_line = line
                message = f"  [{item.host}] {line}"
            elif self.heartbeat and now - item.last_said >= self.heartbeat:
                message = f"  [{item.host}] still running: {item.task_name} ({format_seconds(time.time() - item.started)})"
            if message is None:
                continue
            with self._lock:
                if self._running.get((item.host, item.uuid)) is not item:
                    continue  # finished meanwhile: its result line is already out
                item.last_said = now
                self._display.display(message)

    # ------------------------------------------------------------------ events
    def v2_playbook_on_start(self, playbook):
        name = getattr(playbook, "_file_name", None)
        if name:
            self._base_dir = os.path.dirname(os.path.dirname(os.path.abspath(name)))
        self._ensure_progress_file()

    def v2_playbook_on_play_start(self, play):
        self._play = play
        with self._lock:
            self._running.clear()

    def v2_playbook_on_task_start(self, task, is_conditional):
        strategy = getattr(self._play, "strategy", "linear") if self._play is not None else "linear"
        if strategy in (None, "linear", "ansible.builtin.linear"):
            # With the linear strategy every host has finished the previous task when the next starts.
            with self._lock:
                for key in [k for k, v in self._running.items() if v.uuid != task._uuid]:
                    del self._running[key]

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_runner_on_start(self, host, task):
        paths = self._templated_paths(host, task)
        paths.append(self._ensure_progress_file())
        paths.extend(self._pattern_paths())
        seen = set()
        unique = [p for p in paths if not (p in seen or seen.add(p))]
        name = (task.get_name() or task.action or "task").strip()
        with self._lock:
            self._running[(host.get_name(), task._uuid)] = _Running(host.get_name(), name, task._uuid, unique)
        self._start_thread()

    def _finished(self, result):
        with self._lock:
            self._running.pop((result._host.get_name(), result._task._uuid), None)

    def _collect_outputs(self, result):
        task = result._task
        data = result._result or {}
        written = None
        if getattr(task, "register", None) == OUTPUT_VARIABLE or task.action in OUTPUT_ACTIONS:
            written = data.get("written")
        facts = data.get("ansible_facts") or {}
        if written is None and isinstance(facts.get(OUTPUT_VARIABLE), dict):
            written = facts[OUTPUT_VARIABLE].get("written")
        if isinstance(written, (list, tuple)):
            for path in written:
                if isinstance(path, str) and path not in self._outputs:
                    self._outputs.append(path)

    def v2_runner_on_ok(self, result):
        self._finished(result)
        if not result._result.get("_ansible_no_log"):
            self._collect_outputs(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._finished(result)

    def v2_runner_on_skipped(self, result):
        self._finished(result)

    def v2_runner_on_unreachable(self, result):
        self._finished(result)

    def v2_playbook_on_stats(self, stats):
        self._stop = True
        self._wake.set()
        with self._lock:
            self._running.clear()
        if self._own_progress_file:
            try:
                os.unlink(self._own_progress_file)
            except OSError:
                pass
        if self.summary and self._outputs:
            folders = sorted({os.path.dirname(p) for p in self._outputs})
            lines = [f"pibake outputs ({', '.join(folders)})"] + describe_outputs(self._outputs)
            self._display.display("\n".join(lines))
