# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Guard an empty mountpoint on the root filesystem so nothing can write into it while its drive is absent.

A guarded mountpoint is a directory owned by root with mode 0000 and the ext4 immutable attribute
(``chattr +i``): root cannot create files in it either, yet the kernel still mounts a filesystem over it (mount
does not modify the directory), and once mounted the drive's own root directory with its own permissions is
what everybody sees.

When the mountpoint already has its drive mounted (a live device), the bare directory underneath is reached
through a temporary bind mount of the filesystem that holds it; a bind mount does not carry submounts, so the
bind shows the directory itself.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import stat
import struct
import tempfile
from typing import Callable, Dict, Optional

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run

FS_IMMUTABLE_FL = 0x00000010
_LONG = struct.calcsize("l")
# _IOR('f', 1, long) and _IOW('f', 2, long): the size field encodes sizeof(long), the kernel copies an int.
FS_IOC_GETFLAGS = (2 << 30) | (_LONG << 16) | (ord("f") << 8) | 1
FS_IOC_SETFLAGS = (1 << 30) | (_LONG << 16) | (ord("f") << 8) | 2
_UNSUPPORTED = {errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class FlagsUnsupported(Exception):
    """The filesystem (or an emulator in between) does not support inode flags."""


def _open_dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def get_flags(path: str) -> int:
    """Inode flags of directory ``path`` (like ``lsattr -d``)."""
    fd = _open_dir(path)
    try:
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        except OSError as err:
            if err.errno in _UNSUPPORTED:
                raise FlagsUnsupported(str(err)) from None
            raise
        return buf[0]
    finally:
        os.close(fd)


def set_flags(path: str, flags: int) -> None:
    """Set inode flags of directory ``path`` (like ``chattr``)."""
    fd = _open_dir(path)
    try:
        buf = array.array("i", [flags])
        try:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, buf, False)
        except OSError as err:
            if err.errno in _UNSUPPORTED:
                raise FlagsUnsupported(str(err)) from None
            raise
    finally:
        os.close(fd)


def is_mountpoint(path: str) -> bool:
    """True when something is mounted on ``path`` (st_dev differs from the parent, or same inode as parent)."""
    return os.path.ismount(path)


def _containing_mount(path: str) -> str:
    """The mountpoint of the filesystem that holds the directory entry ``path``."""
    current = os.path.dirname(os.path.abspath(path))
    while current != "/" and not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def _desired(state: str, mode: int, immutable: bool):
    if state == "guarded":
        return mode, immutable
    return 0o755, False


def _apply(path: str, state: str, mode: int, immutable: bool, check_mode: bool, log: Callable[[str], None]) -> Dict:
    """Bring the bare directory ``path`` to the wanted state; ``path`` must not have anything mounted on it."""
    want_mode, want_immutable = _desired(state, mode, immutable)
    changes = []
    created = False
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise PibakeError(f"{path} exists but is not a directory; move it away so the mountpoint can be created.")
    if st is None:
        if state != "guarded":
            return {"changed": False, "changes": [], "immutable": False, "mode": None, "created": False}
        changes.append("create directory")
        created = True
        if not check_mode:
            os.mkdir(path, 0o700)
            os.chown(path, 0, 0)
            st = os.lstat(path)

    flags: Optional[int] = None
    supported = True
    if st is not None:
        try:
            flags = get_flags(path)
        except FlagsUnsupported:
            supported = False
    is_immutable = bool(flags is not None and flags & FS_IMMUTABLE_FL)

    # Lift the immutable flag first when something else must change: an immutable inode refuses chmod/chown.
    cur_mode = stat.S_IMODE(st.st_mode) if st is not None else None
    cur_owner = (st.st_uid, st.st_gid) if st is not None else None
    needs_meta = created or cur_mode != want_mode or cur_owner != (0, 0)
    if needs_meta and is_immutable:
        if not check_mode:
            set_flags(path, flags & ~FS_IMMUTABLE_FL)
        is_immutable = False
        flags = flags & ~FS_IMMUTABLE_FL
        if not want_immutable:
            changes.append("clear immutable attribute")
    if needs_meta:
        if cur_owner != (0, 0) and not created:
            changes.append("owner root:root")
        if cur_mode != want_mode:
            changes.append(f"mode {want_mode:04o}")
        if not check_mode:
            os.chown(path, 0, 0)
            os.chmod(path, want_mode)

    result_immutable: Optional[bool] = is_immutable
    if want_immutable and not is_immutable:
        if supported:
            changes.append("set immutable attribute")
            if not check_mode and st is not None:
                try:
                    set_flags(path, (flags or 0) | FS_IMMUTABLE_FL)
                except FlagsUnsupported:
                    supported = False
                    changes.pop()
            result_immutable = supported
        if not supported:
            log(f"The filesystem holding {path} does not support the immutable attribute; mode {want_mode:04o} "
                "alone guards it (root can still write there).")
            result_immutable = None
    elif not want_immutable and is_immutable:
        changes.append("clear immutable attribute")
        if not check_mode:
            set_flags(path, flags & ~FS_IMMUTABLE_FL)
        result_immutable = False
    return {
        "changed": bool(changes),
        "changes": changes,
        "immutable": result_immutable,
        "mode": f"{want_mode:04o}",
        "created": created,
    }


def guard(
    path: str,
    state: str = "guarded",
    mode: int = 0,
    immutable: bool = True,
    check_mode: bool = False,
    allow_bind: bool = True,
    log: Callable[[str], None] = lambda msg: None,
) -> Dict:
    """Guard (or unguard) the bare mountpoint ``path``; returns changed, changes, mounted, immutable, mode."""
    if state not in ("guarded", "unguarded"):
        raise PibakeError(f"state must be guarded or unguarded, not {state!r}.")
    path = os.path.abspath(path)
    if state == "unguarded" and not os.path.lexists(path):
        return {"changed": False, "changes": [], "immutable": False, "mode": None, "created": False, "mounted": False}
    if path == "/":
        raise PibakeError("The root directory cannot be a guarded mountpoint; name the data mountpoint instead.")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise PibakeError(f"Parent directory {parent} of the mountpoint is missing; create it first.")
    if os.path.lexists(path) and os.path.islink(path):
        raise PibakeError(f"{path} is a symlink; a mountpoint must be a real directory, remove the link.")
    mounted = os.path.isdir(path) and is_mountpoint(path)
    if not mounted:
        result = _apply(path, state, mode, immutable, check_mode, log)
        result["mounted"] = False
        return result
    if not allow_bind:
        raise PibakeError(
            f"A filesystem is mounted on {path}; unmount it, or allow the bind mount that reaches the directory below."
        )
    fs_root = _containing_mount(path)
    rel = os.path.relpath(path, fs_root)
    tmp = tempfile.mkdtemp(prefix="pibake-guard.", dir="/run" if os.path.isdir("/run") else None)
    try:
        run(["mount", "--bind", fs_root, tmp], what=f"bind-mounting {fs_root} to reach the bare {path}")
        try:
            # Private, so that mounts made elsewhere meanwhile do not propagate below it and keep it busy.
            run(["mount", "--make-private", tmp], what=f"making the temporary bind {tmp} private")
            result = _apply(os.path.join(tmp, rel), state, mode, immutable, check_mode, log)
        finally:
            if run(["umount", tmp], check=False).returncode != 0:
                run(["umount", "--lazy", tmp], what=f"unmounting the temporary bind {tmp}")
    finally:
        os.rmdir(tmp)
    result["mounted"] = True
    return result
