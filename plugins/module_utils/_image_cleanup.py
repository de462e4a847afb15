# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Remove what an image must not carry: caches, logs, temp files, histories and the device identity.

Everything happens below ``root`` (``/`` inside the chroot or on a device; a directory in tests). Nothing is
followed out of ``root`` through a symlink and nothing on another filesystem (a bind or a mount) is touched:
directories are walked with ``lstat`` and entries whose ``st_dev`` differs from the root's are skipped.

The space a removal frees is counted from allocated blocks (``st_blocks * 512``) of files with a single link, so
sparse files and hard links are not over-counted. The filesystem's own free-space figure before and after is
returned too.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from typing import Dict, Iterable, List, Optional

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

HISTORY_FILES = (
    ".bash_history",
    ".zsh_history",
    ".sh_history",
    ".ash_history",
    ".python_history",
    ".lesshst",
    ".wget-hsts",
    ".viminfo",
    ".sqlite_history",
    ".mysql_history",
    ".psql_history",
    ".node_repl_history",
)
# Rotated or compressed logs are removed; live log files are truncated to zero so their owners and modes stay.
_ROTATED = re.compile(r"(\.(gz|xz|bz2|zst|lz4|old)|\.\d+(\.(gz|xz|bz2|zst))?|-\d{8}(\.(gz|xz|bz2|zst))?)$")
APT_LISTS_KEEP = ("lock",)
APT_LISTS_EMPTY_DIRS = ("partial", "auxfiles")
MACHINE_ID = "etc/machine-id"
DBUS_MACHINE_ID = "var/lib/dbus/machine-id"


class _Cleaner:
    def __init__(self, root: str, check_mode: bool, protect: Iterable[str] = ()):
        self.root = os.path.realpath(root)
        self.protect = {os.path.realpath(p) for p in protect}
        if not os.path.isdir(self.root):
            raise PibakeError(f"Cleanup root {root} is not a directory; pass the root of the system to clean.")
        self.root_dev = os.lstat(self.root).st_dev
        self.check_mode = check_mode
        self.categories: Dict[str, Dict[str, int]] = {}
        self.left_alone: List[str] = []

    # -- helpers -----------------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def rel(self, path: str) -> str:
        return "/" + os.path.relpath(path, self.root)

    def inside(self, path: str) -> bool:
        """True when ``path``'s parent directory resolves inside the root (no symlink leaves it)."""
        parent = os.path.realpath(os.path.dirname(path))
        return parent == self.root or parent.startswith(self.root.rstrip(os.sep) + os.sep)

    def protected(self, path: str) -> bool:
        """True for a protected path (the running module's own payload); the directories above it stay too."""
        return os.path.normpath(path) in self.protect

    def _count(self, category: str, key: str, amount: int = 1) -> None:
        entry = self.categories.setdefault(category, {"removed": 0, "truncated": 0, "replaced": 0, "bytes": 0})
        entry[key] += amount

    @staticmethod
    def _freed(st: os.stat_result) -> int:
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            return 0
        return st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else 0

    def _lstat(self, path: str) -> Optional[os.stat_result]:
        try:
            return os.lstat(path)
        except FileNotFoundError:
            return None

    # -- primitives --------------------------------------------------------------------------------------
    def remove(self, category: str, path: str) -> None:
        """Remove a file, symlink or directory tree below the root, never crossing into another filesystem."""
        if not self.inside(path):
            self.left_alone.append(f"{path}: outside the root")
            return
        st = self._lstat(path)
        if st is None:
            return
        if st.st_dev != self.root_dev:
            self.left_alone.append(f"{self.rel(path)}: on another filesystem")
            return
        if self.protected(path):
            return
        if stat.S_ISDIR(st.st_mode):
            if not self._remove_tree(category, path):
                return
            if not self.check_mode:
                os.rmdir(path)
            self._count(category, "removed")
            return
        if not self.check_mode:
            os.unlink(path)
        self._count(category, "removed")
        self._count(category, "bytes", self._freed(st))

    def _remove_tree(self, category: str, path: str) -> bool:
        """Empty directory ``path``; False when something in it had to stay (a mount below it)."""
        complete = True
        with os.scandir(path) as entries:
            children = list(entries)
        for entry in children:
            if self.protected(entry.path):
                complete = False
                continue
            st = entry.stat(follow_symlinks=False)
            if st.st_dev != self.root_dev:
                self.left_alone.append(f"{self.rel(entry.path)}: on another filesystem")
                complete = False
                continue
            if stat.S_ISDIR(st.st_mode):
                if self._remove_tree(category, entry.path):
                    if not self.check_mode:
                        os.rmdir(entry.path)
                    self._count(category, "removed")
                else:
                    complete = False
                continue
            if not self.check_mode:
                os.unlink(entry.path)
            self._count(category, "removed")
            self._count(category, "bytes", self._freed(st))
        return complete

    def empty_dir(self, category: str, rel: str, keep: Iterable[str] = ()) -> None:
        """Remove everything inside directory ``rel`` (dot-files too) except names in ``keep``."""
        path = self.path(rel)
        st = self._lstat(path)
        if st is None or not stat.S_ISDIR(st.st_mode) or not self.inside(path) or st.st_dev != self.root_dev:
            return
        with os.scandir(path) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            if name not in keep:
                self.remove(category, os.path.join(path, name))

    def truncate(self, category: str, path: str) -> None:
        st = self._lstat(path)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size == 0 or not self.inside(path):
            return
        if st.st_dev != self.root_dev:
            return
        if not self.check_mode:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
        self._count(category, "truncated")
        self._count(category, "bytes", self._freed(st))

    def glob_remove(self, category: str, patterns: Iterable[str]) -> None:
        for pattern in patterns:
            if not pattern or not pattern.startswith("/"):
                raise PibakeError(f"Cleanup path {pattern!r} must be absolute (inside the image); write it as /path.")
            if any(part == ".." for part in pattern.split("/")):
                raise PibakeError(f"Cleanup path {pattern!r} contains '..'; name the path inside the image directly.")
            for match in sorted(glob.glob(self.path(pattern))):
                self.remove(category, match)

    # -- categories --------------------------------------------------------------------------------------
    def apt_cache(self) -> None:
        self.glob_remove("apt_cache", ["/var/cache/apt/*.bin", "/var/cache/apt/archives/*.deb"])
        self.empty_dir("apt_cache", "var/cache/apt/archives/partial")

    def apt_lists(self) -> None:
        self.empty_dir("apt_lists", "var/lib/apt/lists", keep=APT_LISTS_KEEP + APT_LISTS_EMPTY_DIRS)
        for name in APT_LISTS_EMPTY_DIRS:
            self.empty_dir("apt_lists", f"var/lib/apt/lists/{name}")

    def logs(self, journal: bool) -> None:
        base = self.path("var/log")
        st = self._lstat(base)
        if st is None or not stat.S_ISDIR(st.st_mode) or not self.inside(base):
            return
        journal_dir = os.path.join(base, "journal")
        for dirpath, dirnames, filenames in os.walk(base, topdown=True, followlinks=False):
            if dirpath == base and "journal" in dirnames:
                dirnames.remove("journal")
            dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == self.root_dev]
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                if _ROTATED.search(name):
                    self.remove("logs", full)
                else:
                    self.truncate("logs", full)
        if journal:
            # Keep /var/log/journal itself: its presence is what makes journald store logs persistently.
            self.empty_dir("journal", os.path.relpath(journal_dir, self.root))

    def tmp(self) -> None:
        self.empty_dir("tmp", "tmp")
        self.empty_dir("tmp", "var/tmp")

    def shell_histories(self) -> None:
        homes = [self.path("root")] + sorted(glob.glob(self.path("home/*")))
        for home in homes:
            if not self.inside(os.path.join(home, "x")):
                continue
            for name in HISTORY_FILES:
                self.remove("shell_histories", os.path.join(home, name))

    def ssh_host_keys(self) -> None:
        self.glob_remove("ssh_host_keys", ["/etc/ssh/ssh_host_*"])

    def machine_id(self) -> None:
        path = self.path(MACHINE_ID)
        st = self._lstat(path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            if stat.S_ISLNK(st.st_mode):
                raise PibakeError(
                    "/etc/machine-id is a symlink; replace it with a regular file, then run cleanup again."
                )
            raise PibakeError("/etc/machine-id is not a regular file; remove it, then run cleanup again.")
        if st is None:
            if not self.check_mode:
                with open(path, "w", encoding="ascii"):
                    pass
                os.chmod(path, 0o444)
            self._count("machine_id", "replaced")
        elif st.st_size:
            self.truncate("machine_id", path)
        dbus = self.path(DBUS_MACHINE_ID)
        dst = self._lstat(dbus)
        if dst is not None and not stat.S_ISLNK(dst.st_mode) and self.inside(dbus):
            if not stat.S_ISREG(dst.st_mode):
                raise PibakeError("/var/lib/dbus/machine-id is neither a file nor a link; remove it and run again.")
            if not self.check_mode:
                os.unlink(dbus)
                os.symlink("/etc/machine-id", dbus)
            self._count("machine_id", "replaced")

    # -- result ------------------------------------------------------------------------------------------
    def statvfs_free(self) -> int:
        sv = os.statvfs(self.root)
        return sv.f_bavail * sv.f_frsize


def cleanup(
    root: str = "/",
    apt_cache: bool = True,
    apt_lists: bool = True,
    logs: bool = True,
    journal: bool = True,
    tmp: bool = True,
    shell_histories: bool = True,
    ssh_host_keys: bool = True,
    machine_id: bool = True,
    remove: Iterable[str] = (),
    check_mode: bool = False,
    protect: Iterable[str] = (),
) -> Dict:
    """Clean the system below ``root``; returns changed, freed_bytes, per-category counts and the paths left alone."""
    cleaner = _Cleaner(root, check_mode, protect)
    before = cleaner.statvfs_free()
    if apt_cache:
        cleaner.apt_cache()
    if apt_lists:
        cleaner.apt_lists()
    if logs:
        cleaner.logs(journal=journal)
    elif journal:
        cleaner.empty_dir("journal", "var/log/journal")
    if tmp:
        cleaner.tmp()
    if shell_histories:
        cleaner.shell_histories()
    if ssh_host_keys:
        cleaner.ssh_host_keys()
    if machine_id:
        cleaner.machine_id()
    cleaner.glob_remove("extra", list(remove))
    if not check_mode:
        os.sync()
    after = cleaner.statvfs_free()
    categories = cleaner.categories
    changed = any(v["removed"] or v["truncated"] or v["replaced"] for v in categories.values())
    return {
        "changed": changed,
        "freed_bytes": sum(v["bytes"] for v in categories.values()),
        "fs_free_before": before,
        "fs_free_after": after,
        "fs_freed_bytes": max(after - before, 0),
        "categories": categories,
        "left_alone": cleaner.left_alone,
    }


def human_bytes(count: int) -> str:
    """``12.3 MiB`` style figure for messages."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
