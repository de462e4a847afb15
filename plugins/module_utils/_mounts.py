# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Mount, bind and unmount, and find the mounts below a folder (from /proc/self/mountinfo)."""

from __future__ import annotations

import os
import time
from typing import Callable, List, Optional, Sequence

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mountpoints() -> List[str]:
    """Every mountpoint of this mount namespace, in mount order."""
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [_unescape(line.split()[4]) for line in handle if line.strip()]


def mounts_below(folder: str) -> List[str]:
    """Mountpoints at or below ``folder``, deepest (last mounted) first, ready for unmounting."""
    base = os.path.realpath(folder).rstrip("/") or "/"
    found = [mp for mp in mountpoints() if mp == base or mp.startswith(base + "/")]
    # Reverse mount order unmounts children before parents, also for stacked mounts on one path.
    return list(reversed(found))


def is_mountpoint(path: str) -> bool:
    return os.path.realpath(path) in mountpoints()


def mount(source: str, target: str, fstype: str = "", options: Sequence[str] = ()) -> None:
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    argv += [source, target]
    run(argv, what=f"Mounting {source} on {target}")


def bind(source: str, target: str, read_only: bool = False) -> None:
    run(["mount", "--bind", source, target], what=f"Bind-mounting {source} on {target}")
    # A private bind keeps our later unmounts from propagating to (or from) the host's mounts.
    run(["mount", "--make-private", target], what=f"Making {target} private")
    if read_only:
        run(["mount", "-o", "remount,bind,ro", target], what=f"Remounting {target} read-only")


def unmount(target: str, attempts: int = 10, on_busy: Optional[Callable[[], None]] = None) -> None:
    """Unmount one mountpoint, retrying briefly while the last users exit (``on_busy`` runs before each retry)."""
    for attempt in range(attempts):
        if not is_mountpoint(target):
            return
        proc = run(["umount", target], check=False)
        if proc.returncode == 0:
            return
        if on_busy is not None:
            on_busy()
        time.sleep(0.2 * (attempt + 1))
    raise PibakeError(f"{target} stays busy; stop the processes using it (`fuser -vm {target}`) and run playbooks/clean.yml.")


def unmount_below(folder: str, on_busy: Optional[Callable[[], None]] = None) -> List[str]:
    """Unmount everything at or below ``folder``; returns what was unmounted."""
    done = []
    for mountpoint in mounts_below(folder):
        unmount(mountpoint, on_busy=on_busy)
        done.append(mountpoint)
    return done
