# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""What a test run left behind: loop devices, mounts and processes, read straight from sysfs and /proc.

Everything is scoped to a folder the test owns (loops whose backing file is below it, mounts below it, processes
whose root, working folder, command line or open files point into it) or to a marker in the processes'
environment, so these checks never see — let alone touch — another developer's loops, mounts or processes.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, Iterable, List, Optional

from ansible_collections.pibake.image.plugins.module_utils import _mounts


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def loops() -> List[Dict[str, object]]:
    """Every attached loop device: name, backing file (without " (deleted)"), offset, sizelimit."""
    found = []
    try:
        names = sorted(name for name in os.listdir("/sys/block") if name.startswith("loop"))
    except OSError:
        return found
    for name in names:
        backing = _read(f"/sys/block/{name}/loop/backing_file")
        if not backing:
            continue
        found.append({
            "name": f"/dev/{name}",
            "back-file": backing.replace(" (deleted)", ""),
            "offset": int(_read(f"/sys/block/{name}/loop/offset") or 0),
            "sizelimit": int(_read(f"/sys/block/{name}/loop/sizelimit") or 0),
        })
    return found


def loops_under(folder: str, exclude: Iterable[str] = ()) -> List[str]:
    """``/dev/loopN: backing@offset`` for every loop whose backing file lies below ``folder``."""
    base = os.path.realpath(folder).rstrip("/") + "/"
    skip = set(exclude)
    return [f"{dev['name']}: {dev['back-file']}@{dev['offset']}" for dev in loops()
            if str(dev["back-file"]).startswith(base) and dev["name"] not in skip]


def mounts_under(folder: str, exclude: Iterable[str] = ()) -> List[str]:
    skip = {os.path.realpath(path) for path in exclude}
    return [mp for mp in _mounts.mounts_below(folder) if mp not in skip and not any(mp.startswith(s + "/") for s in skip)]


def _environ(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _links(pid: str) -> List[str]:
    links = []
    for name in ("root", "cwd", "exe"):
        try:
            links.append(os.readlink(f"/proc/{pid}/{name}"))
        except OSError:
            pass
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
    except OSError:
        pass
    return links


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def processes(folder: str = "", marker: str = "", exclude: Iterable[int] = (), not_in_session: int = 0) -> List[str]:
    """``pid command`` of every live process that belongs to the test.

    A process belongs when its environment holds ``marker`` (every process a test starts inherits it: Ansible's
    workers, modules, guards, chroot and qemu-aarch64 children), or its root, working folder, executable, open
    files or command line point below ``folder``. Zombies, the excluded pids (the test itself) and, when
    ``not_in_session`` is given, the members of that session do not count.
    """
    base = os.path.realpath(folder).rstrip("/") + "/" if folder else ""
    needle = marker.encode() if marker else b""
    skip = {os.getpid(), *exclude}
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in skip:
            continue
        state = _read(f"/proc/{pid}/stat")
        fields = state[state.rfind(")") + 2:].split() if state else []
        if len(fields) < 4 or fields[0] == "Z" or (not_in_session and int(fields[3]) == not_in_session):
            continue
        hit = bool(needle) and needle in _environ(pid)
        if not hit and base:
            cmd = _cmdline(pid)
            hit = base in cmd + " " or any(link.startswith(base) or link + "/" == base for link in _links(pid))
        if hit:
            comm = state[state.find("(") + 1:state.rfind(")")] if "(" in state else "?"
            found.append(f"{pid} [{comm} {fields[0]}] {_cmdline(pid)[:200]}")
    return found


def session_members(sid: int) -> List[int]:
    """Live (non-zombie) processes whose session id is ``sid`` (a build started with start_new_session)."""
    members = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        state = _read(f"/proc/{pid}/stat")
        if not state:
            continue
        fields = state[state.rfind(")") + 2:].split()
        if fields and fields[0] != "Z" and len(fields) > 3 and int(fields[3]) == sid:
            members.append(int(pid))
    return members


def users_of(path: str) -> List[str]:
    """Processes holding ``path`` (e.g. a block device) open."""
    real = os.path.realpath(path)
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == real:
                    found.append(f"{pid} {_cmdline(pid)[:120]}")
                    break
            except OSError:
                pass
    return found


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds passed; returns whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Baseline:
    """Loops and mounts that existed before a test started below ``folder`` (normally none)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.loops = set(loops_under(folder))
        self.mounts = set(mounts_under(folder))

    def new_loops(self, exclude: Iterable[str] = ()) -> List[str]:
        return [entry for entry in loops_under(self.folder, exclude) if entry not in self.loops]

    def new_mounts(self, exclude: Iterable[str] = ()) -> List[str]:
        return [mp for mp in mounts_under(self.folder, exclude) if mp not in self.mounts]


def describe(items: Optional[List[str]]) -> str:
    return "; ".join(items or []) or "none"
