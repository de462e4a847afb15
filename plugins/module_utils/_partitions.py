# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Read and grow the partition table of a disk image file (sfdisk, no kernel involvement)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run, text

FAT_TYPES = frozenset({"b", "c", "e", "6", "ef"})


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # in sectors
    size: int  # in sectors
    type: str
    sector_size: int = 512

    @property
    def offset(self) -> int:
        return self.start * self.sector_size

    @property
    def length(self) -> int:
        return self.size * self.sector_size

    @property
    def end(self) -> int:
        """First byte after the partition."""
        return self.offset + self.length

    @property
    def is_fat(self) -> bool:
        return self.type.lower().lstrip("0x") in FAT_TYPES


@dataclass(frozen=True)
class PartitionTable:
    label: str
    disk_id: str
    sector_size: int
    partitions: List[Partition]

    def get(self, number: int) -> Optional[Partition]:
        for part in self.partitions:
            if part.number == number:
                return part
        return None

    def partuuid(self, number: int) -> str:
        """The PARTUUID the kernel derives for an MBR partition (``<diskid>-<nn>``)."""
        disk = self.disk_id.lower()
        disk = disk[2:] if disk.startswith("0x") else disk
        return f"{disk.zfill(8)}-{number:02d}"


def parse_sfdisk_json(document: str) -> PartitionTable:
    """Build a PartitionTable from ``sfdisk --json`` output."""
    try:
        table = json.loads(document)["partitiontable"]
    except (ValueError, KeyError):
        raise PibakeError("The image has no readable partition table; give a whole-disk Raspberry Pi image.") from None
    sector_size = int(table.get("sectorsize", 512))
    parts = []
    for entry in table.get("partitions", []):
        node = entry["node"]
        digits = ""
        for char in reversed(node):
            if not char.isdigit():
                break
            digits = char + digits
        parts.append(
            Partition(
                number=int(digits),
                start=int(entry["start"]),
                size=int(entry["size"]),
                type=str(entry.get("type", "")),
                sector_size=sector_size,
            )
        )
    return PartitionTable(
        label=table.get("label", ""), disk_id=str(table.get("id", "")), sector_size=sector_size, partitions=parts
    )


def read_table(image: str) -> PartitionTable:
    """Read the partition table of an image file or block device."""
    proc = run(["sfdisk", "--json", image], check=False)
    if proc.returncode != 0:
        raise PibakeError(f"{image} has no partition table; give a whole-disk Raspberry Pi image (.img), not a partition or archive.")
    return parse_sfdisk_json(text(proc))


def require_pi_layout(table: PartitionTable, image: str) -> None:
    """A Raspberry Pi image: MBR, FAT boot partition 1, root partition 2 as the last partition."""
    if table.label != "dos":
        raise PibakeError(
            f"{image} uses a {table.label.upper() or 'unknown'} partition table; pibake expects the MBR layout of "
            "Raspberry Pi OS (FAT boot partition 1, ext4 root partition 2)."
        )
    boot, root = table.get(1), table.get(2)
    if boot is None or root is None:
        raise PibakeError(f"{image} lacks partition 1 (boot) or 2 (root); give a Raspberry Pi OS-style image.")
    if not boot.is_fat:
        raise PibakeError(f"Partition 1 of {image} is not a FAT partition (type {boot.type}); give a Raspberry Pi OS-style image.")
    if max(p.end for p in table.partitions) != root.end:
        raise PibakeError(f"The root partition of {image} is not the last one, so it cannot grow; use an image with root last.")


def grow_last_partition(image: str, grow_bytes: int, number: int) -> PartitionTable:
    """Append ``grow_bytes`` to the image file and extend partition ``number`` to the new end."""
    if grow_bytes <= 0:
        return read_table(image)
    size = os.path.getsize(image)
    # Keep the file a whole number of MiB so partitions stay aligned and sparse.
    new_size = ((size + grow_bytes + (1 << 20) - 1) >> 20) << 20
    with open(image, "r+b") as handle:
        handle.truncate(new_size)
    run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", "-N", str(number), image],
        input=b", +\n",
        what=f"Growing partition {number} of {image}",
    )
    return read_table(image)


def parse_size(value) -> int:
    """Parse '2G', '512M', '1024' (bytes) into bytes."""
    if isinstance(value, int):
        return value
    raw = str(value).strip().upper().rstrip("B").rstrip("I")
    if not raw:
        return 0
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    factor = units.get(raw[-1], 1)
    number = raw[:-1] if raw[-1] in units else raw
    try:
        return int(float(number) * factor)
    except ValueError:
        raise PibakeError(f"Size {value!r} is not understood; write it like 1G, 512M or 1048576.") from None
