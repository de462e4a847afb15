# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Discard the free space of every filesystem in an image so deleted data is neither stored nor compressed.

Methods for ext4 partitions (FAT partitions always get their free clusters punched):

``punch``     read the block bitmaps (dumpe2fs) and punch a hole in the image file for every free range.
              No loop device, no mount, no root; the file stays sparse. The default.
``fstrim``    attach the partition to an offset loop, mount it, ``fstrim`` it: the loop driver turns each
              discard into a punched hole. Same result as ``punch``; needs root and kernel ext4.
``zerofree``  write zeros into free blocks of the unmounted filesystem (what the seed pipeline did), then dig the
              zeros back into holes (``fallocate --dig-holes``) so the file stays sparse.
``none``      leave the free space as it is.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Optional

from ansible_collections.pibake.image.plugins.module_utils import _ext4, _fatfs, _offsetloop
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._imagefile import (
    allocated_bytes, ensure_detached, punch_hole, read_table)
from ansible_collections.pibake.image.plugins.module_utils._run import run, text

METHODS = ("punch", "fstrim", "zerofree", "none")


def discard(path: str, method: str = "punch", *, check_mode: bool = False,
            log: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Discard free space in every ext and FAT partition of ``path``; report what was released."""
    if method not in METHODS:
        raise PibakeError(f"Unknown free-space method {method!r}; use one of {', '.join(METHODS)}.")
    log = log or (lambda _msg: None)
    ensure_detached(path)
    table = read_table(path)
    before = allocated_bytes(path)
    started = time.monotonic()
    partitions: List[Dict[str, object]] = []
    for part in table.partitions:
        if part.offset + 1024 + 58 <= os.path.getsize(path) and _ext4.is_ext(path, part.offset):
            kind = "ext4"
        elif _fatfs.is_fat(path, part.offset):
            kind = "vfat"
        else:
            continue
        step_start = time.monotonic()
        free = 0
        if check_mode or method == "none":
            pass
        elif kind == "vfat":
            free = _punch_ranges(path, _fatfs.free_byte_ranges(path, part.offset))
        elif method == "punch":
            geo = _ext4.geometry(path, part.offset)
            bsize = geo["block_size"]
            ranges = [(part.offset + first * bsize, (last - first + 1) * bsize)
                      for first, last in _ext4.free_ranges(path, part.offset)]
            free = _punch_ranges(path, ranges)
        elif method == "fstrim":
            free = _fstrim(path, part.offset, part.length)
        else:
            free = _zerofree(path, part.offset, part.length)
        seconds = round(time.monotonic() - step_start, 3)
        partitions.append({"number": part.number, "fstype": kind, "discarded_bytes": free, "seconds": seconds})
        log(f"free space: partition {part.number} ({kind}) {free // 2**20} MiB discarded in {seconds} s "
            f"({'fat clusters' if kind == 'vfat' else method})")
    after = allocated_bytes(path)
    return {
        "changed": not check_mode and method != "none" and after != before,
        "method": method,
        "allocated_before": before,
        "allocated_after": after,
        "seconds": round(time.monotonic() - started, 3),
        "partitions": partitions,
    }


def _punch_ranges(path: str, ranges) -> int:
    total = 0
    fd = os.open(path, os.O_RDWR)
    try:
        for offset, length in ranges:
            punch_hole(fd, offset, length)
            total += length
        os.fsync(fd)
    finally:
        os.close(fd)
    return total


def _fstrim(path: str, offset: int, length: int) -> int:
    with _offsetloop.attached(path, offset, length) as device:
        with _offsetloop.mounted(device, "ext4") as where:
            proc = run(["fstrim", "-v", where], what=f"fstrim on {device}")
    # "/mnt: 1.2 GiB (1288490188 bytes) trimmed"
    out = text(proc)
    if "(" in out:
        return int(out.split("(")[1].split()[0])
    return 0


def _zerofree(path: str, offset: int, length: int) -> int:
    with _offsetloop.attached(path, offset, length) as device:
        run(["zerofree", device], what=f"zerofree on {device}")
    geo = _ext4.geometry(path, offset)
    # Writing zeros allocated every free block: turn them back into holes so the file stays sparse.
    run(["fallocate", "--dig-holes", "--offset", str(offset), "--length", str(length), path],
        what="fallocate --dig-holes")
    return geo["free"] * geo["block_size"]
