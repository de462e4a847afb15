# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Shrink the root filesystem, its partition and the image file to the real minimum plus a margin, safely.

``resize2fs -M`` stops at its own estimate (``resize2fs -P``), which on flex_bg filesystems leaves about 1.5x the
used blocks. Going lower with ``resize2fs -f`` is only safe if it provably fits, so the minimum is searched on a
metadata-only copy of the filesystem (``e2image -r``: same bitmaps, inode tables, extent trees and directories,
data blocks left as holes): each candidate size is tried there with ``resize2fs -f`` and must pass ``e2fsck -fn``.
resize2fs decides only from metadata, so the real run at a size that passed on the copy does the same moves.
The real run then goes through an offset loop device, and ``e2fsck -fn`` must pass again before the partition
table is changed and the file truncated.

The journal is then cleared: after ``e2fsck -f`` it is empty (``Journal start: 0``), so the kernel ignores
everything after the journal superblock, but its log blocks still hold the metadata of the build's last
transactions, which would be stored and compressed. Those blocks are punched (they read back as zeros); the journal
keeps its place, size and features, so nothing else changes.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils import _expand, _ext4, _offsetloop
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._imagefile import (
    allocated_bytes, ensure_detached, punch_hole, read_table)
from ansible_collections.pibake.image.plugins.module_utils._run import run, text

MIB = 1 << 20
GPT_BACKUP_SECTORS = 33
MAX_PASSES = 3


def estimate_minimum(path: str, offset: int) -> int:
    """``resize2fs -P``: e2fsprogs' own (conservative) minimum, in blocks."""
    proc = run(["resize2fs", "-P", _ext4.spec(path, offset)], what="resize2fs -P")
    for line in text(proc).splitlines():
        if "minimum size" in line:
            return int(line.rsplit(":", 1)[1])
    raise PibakeError(f"resize2fs -P printed no estimate for {path}; check that the root partition is ext4.")


def fits(path: str, offset: int, blocks: int, workdir: str) -> bool:
    """True when a metadata-only copy of the filesystem shrinks to ``blocks`` and then checks clean."""
    meta = os.path.join(workdir, "trial.e2i")
    if os.path.exists(meta):
        os.unlink(meta)
    run(["e2image", "-r", "-o", str(offset), path, meta], what="e2image (metadata copy for a trial shrink)")
    try:
        if run(["resize2fs", "-f", meta, str(blocks)], check=False).returncode != 0:
            return False
        return run(["e2fsck", "-fn", meta], check=False).returncode == 0
    finally:
        os.unlink(meta)


def find_minimum(path: str, offset: int, geo: Dict[str, int], workdir: str,
                 log: Callable[[str], None]) -> Dict[str, int]:
    """Smallest size (blocks) that provably fits: a lower bound, then growing steps, then bisection.

    The true minimum is usually within a few percent of the used blocks, so this takes 3-5 trials where a
    bisection up to ``resize2fs -P`` would take about 10.
    """
    used, blocks, per_group = geo["used"], geo["blocks"], geo["blocks_per_group"]
    # Removing block groups frees their inode tables and bitmaps: a size below this cannot fit.
    groups_now = math.ceil(blocks / per_group)
    groups_min = math.ceil(used / per_group)
    lower = max(used - (geo["inode_blocks_per_group"] + 2) * (groups_now - groups_min), used // 2, 1)
    estimate = min(estimate_minimum(path, offset), blocks)
    tolerance = max(256, used // 100)
    trials = 1
    if lower >= blocks or fits(path, offset, lower, workdir):
        return {"minimum": min(lower, blocks), "estimate": estimate, "trials": trials}
    low, high, step = lower, None, max(tolerance, used // 50)
    while high is None:
        candidate = min(low + step, blocks)
        if candidate >= blocks:
            high = blocks          # nothing smaller fits: the filesystem stays as it is
            break
        trials += 1
        if fits(path, offset, candidate, workdir):
            high = candidate
        else:
            low, step = candidate, step * 2
    while high - low > tolerance:
        middle = (low + high) // 2
        trials += 1
        if fits(path, offset, middle, workdir):
            high = middle
        else:
            low = middle
    log(f"shrink: minimum {high} blocks (resize2fs -P says {estimate}, used {used}) after {trials} trials")
    return {"minimum": high, "estimate": estimate, "trials": trials}


def _trial_dir(path: str, geo: Dict[str, int]) -> str:
    """Where trial copies go: memory (/dev/shm) when it has room for the blocks a trial may move."""
    need = geo["used"] * geo["block_size"] * 1.2
    try:
        vfs = os.statvfs("/dev/shm")
        if vfs.f_bavail * vfs.f_frsize > need + (1 << 30):
            return "/dev/shm"
    except OSError:
        pass
    return os.path.dirname(os.path.abspath(path))


def shrink(path: str, *, margin: int = 64 * MIB, expansion: str = "auto", check_mode: bool = False,
           log: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Shrink the last (ext4 root) partition of a detached image; arm first-boot expansion; report sizes."""
    log = log or (lambda _msg: None)
    started = time.monotonic()
    ensure_detached(path)
    table = read_table(path)
    root = table.last
    if not _ext4.is_ext(path, root.offset):
        raise PibakeError(f"The last partition ({root.number}) of {path} is not ext2/3/4; only an ext4 root at "
                          f"the end of the disk can be shrunk.")
    size_before = os.path.getsize(path)
    allocated_before = allocated_bytes(path)
    if not check_mode:
        _ext4.fsck(path, root.offset, repair=True)
    # Fail before changing anything when the image has no first-boot expansion to arm.
    planned = _expand.arm(table, root.offset, expansion, check_mode=True)
    geo = first = _ext4.geometry(path, root.offset)
    bsize = geo["block_size"]
    align = max(1, MIB // bsize)
    margin_blocks = math.ceil(margin / bsize)
    fs_blocks, passes, trials, search = geo["blocks"], 0, 0, {}
    workdir = tempfile.mkdtemp(prefix=".pibake-shrink-", dir=_trial_dir(path, geo))
    try:
        # A shrink that removes block groups frees their inode tables and backup descriptors only once it is
        # done, so a second pass can go lower than the first could: repeat until a pass would gain less than a
        # quarter of the margin (which also makes a second run of this step a no-op).
        for _pass in range(MAX_PASSES):
            search = find_minimum(path, root.offset, geo, workdir, log)
            trials += search["trials"]
            target = math.ceil((search["minimum"] + margin_blocks) / align) * align
            if target >= fs_blocks - max(align, margin_blocks // 4):
                break
            trials += 1
            if not fits(path, root.offset, target, workdir):
                raise PibakeError(f"The root filesystem of {path} did not shrink cleanly to {target} blocks on a "
                                  f"metadata copy; run e2fsck -f on it and retry, or raise the margin.")
            fs_blocks, passes = target, passes + 1
            if check_mode:
                break
            with _offsetloop.attached(path, root.offset, root.length) as device:
                run(["resize2fs", "-f", device, str(target)], what=f"resize2fs {device} {target}")
            _ext4.fsck(path, root.offset, repair=False)
            geo = _ext4.geometry(path, root.offset)
            log(f"shrink: pass {passes} resized the root to {target} blocks ({geo['used']} used)")
    finally:
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)
    resized = passes > 0
    part_sectors = math.ceil(fs_blocks * bsize / table.sector_size) if resized else root.size
    new_end = (root.start + part_sectors) * table.sector_size
    file_end = new_end + (GPT_BACKUP_SECTORS * table.sector_size if table.label == "gpt" else 0)
    expansion_result: Dict[str, object] = {"mechanism": expansion, "changed": False, "actions": []}
    journal_cleared = 0
    if not check_mode:
        if resized:
            _set_partition_size(path, root.number, root.start, part_sectors)
        if file_end < size_before:
            if table.label == "gpt":
                _truncate_gpt(path, file_end)
            else:
                os.truncate(path, file_end)
        expansion_result = _expand.arm(read_table(path), root.offset, expansion)
        journal_cleared = clear_journal(path, root.offset)
        if journal_cleared:
            log(f"shrink: cleared {journal_cleared // 1024} KiB of stale journal blocks")
        _ext4.fsck(path, root.offset, repair=False)
    else:
        expansion_result = planned
    size_after = file_end if file_end < size_before else size_before
    result = {
        "changed": not check_mode and (resized or size_after != size_before or bool(expansion_result["changed"])
                                       or journal_cleared > 0),
        "partition": root.number,
        "block_size": bsize,
        "used_blocks": first["used"],
        "used_blocks_after": geo["used"],
        "blocks_before": first["blocks"],
        "blocks_after": fs_blocks,
        "minimum_blocks": search["minimum"],
        "estimate_blocks": search["estimate"],
        "passes": passes,
        "trials": trials,
        "size_before": size_before,
        "size_after": size_after,
        "allocated_before": allocated_before,
        "allocated_after": allocated_bytes(path),
        "journal_cleared_bytes": journal_cleared,
        "expansion": expansion_result,
        "seconds": round(time.monotonic() - started, 3),
    }
    log(f"shrink: {size_before // MIB} MiB -> {size_after // MIB} MiB (root {first['blocks']} -> {fs_blocks} "
        f"blocks of {bsize}); expansion {expansion_result['mechanism']}")
    return result


def journal_blocks(path: str, offset: int) -> List[Tuple[int, int]]:
    """Physical block ranges (first, count) of the internal journal's log, in journal order, without its superblock
    (the journal's first block). Empty when there is no internal journal, when it is not empty (not clean), or when
    its block map does not add up to the journal size."""
    sb = _ext4.superblock(path, offset)
    features = sb.get("Filesystem features", "").split()
    inode = sb.get("Journal inode", "")
    if "has_journal" not in features or "needs_recovery" in features or not inode.isdigit() \
            or sb.get("Journal start", "") != "0":
        return []
    proc = run(["debugfs", "-R", f"stat <{inode}>", _ext4.spec(path, offset)],
               what=f"debugfs stat of the journal of {path}")
    listing = re.split(r"^(?:EXTENTS|BLOCKS):$", text(proc), flags=re.M)
    if len(listing) != 2:
        return []
    # Only data mappings: "(0-11):1037-1048" or "(5):1234"; "(IND):1049", "(ETB0):..." are the inode's own map
    # blocks and must never be cleared.
    extents = sorted((int(m.group(1)), int(m.group(3)), int(m.group(4) or m.group(3)))
                     for m in re.finditer(r"\((\d+)(-\d+)?\):(\d+)(?:-(\d+))?", listing[1]))
    ranges: List[Tuple[int, int]] = []
    expected = 0
    for logical, first, last in extents:
        if logical != expected:
            return []
        expected += last - first + 1
        if logical == 0:
            first += 1
        if first <= last:
            ranges.append((first, last - first + 1))
    if not sb.get("Total journal blocks", "").isdigit() or expected != int(sb["Total journal blocks"]):
        return []
    return ranges


def clear_journal(path: str, offset: int) -> int:
    """Punch the log blocks of an empty journal that hold data; returns how many bytes were cleared (0: already
    clear, which makes a second run a no-op). The journal superblock is kept as it is; the caller checks the
    filesystem (``e2fsck -fn``) afterwards."""
    ranges = journal_blocks(path, offset)
    if not ranges:
        return 0
    bsize = _ext4.geometry(path, offset)["block_size"]
    cleared = 0
    fd = os.open(path, os.O_RDWR)
    try:
        for first, count in ranges:
            start, end = offset + first * bsize, offset + (first + count) * bsize
            for begin, length in _nonzero_runs(fd, start, end, bsize):
                punch_hole(fd, begin, length)
                cleared += length
        if cleared:
            os.fsync(fd)
    finally:
        os.close(fd)
    return cleared


def _nonzero_runs(fd: int, start: int, end: int, bsize: int) -> List[Tuple[int, int]]:
    """(offset, length) runs of ``bsize`` blocks from ``start`` to ``end`` that are allocated and not all zeros."""
    runs: List[Tuple[int, int]] = []
    zero = bytes(bsize)
    block = start
    while block < end:
        try:
            data = os.lseek(fd, block, os.SEEK_DATA)
        except OSError:             # ENXIO: only a hole is left
            break
        if data >= end:
            break
        block = max(block, data - (data - start) % bsize)
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        while block < hole:
            if os.pread(fd, bsize, block) != zero:
                if runs and runs[-1][0] + runs[-1][1] == block:
                    runs[-1] = (runs[-1][0], runs[-1][1] + bsize)
                else:
                    runs.append((block, bsize))
            block += bsize
    return runs


def _truncate_gpt(path: str, size: int) -> None:
    """Truncate a GPT disk image and write its table again, so the backup header sits at the new end.

    sfdisk cannot read a GPT whose backup lies past the end of the file any more, so the table is dumped first
    (disk GUID, partition GUIDs, names, types and attributes included) and restored without its old last LBA.
    """
    dump = text(run(["sfdisk", "--dump", path], what="dumping the GPT"))
    kept = "".join(line + "\n" for line in dump.splitlines()
                   if not line.startswith(("last-lba:", "device:")))
    os.truncate(path, size)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", path], input=kept.encode(),
        what="writing the GPT back with its backup at the new end")
    table = read_table(path)
    if table.label != "gpt":
        raise PibakeError(f"The GPT of {path} was lost while shrinking; restore the image from its copy.")


def _set_partition_size(path: str, number: int, start: int, sectors: int) -> None:
    """Rewrite one partition entry with the same start and a new size; type and identifiers are kept."""
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", "-N", str(number), path],
        input=f"{start},{sectors}\n".encode(), what=f"sfdisk resizing partition {number}")
    table = read_table(path)
    part = table.by_number(number)
    if part.start != start or part.size != sectors:
        raise PibakeError(f"sfdisk did not set partition {number} of {path} to {sectors} sectors; check the "
                          f"partition table with `sfdisk -d`.")
