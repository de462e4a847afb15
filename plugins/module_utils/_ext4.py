# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""ext2/3/4 filesystems inside image files, without mounting and without loop devices.

e2fsprogs read ``image.img?offset=BYTES`` (the io option after ``?``). Never hand that form to resize2fs: when
it shrinks a filesystem held in a regular file it truncates the file to the new filesystem size, ignoring the
offset, which destroys every byte after it. resize2fs goes through an offset loop device instead (``_offsetloop``).
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Dict, List, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run, text

EXT_MAGIC = b"\x53\xef"


def spec(path: str, offset: int) -> str:
    """The e2fsprogs device name for a filesystem at ``offset`` bytes inside ``path``."""
    return f"{path}?offset={offset}" if offset else path


def is_ext(path: str, offset: int) -> bool:
    """True when an ext2/3/4 superblock sits at ``offset``."""
    with open(path, "rb") as handle:
        handle.seek(offset + 1024 + 56)
        return handle.read(2) == EXT_MAGIC


def superblock(path: str, offset: int = 0) -> Dict[str, str]:
    """The superblock fields ``dumpe2fs -h`` prints, as a dict of strings."""
    proc = run(["dumpe2fs", "-h", spec(path, offset)], what=f"reading the ext4 superblock of {path}")
    fields = {}
    for line in text(proc).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def geometry(path: str, offset: int = 0) -> Dict[str, int]:
    """Block size, block count, free blocks, blocks per group and inode table blocks per group."""
    sb = superblock(path, offset)
    block_size = int(sb["Block size"])
    return {
        "block_size": block_size,
        "blocks": int(sb["Block count"]),
        "free": int(sb["Free blocks"]),
        "used": int(sb["Block count"]) - int(sb["Free blocks"]),
        "blocks_per_group": int(sb["Blocks per group"]),
        "inode_blocks_per_group": int(sb.get("Inode blocks per group", "0")),
        "journal_bytes": _size(sb.get("Journal size", "0")),
        "clean": sb.get("Filesystem state", "") == "clean" and "needs_recovery" not in sb.get(
            "Filesystem features", ""),
    }


def _size(value: str) -> int:
    match = re.match(r"([\d.]+)\s*([KMGT]?)", value)
    if not match:
        return 0
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " "))


def fsck(path: str, offset: int = 0, *, repair: bool) -> int:
    """Force a full check: ``-f -p`` (preen, fixes only what is safe) or ``-f -n`` (read-only).

    Returns e2fsck's exit code when it is 0 (clean) or 1 (fixed); raises otherwise.
    """
    argv = ["e2fsck", "-f", "-p" if repair else "-n", spec(path, offset)]
    proc = run(argv, check=False)
    accepted = (0, 1) if repair else (0,)
    if proc.returncode in accepted:
        return proc.returncode
    tail = (text(proc) + proc.stderr.decode(errors="replace")).strip().splitlines()
    detail = tail[-1] if tail else f"exit code {proc.returncode}"
    if repair:
        raise PibakeError(f"e2fsck could not repair the root filesystem of {path} by itself ({detail}); run "
                          f"`e2fsck -f -y '{spec(path, offset)}'` and check what it changes.")
    raise PibakeError(f"e2fsck found errors in the root filesystem of {path} ({detail}); the image is not "
                      f"safe to publish, rebuild it.")


def free_ranges(path: str, offset: int = 0) -> List[Tuple[int, int]]:
    """Free block ranges (first, last) from the block bitmaps, as ``dumpe2fs`` lists them."""
    proc = run(["dumpe2fs", spec(path, offset)], what=f"reading the ext4 block bitmaps of {path}")
    ranges = []
    in_groups = False
    for raw in text(proc).splitlines():
        # The superblock header also has a "Free blocks:" line (a count, not a range): only read the
        # indented per-group lines that follow the first "Group N:" line.
        if raw.startswith("Group "):
            in_groups = True
            continue
        line = raw.strip()
        if not in_groups or not raw.startswith(" ") or not line.startswith("Free blocks: "):
            continue
        for item in line[len("Free blocks: "):].split(","):
            item = item.strip()
            if not item:
                continue
            first, dummy_sep, last = item.partition("-")
            ranges.append((int(first), int(last or first)))
    return ranges


def _debugfs(path: str, offset: int, request: str, *, write: bool = False):
    argv = ["debugfs"] + (["-w"] if write else []) + ["-R", request, spec(path, offset)]
    return run(argv, what=f"debugfs {request.split()[0]} on {path}")


def stat(path: str, offset: int, inner: str) -> Optional[Dict[str, str]]:
    """Inode type and, for symlinks, the target of ``inner``; None when it does not exist."""
    proc = _debugfs(path, offset, f'stat "{inner}"')
    out = text(proc)
    if not out.strip():
        return None
    info = {}
    match = re.search(r"Type:\s*(\w+)", out)
    info["type"] = match.group(1) if match else "unknown"
    match = re.search(r'Fast link dest:\s*"(.*)"', out)
    if match:
        info["target"] = match.group(1)
    return info


def _resolve(path: str, offset: int, inner: str, depth: int = 0) -> Optional[str]:
    """Follow symlinks (relative or absolute, inside the filesystem) to the final path."""
    if depth > 16:
        return None
    parts = [p for p in inner.split("/") if p]
    current = ""
    for index, part in enumerate(parts):
        candidate = f"{current}/{part}"
        info = stat(path, offset, candidate)
        if info is None:
            return None
        if info["type"] == "symlink":
            target = info.get("target")
            if target is None:
                target = read_file(path, offset, candidate, follow=False) or b""
                target = target.decode(errors="replace")
            base = target if target.startswith("/") else f"{current}/{target}"
            rest = "/".join(parts[index + 1:])
            return _resolve(path, offset, os.path.normpath(f"{base}/{rest}" if rest else base), depth + 1)
        current = candidate
    return current or "/"


def read_file(path: str, offset: int, inner: str, *, follow: bool = True) -> Optional[bytes]:
    """Contents of the file ``inner`` in the filesystem, or None when it does not exist."""
    if follow:
        resolved = _resolve(path, offset, inner)
        if resolved is None:
            return None
        inner = resolved
    with tempfile.TemporaryDirectory(prefix="pibake-e2read-") as tmp:
        dest = os.path.join(tmp, "out")
        _debugfs(path, offset, f'dump "{inner}" "{dest}"')
        if not os.path.exists(dest):
            return None
        with open(dest, "rb") as handle:
            return handle.read()


def exists(path: str, offset: int, inner: str) -> bool:
    return stat(path, offset, inner) is not None


def write_file(path: str, offset: int, inner: str, data: bytes, mode: int = 0o644) -> None:
    """Create or replace the regular file ``inner`` (root-owned), creating missing parent directories."""
    parent = os.path.dirname(inner)
    make_dirs(path, offset, parent)
    if exists(path, offset, inner):
        _debugfs(path, offset, f'rm "{inner}"', write=True)
    with tempfile.TemporaryDirectory(prefix="pibake-e2write-") as tmp:
        src = os.path.join(tmp, "in")
        with open(src, "wb") as handle:
            handle.write(data)
        _debugfs(path, offset, f'write "{src}" "{inner}"', write=True)
    _set_owner_mode(path, offset, inner, 0o100000 | mode)


def symlink(path: str, offset: int, inner: str, target: str) -> None:
    """Create the symlink ``inner`` -> ``target`` (replacing what is there)."""
    make_dirs(path, offset, os.path.dirname(inner))
    if exists(path, offset, inner):
        _debugfs(path, offset, f'rm "{inner}"', write=True)
    _debugfs(path, offset, f'symlink "{inner}" "{target}"', write=True)
    _set_owner_mode(path, offset, inner, 0o120777)


def make_dirs(path: str, offset: int, inner: str) -> None:
    current = ""
    for part in [p for p in inner.split("/") if p]:
        current = f"{current}/{part}"
        if not exists(path, offset, current):
            _debugfs(path, offset, f'mkdir "{current}"', write=True)
            _set_owner_mode(path, offset, current, 0o040755)


def _set_owner_mode(path: str, offset: int, inner: str, mode: int) -> None:
    for field, value in (("uid", 0), ("gid", 0), ("mode", "0%o" % mode)):
        _debugfs(path, offset, f'set_inode_field "{inner}" {field} {value}', write=True)


def remove(path: str, offset: int, inner: str) -> bool:
    if not exists(path, offset, inner):
        return False
    _debugfs(path, offset, f'rm "{inner}"', write=True)
    return True


def listdir(path: str, offset: int, inner: str) -> List[Tuple[str, int]]:
    """(name, mode) of each entry of the directory ``inner``; empty when it does not exist."""
    proc = _debugfs(path, offset, f'ls -p "{inner}"')
    entries = []
    for line in text(proc).splitlines():
        fields = line.split("/")
        if len(fields) < 7 or fields[5] in (".", ".."):
            continue
        try:
            entries.append((fields[5], int(fields[2], 8)))
        except ValueError:
            continue
    return entries


def dump_tree(path: str, offset: int, inner: str, dest: str) -> Optional[str]:
    """Copy the directory ``inner`` out of the filesystem into ``dest`` (one debugfs run); returns the copy's
    path, or None when the directory does not exist. Symlinks are copied as symlinks: read them with
    ``os.readlink`` and never follow them on the host."""
    _debugfs(path, offset, f'rdump "{inner}" "{dest}"')
    copy = os.path.join(dest, os.path.basename(inner.rstrip("/")))
    return copy if os.path.isdir(copy) and not os.path.islink(copy) else None
