# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""A disk image file on the host: its partition table, partition byte ranges, whether something holds it,
and sparse-file helpers (hole punching, allocated size)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional

from ansible_collections.pibake.image.plugins.module_utils import _loop
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run, text

# MBR type codes and GPT type GUIDs of FAT partitions (boot partitions of Raspberry Pi images).
FAT_TYPES = {"1", "4", "6", "b", "c", "e", "ef",
             "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",   # Microsoft basic data
             "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"}   # EFI system partition


@dataclass
class Partition:
    """One partition entry; sizes in sectors as sfdisk reports them."""

    number: int
    start: int
    size: int
    type: str
    sector_size: int = 512
    uuid: Optional[str] = None     # GPT partition GUID; None on MBR
    name: Optional[str] = None     # GPT partition name

    @property
    def offset(self) -> int:
        """Byte offset of the partition in the image file."""
        return self.start * self.sector_size

    @property
    def length(self) -> int:
        """Length of the partition in bytes."""
        return self.size * self.sector_size

    @property
    def end(self) -> int:
        """Byte offset just past the partition."""
        return self.offset + self.length

    @property
    def is_fat_type(self) -> bool:
        return self.type.lower() in FAT_TYPES


@dataclass
class PartitionTable:
    path: str
    label: str                     # "dos" or "gpt"
    disk_id: str                   # "0x1234abcd" on MBR, a GUID on GPT
    sector_size: int
    partitions: List[Partition] = field(default_factory=list)

    def partuuid(self, part: Partition) -> str:
        """The PARTUUID the Linux kernel gives ``part`` (what cmdline.txt and fstab use)."""
        if self.label == "gpt":
            return (part.uuid or "").lower()
        return "%08x-%02x" % (int(self.disk_id, 16), part.number)

    def by_number(self, number: int) -> Partition:
        for part in self.partitions:
            if part.number == number:
                return part
        raise PibakeError(f"{self.path} has no partition {number}; check the image's partition table.")

    @property
    def last(self) -> Partition:
        return max(self.partitions, key=lambda p: p.end)


def read_table(path: str) -> PartitionTable:
    """Read the partition table of an image file with ``sfdisk --json``."""
    if not os.path.isfile(path):
        raise PibakeError(f"Image {path} does not exist; pass the path of a raw .img file.")
    proc = run(["sfdisk", "--json", path], check=False)
    if proc.returncode != 0:
        raise PibakeError(f"{path} has no readable partition table; pass a whole-disk .img file, not a partition.")
    data = json.loads(text(proc))["partitiontable"]
    sector = int(data.get("sectorsize", 512))
    parts = []
    for entry in data.get("partitions", []):
        node = entry["node"]
        digits = ""
        for char in reversed(node):
            if not char.isdigit():
                break
            digits = char + digits
        parts.append(Partition(number=int(digits), start=int(entry["start"]), size=int(entry["size"]),
                               type=str(entry.get("type", "")).lower(), sector_size=sector,
                               uuid=entry.get("uuid"), name=entry.get("name")))
    if not parts:
        raise PibakeError(f"{path} has an empty partition table; pass a whole-disk image with partitions.")
    return PartitionTable(path=path, label=data["label"], disk_id=str(data.get("id", "0")), sector_size=sector,
                          partitions=parts)


def holders(path: str) -> List[str]:
    """Loop devices (and their mount points) that currently use ``path``."""
    real = os.path.realpath(path)
    found = [dev["name"] for dev in _loop.list_loops() if dev["back-file"] in (path, real)]
    mounted = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            source = fields[fields.index("-") + 2] if "-" in fields else ""
            if source in found:
                mounted.append(f"{source} on {fields[4]}")
    return mounted or found


def ensure_detached(path: str) -> None:
    """Refuse to work on an image that a loop device (or a mount through one) still holds."""
    held = holders(path)
    if held:
        raise PibakeError(f"{path} is still attached ({', '.join(held)}); detach the image session first "
                          f"(pibake.image.image_session state=detached).")


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = None


def _fallocate():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    return _libc.fallocate


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate ``length`` bytes at ``offset``: they read back as zeros and the file keeps its size."""
    if length <= 0:
        return
    if _fallocate()(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise PibakeError("The filesystem holding the image cannot punch holes; put the work dir on ext4, "
                              "xfs or btrfs, or use free_space_method zerofree.")
        raise OSError(err, os.strerror(err))


def allocated_bytes(path: str) -> int:
    """Bytes the file really occupies on disk (sparse files occupy less than their size)."""
    return os.stat(path).st_blocks * 512


def data_ranges(fd: int, start: int = 0, end: Optional[int] = None):
    """Yield (offset, length) of the non-hole ranges of an open file between ``start`` and ``end``."""
    if end is None:
        end = os.fstat(fd).st_size
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data
        pos = hole
