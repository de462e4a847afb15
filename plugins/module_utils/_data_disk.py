# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Prepare a blank disk as the OurBox DATA disk: one GPT partition holding ext4 labelled ``OURBOX_DATA``.

Why a partition and not a filesystem on the whole disk: the OurBox storage contract only asks for an ext4
filesystem labelled ``OURBOX_DATA`` (mounted by label), but its flash guide treats that label as naming a
*partition* whose parent disk is the DATA disk (``lsblk -no PKNAME``). A partition table also tells every
partitioning tool, installer and firmware that the disk is in use, where a bare filesystem on the whole disk looks
"empty" to many of them. The GPT partition carries the name ``OURBOX_DATA`` too (``PARTLABEL``), so the disk is
recognisable even before its filesystem is probed.

A disk already holding an ext4 ``OURBOX_DATA`` filesystem (partition or whole disk) is left alone, also with
``force``: destroying a data disk must stay a deliberate manual act (``wipefs --all``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from ansible_collections.pibake.image.plugins.module_utils import _blockdev as bd
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._flash import DATA_LABEL, tell_kernel
from ansible_collections.pibake.image.plugins.module_utils._run import run, text

LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
START = 1 << 20  # first partition at 1 MiB, aligned for every flash and NVMe page size


def partition_node(node: str, number: int) -> str:
    """The name the kernel gives partition ``number`` of ``node`` (nvme0n1 → nvme0n1p1, sdb → sdb1)."""
    return f"{node}p{number}" if node[-1:].isdigit() else f"{node}{number}"


def signatures(node: str) -> List[str]:
    """Signatures wipefs finds on the whole device (partition tables, filesystems, RAID...)."""
    proc = run(["wipefs", "--no-act", "--noheadings", "--output", "TYPE,OFFSET", node], check=False)
    return [" at ".join(line.split()) for line in text(proc).splitlines() if line.strip()] if proc.returncode == 0 else []


def describe_contents(found: Optional[bd.Contents], extra: List[str]) -> str:
    if found is None:
        return "a partition table pibake cannot read"
    what = []
    if found.table.pttype:
        what.append(f"a {found.table.pttype} partition table with {len(found.places) - 1} partition(s)")
    if found.table.type:
        what.append(f"a {found.table.type} filesystem on the whole disk")
    for place in found.places[1:]:
        if place.probe.type:
            label = f" labelled {place.probe.label}" if place.probe.label else ""
            what.append(f"{place.probe.type}{label} on partition {place.number}")
    if not what and extra:
        what.append("signatures " + ", ".join(extra))
    return "; ".join(what) or "data"


def prepare(device: str, *, force: bool = False, label: str = DATA_LABEL, check_mode: bool = False) -> Dict[str, object]:
    """Format a blank whole disk as GPT + one ext4 partition labelled ``label``; see the module docs."""
    if not label or len(label.encode()) > 16:
        raise PibakeError(f"The label {label!r} does not fit ext4 (1 to 16 bytes); use OURBOX_DATA.")
    dev = bd.inspect(device)
    bd.require_whole_disk(dev)
    bd.require_not_root(dev)
    bd.require_unused(dev)
    try:
        found: Optional[bd.Contents] = bd.contents(dev)
    except PibakeError:
        if not force:
            raise
        found = None
    result: Dict[str, object] = {"device": dev.path, "device_node": dev.node, "label": label, "changed": False}
    if found is not None:
        for place in found.places:
            if place.probe.type == "ext4" and place.probe.label == label:
                where = "the whole disk" if place.number == 0 else f"partition {place.number}"
                result.update(
                    layout="disk" if place.number == 0 else "partition",
                    partition=place.number,
                    offset=place.offset,
                    size=place.size,
                    uuid=place.probe.values.get("UUID", ""),
                    msg=f"{dev.path} already holds the ext4 filesystem {label} on {where}; nothing to do "
                        "(pibake never reformats a data disk: wipe it by hand with `wipefs --all` to start over).",
                )
                return result
    extra = signatures(dev.node)
    blank = found is not None and found.table.empty and len(found.places) == 1 and not extra \
        and found.places[0].ext_label is None
    if not blank and not force:
        raise PibakeError(
            f"{dev.path} is not blank (it has {describe_contents(found, extra)}); pibake formats only blank disks, so "
            "pick the right disk, or pass force=true (playbook: -e force=true) if its contents may be destroyed."
        )
    size = dev.size - START - (1 << 20)  # leave room for the backup GPT at the end
    if size < (16 << 20):
        raise PibakeError(f"{dev.path} holds only {bd.human(dev.size)}; a data disk needs at least 18 MiB.")
    steps = []
    if not blank:
        steps.append(f"erase what {dev.path} holds ({describe_contents(found, extra)})")
    steps.append(f"write a GPT with one partition named {label} from 1 MiB to the end of {dev.path}")
    steps.append(f"create an ext4 filesystem labelled {label} in it ({partition_node(dev.node, 1)})")
    result["steps"] = steps
    if check_mode:
        result.update(changed=True, msg=f"Check mode: would {'; '.join(steps)}.")
        return result

    if not blank:
        run(["wipefs", "--all", "--quiet", dev.node], what=f"Erasing the old signatures of {dev.path}")
    layout = f"label: gpt\nstart={START // dev.logical_sector}, " \
             f'type={LINUX_FS_GUID}, name="{label}"\n'
    run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", "--wipe", "always", "--wipe-partitions", "always", dev.node],
        input=layout.encode(),
        what=f"Writing the partition table of {dev.path}",
    )
    parts = bd.partitions(dev.node)
    if len(parts) != 1:
        raise PibakeError(f"The new partition table of {dev.path} does not read back as one partition; check the disk.")
    part = parts[0]
    run(
        ["mkfs.ext4", "-F", "-q", "-L", label, "-E", f"offset={part.offset}", dev.node, f"{part.size // 1024}k"],
        what=f"Formatting partition 1 of {dev.path}",
    )
    os.sync()
    tell_kernel(dev.node)
    probe = bd.probe(dev.node, part.offset, part.size)
    if probe.type != "ext4" or probe.label != label:
        raise PibakeError(f"The new filesystem on {dev.path} does not read back as ext4 {label}; check the disk.")
    result.update(
        changed=True,
        layout="partition",
        partition=1,
        partition_node=partition_node(dev.node, 1),
        offset=part.offset,
        size=part.size,
        uuid=probe.values.get("UUID", ""),
        partuuid=part.uuid,
        msg=f"{dev.path} now holds one GPT partition with the ext4 filesystem {label} ({bd.human(part.size)}).",
    )
    return result
