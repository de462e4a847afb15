# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The QEMU guard: the one process that launches qemu, and tears the test machine down when its owner dies.

A test machine is a working folder (disk copy, data disk, kernel, SSH key, console log) plus at most one running
qemu. Its record ``<vm dir>/<id>.json`` (``/run/pibake/vms``, or ``$PIBAKE_VM_DIR``) names the owner process
(pid + start time: the ``ansible-playbook`` or the test process), the working folder and the guard. The record is
written before anything else exists, so a machine whose owner was killed at any instant can be found again.

The guard is started first (double fork, own session, no inherited descriptors) and lives until the machine is
destroyed. It polls the owner, and the client talks to it through two files in the working folder:
``request.json`` (client writes: ``launch`` with the qemu argv, ``stop``, ``destroy``; numbered by ``seq``) and
``status.json`` (guard writes: last handled ``seq``, qemu pid, running, exit code). Only the guard starts qemu,
with ``PR_SET_PDEATHSIG`` = SIGKILL, so qemu cannot outlive it even when the guard itself is killed; and it
checks the owner before every launch. When the owner is gone the guard kills qemu and the preparing process,
deletes the working folder and the record, and exits. ``reap_stale`` does the same for machines whose guard is
gone too.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from typing import Callable, Dict, List, Optional

from ansible_collections.pibake.image.plugins.module_utils import _daemon
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._lease import owner_alive as _lease_owner_alive
from ansible_collections.pibake.image.plugins.module_utils._lease import process_start_time

DEFAULT_VM_DIR = "/run/pibake/vms"
POLL_SECONDS = 0.25
PR_SET_PDEATHSIG = 1
WORK_PREFIX = "pibake-boot-"


def vm_dir() -> str:
    return os.environ.get("PIBAKE_VM_DIR") or DEFAULT_VM_DIR


# ------------------------------------------------------------------ small file helpers


def write_json(path: str, data: Dict[str, object]) -> None:
    """Write ``data`` atomically (temp file + rename)."""
    temp = f"{path}.tmp.{os.getpid()}"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def read_json(path: str) -> Optional[Dict[str, object]]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2:].split()[0] in ("Z", "X")


def alive(pid: int, start: Optional[str]) -> bool:
    """True when ``pid`` runs (a zombie does not) and is the process that had start time ``start``."""
    return pid > 0 and start is not None and process_start_time(pid) == start and not _zombie(pid)


def owner_alive(record: Dict[str, object]) -> bool:
    """The owner of a machine still runs (a killed owner that nobody reaped yet counts as gone)."""
    return _lease_owner_alive(record) and not _zombie(int(record.get("owner_pid") or 0))


def new_record(owner_pid: int, work_dir: str) -> Dict[str, object]:
    owner_start = process_start_time(owner_pid)
    if owner_start is None:
        raise PibakeError(f"The owner process {owner_pid} of the test machine is not running; give a live pid.")
    return {
        "id": f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
        "kind": "qemu",
        "owner_pid": owner_pid,
        "owner_start": owner_start,
        "work_dir": work_dir,
        "created": time.time(),
        "prep_pid": os.getpid(),
        "prep_start": process_start_time(os.getpid()),
        "guard_pid": 0,
        "guard_start": None,
    }


def record_path(record: Dict[str, object]) -> str:
    return os.path.join(vm_dir(), f"{record['id']}.json")


def save_record(record: Dict[str, object]) -> str:
    os.makedirs(vm_dir(), mode=0o700, exist_ok=True)
    path = record_path(record)
    write_json(path, record)
    return path


def all_records() -> List[str]:
    try:
        names = sorted(os.listdir(vm_dir()))
    except FileNotFoundError:
        return []
    return [os.path.join(vm_dir(), name) for name in names if name.endswith(".json")]


# ------------------------------------------------------------------ QMP


def qmp(socket_path: str, command: str, timeout: float = 5.0) -> Dict[str, object]:
    """Send one QMP command to qemu and return its answer (raises OSError when qemu does not answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        stream = sock.makefile("rwb")
        json.loads(stream.readline())  # greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\r\n")
            stream.flush()
            while True:
                line = stream.readline()
                if not line:
                    raise OSError("qemu closed the QMP socket")
                answer = json.loads(line)
                if "event" not in answer:
                    break
        return answer


# ------------------------------------------------------------------ the guard process


def _set_pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.setpgid(0, 0)


def _kill(pid: int, start: Optional[str]) -> None:
    if alive(pid, start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Guard:
    """The guard's state machine (runs inside the guard process; ``step`` is one poll)."""

    def __init__(self, path: str, log: Callable[[str], None]):
        self.path = path
        self.log = log
        self.record = read_json(path) or {}
        self.work = str(self.record.get("work_dir", ""))
        self.qemu: Optional[subprocess.Popen] = None
        self.handled = 0
        self.status: Dict[str, object] = {"seq": 0, "running": False, "qemu_pid": 0, "exit_code": None,
                                          "launches": 0, "error": ""}

    # status.json is the guard's only way to answer
    def publish(self) -> None:
        if os.path.isdir(self.work):
            write_json(os.path.join(self.work, "status.json"), self.status)

    def launch(self, request: Dict[str, object]) -> None:
        if self.qemu is not None and self.qemu.poll() is None:
            self.status["error"] = "qemu is already running"
            return
        if not owner_alive(self.record):
            self.status["error"] = "owner gone"
            return
        argv = [str(arg) for arg in request["argv"]]
        out = open(os.path.join(self.work, "qemu.log"), "ab")
        try:
            self.qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=self.work,
                                         preexec_fn=_set_pdeathsig, close_fds=True)
        except OSError as err:
            self.status["error"] = f"cannot start {argv[0]}: {err}"
            return
        finally:
            out.close()
        self.status.update(running=True, qemu_pid=self.qemu.pid, qemu_start=process_start_time(self.qemu.pid),
                           exit_code=None, error="", launched_at=time.time(),
                           launches=int(self.status.get("launches", 0)) + 1)
        self.log(f"launched qemu pid {self.qemu.pid}")

    def stop(self, timeout: float) -> None:
        """Let the guest power off (QMP system_powerdown), then end qemu after ``timeout`` seconds."""
        if self.qemu is None or self.qemu.poll() is not None:
            return
        deadline = time.monotonic() + timeout
        asked = False
        while self.qemu.poll() is None and time.monotonic() < deadline:
            if not asked and time.monotonic() > deadline - timeout + min(5.0, timeout / 2):
                # the client usually ran `systemctl poweroff` over SSH first; the power button is the fallback
                with contextlib.suppress(OSError, ValueError):
                    qmp(os.path.join(self.work, "qmp.sock"), "system_powerdown")
                asked = True
            if not owner_alive(self.record):
                break
            time.sleep(POLL_SECONDS)
        if self.qemu.poll() is None:
            self.log("qemu did not power off in time; killing it")
            self.qemu.terminate()
            try:
                self.qemu.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.qemu.kill()
                self.qemu.wait()
            self.status["forced_stop"] = True
        self.reap_child()

    def reap_child(self) -> bool:
        """Notice that qemu exited; True when it just did."""
        if self.qemu is not None and self.qemu.poll() is not None:
            self.status.update(running=False, exit_code=self.qemu.returncode, stopped_at=time.time())
            self.log(f"qemu exited with {self.qemu.returncode}")
            self.qemu = None
            return True
        return False

    def teardown(self, why: str) -> None:
        self.log(f"tearing down: {why}")
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()
        prep_pid = int(self.record.get("prep_pid") or 0)
        if prep_pid not in (0, os.getpid(), int(self.record.get("owner_pid") or 0)):
            _kill(prep_pid, self.record.get("prep_start"))  # a module still copying for a dead owner
        remove_machine_files(self.record)

    def step(self) -> bool:
        """One poll; False when the guard should exit."""
        record = read_json(self.path)
        if record is None:
            if not os.path.exists(self.path):
                self.teardown("record removed")
                return False
            return True  # being rewritten
        self.record = record
        if not owner_alive(record):
            self.teardown(f"owner {record.get('owner_pid')} is gone")
            return False
        exited = self.reap_child()
        request = read_json(os.path.join(self.work, "request.json")) or {}
        seq = int(request.get("seq") or 0)
        if seq > self.handled:
            self.handled = seq
            action = request.get("action")
            self.log(f"request {seq}: {action}")
            if action == "launch":
                self.launch(request)
            elif action in ("stop", "destroy"):
                self.stop(float(request.get("timeout", 60)))
            self.status["seq"] = seq
            if action == "destroy":
                self.teardown("destroy requested")
                return False
            self.publish()
        elif exited:
            self.publish()
        return True


def remove_machine_files(record: Dict[str, object]) -> None:
    """Delete the working folder (only a pibake boot folder) and the record."""
    work = str(record.get("work_dir") or "")
    if work and os.path.basename(work.rstrip("/")).startswith(WORK_PREFIX):
        shutil.rmtree(work, ignore_errors=True)
    for leftover in glob.glob(os.path.join(vm_dir(), f"{record.get('id')}-*")):  # ssh control sockets
        with contextlib.suppress(OSError):
            os.unlink(leftover)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(record))


def _guard_main(path: str) -> None:
    guard = Guard(path, _daemon.log)
    _daemon.log(f"guarding {path}")
    while guard.step():
        time.sleep(POLL_SECONDS)


def start_guard(path: str) -> int:
    """Fork the guard for the machine record ``path`` (double fork, new session). Returns its pid."""
    record = read_json(path) or {}
    log_path = os.path.join(str(record.get("work_dir") or "/tmp"), "guard.log")
    return _daemon.spawn(lambda: _guard_main(path), log_path)


# ------------------------------------------------------------------ reaping


def reap(path: str) -> bool:
    """Tear down the machine of record ``path`` whatever its state: kill its guard, qemu and preparing process,
    delete its files. Returns True when there was something to reap."""
    record = read_json(path)
    if record is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return False
    _kill(int(record.get("guard_pid") or 0), record.get("guard_start"))
    status = read_json(os.path.join(str(record.get("work_dir") or ""), "status.json")) or {}
    _kill(int(status.get("qemu_pid") or 0), status.get("qemu_start"))
    prep_pid = int(record.get("prep_pid") or 0)
    if prep_pid != os.getpid():
        _kill(prep_pid, record.get("prep_start"))
    remove_machine_files(record)
    return True


def reap_stale() -> List[str]:
    """Reap every machine whose owner is gone (its guard normally did that already). Returns their ids."""
    reaped = []
    for path in all_records():
        record = read_json(path)
        if record is None or owner_alive(record):
            continue
        if reap(path):
            reaped.append(str(record.get("id")))
    return reaped
