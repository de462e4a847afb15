# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""FAT boot partitions inside image files, without kernel vfat: files through mtools, free clusters by reading
the allocation table directly (for hole punching)."""

from __future__ import annotations

import os
import struct
import tempfile
from array import array
from typing import List, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run


def _target(path: str, offset: int) -> str:
    return f"{path}@@{offset}"


def _env():
    env = dict(os.environ)
    env["MTOOLS_SKIP_CHECK"] = "1"      # partitions made by other tools may have odd geometry
    env["MTOOLS_NO_VFAT"] = "0"
    return env


def is_fat(path: str, offset: int) -> bool:
    """True when a FAT boot sector sits at ``offset``."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        boot = handle.read(512)
    return len(boot) == 512 and boot[510:512] == b"\x55\xaa" and (
        boot[54:59] == b"FAT12" or boot[54:59] == b"FAT16" or boot[82:87] == b"FAT32")


def read_file(path: str, offset: int, inner: str) -> Optional[bytes]:
    """Contents of ``inner`` (e.g. ``cmdline.txt``) in the FAT at ``offset``, or None when it is missing."""
    proc = run(["mtype", "-i", _target(path, offset), "::" + inner.lstrip("/")], check=False, env=_env())
    if proc.returncode != 0:
        return None
    return proc.stdout


def write_file(path: str, offset: int, inner: str, data: bytes) -> None:
    """Create or replace ``inner`` in the FAT at ``offset``."""
    with tempfile.TemporaryDirectory(prefix="pibake-fatwrite-") as tmp:
        src = os.path.join(tmp, os.path.basename(inner))
        with open(src, "wb") as handle:
            handle.write(data)
        run(["mcopy", "-o", "-i", _target(path, offset), src, "::" + inner.lstrip("/")], env=_env(),
            what=f"writing {inner} into the FAT of {path}")


def list_files(path: str, offset: int) -> List[str]:
    """Every file path in the FAT, lower-case, relative to its root (FAT names are case-insensitive)."""
    proc = run(["mdir", "-/", "-b", "-i", _target(path, offset), "::/"], check=False, env=_env())
    if proc.returncode != 0:
        return []
    names = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("::/"):
            names.append(line[3:].rstrip("/").lower())
    return names


def volume_id(path: str, offset: int) -> str:
    """The volume serial as Linux shows it in UUID= form (``ABCD-1234``)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        boot = handle.read(512)
    pos = 67 if boot[82:87] == b"FAT32" else 39
    serial = struct.unpack_from("<I", boot, pos)[0]
    return "%04X-%04X" % (serial >> 16, serial & 0xFFFF)


def volume_label(path: str, offset: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(offset)
        boot = handle.read(512)
    pos = 71 if boot[82:87] == b"FAT32" else 43
    return boot[pos:pos + 11].decode("ascii", errors="replace").strip()


def free_byte_ranges(path: str, offset: int) -> List[Tuple[int, int]]:
    """(offset, length) in the image of every run of clusters that all FAT copies mark free."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        boot = handle.read(512)
        bps, spc, reserved, nfats, root_entries, total16, fatsz16 = struct.unpack_from("<HBHBHHxH", boot, 11)
        total32, fatsz32 = struct.unpack_from("<I", boot, 32)[0], struct.unpack_from("<I", boot, 36)[0]
        if bps not in (512, 1024, 2048, 4096) or spc == 0 or nfats == 0:
            raise PibakeError(f"The FAT at offset {offset} of {path} has an invalid boot sector; run fsck.fat on it.")
        fatsz = fatsz16 or fatsz32
        total = total16 or total32
        root_sectors = (root_entries * 32 + bps - 1) // bps
        data_start = reserved + nfats * fatsz + root_sectors
        clusters = (total - data_start) // spc
        bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        free = None
        for copy in range(nfats):
            handle.seek(offset + (reserved + copy * fatsz) * bps)
            table = handle.read(fatsz * bps)
            flags = _free_flags(table, bits, clusters + 2)
            free = flags if free is None else bytes(a & b for a, b in zip(free, flags))
    ranges = []
    cluster_bytes = spc * bps
    base = offset + data_start * bps
    run_start = None
    for cluster in range(2, clusters + 2):
        if free[cluster]:
            if run_start is None:
                run_start = cluster
        elif run_start is not None:
            ranges.append((base + (run_start - 2) * cluster_bytes, (cluster - run_start) * cluster_bytes))
            run_start = None
    if run_start is not None:
        ranges.append((base + (run_start - 2) * cluster_bytes, (clusters + 2 - run_start) * cluster_bytes))
    return ranges


def _free_flags(table: bytes, bits: int, count: int) -> bytes:
    """One byte per cluster: 1 when the allocation table entry is 0 (free)."""
    if bits == 32:
        entries = array("I")
        entries.frombytes(table[:count * 4])
        return bytes(1 if (value & 0x0FFFFFFF) == 0 else 0 for value in entries)
    if bits == 16:
        entries = array("H")
        entries.frombytes(table[:count * 2])
        return bytes(1 if value == 0 else 0 for value in entries)
    flags = bytearray(count)
    for cluster in range(count):
        pos = cluster * 3 // 2
        pair = table[pos] | (table[pos + 1] << 8)
        value = (pair >> 4) if cluster & 1 else (pair & 0x0FFF)
        flags[cluster] = 1 if value == 0 else 0
    return bytes(flags)
