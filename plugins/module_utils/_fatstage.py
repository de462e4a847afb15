# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The FAT boot partition on a host whose kernel has no vfat.

The partition's files are copied into a staging folder with mtools (no loop, no kernel FAT), the folder is
bind-mounted at /boot/firmware, and on detach the FAT is rebuilt with the same label, serial and geometry and
the folder copied back. fusefat is not an option: rename() fails and interrupted writes corrupt both FATs.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import struct
from dataclasses import asdict, dataclass
from typing import Dict, Tuple

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run


def kernel_has_vfat() -> bool:
    """True when this kernel can mount vfat (loaded or loadable)."""
    def listed() -> bool:
        with open("/proc/filesystems", encoding="ascii") as handle:
            return any(line.split()[-1] == "vfat" for line in handle if line.strip())

    if listed():
        return True
    if shutil.which("modprobe"):
        run(["modprobe", "-q", "vfat"], check=False)
    return listed()


@dataclass(frozen=True)
class FatGeometry:
    """What mkfs.fat needs to recreate a FAT filesystem the firmware sees as the same one."""

    fat_bits: int
    label: str
    serial: str
    sectors_per_cluster: int
    reserved_sectors: int
    fat_count: int
    logical_sector_size: int


def read_geometry(image: str, offset: int) -> FatGeometry:
    """Parse the FAT boot sector at ``offset`` of ``image``."""
    with open(image, "rb") as handle:
        handle.seek(offset)
        sector = handle.read(512)
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        raise PibakeError("The boot partition holds no FAT filesystem; give a Raspberry Pi OS-style image.")
    bytes_per_sector, sectors_per_cluster, reserved, fats = struct.unpack_from("<HBHB", sector, 11)
    sectors_per_fat16 = struct.unpack_from("<H", sector, 22)[0]
    if sectors_per_fat16 == 0:  # FAT32 keeps its extended BPB at 0x40.
        bits, serial_at, label_at = 32, 0x43, 0x47
    else:
        total = struct.unpack_from("<H", sector, 19)[0] or struct.unpack_from("<I", sector, 32)[0]
        clusters = total // max(sectors_per_cluster, 1)
        bits, serial_at, label_at = (12 if clusters < 4085 else 16), 0x27, 0x2B
    serial = "%08X" % struct.unpack_from("<I", sector, serial_at)[0]
    label = sector[label_at:label_at + 11].decode("ascii", errors="replace").strip()
    return FatGeometry(
        fat_bits=bits,
        label=label if label and label != "NO NAME" else "",
        serial=serial,
        sectors_per_cluster=sectors_per_cluster,
        reserved_sectors=reserved,
        fat_count=fats,
        logical_sector_size=bytes_per_sector,
    )


def tree_digest(folder: str, ignore: Tuple[str, ...] = ()) -> str:
    """A digest of every path, mode and content below ``folder``: tells whether the build changed the FAT.

    ``ignore``: names of folders to leave out and file name endings to skip (e.g. ``__pycache__``, ``.pyc``);
    the snapshot cache digests role and plugin trees with it.
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in ignore)
        filenames = [f for f in filenames if not (ignore and f.endswith(ignore))]
        for name in sorted(filenames) + [d + "/" for d in dirnames]:
            path = os.path.join(dirpath, name.rstrip("/"))
            digest.update(os.path.relpath(path, folder).encode() + b"\0")
            if not name.endswith("/") and os.path.isfile(path):
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()


def extract(image: str, offset: int, stage: str) -> Dict[str, object]:
    """Copy the FAT's files into ``stage``; returns what write_back needs."""
    geometry = read_geometry(image, offset)
    os.makedirs(stage, exist_ok=True)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    listing = run(["mdir", "-b", "-i", f"{image}@@{offset}", "::/"], check=False, env=env)
    if listing.returncode == 0 and listing.stdout.strip():
        run(
            ["mcopy", "-s", "-p", "-m", "-n", "-i", f"{image}@@{offset}", "::/*", stage + "/"],
            env=env,
            what="Copying the boot partition out with mtools",
        )
    return {"geometry": asdict(geometry), "digest": tree_digest(stage)}


def write_back(image: str, offset: int, size: int, stage: str, saved: Dict[str, object]) -> bool:
    """Rebuild the FAT from ``stage`` when its content changed; returns whether it rewrote the partition."""
    if tree_digest(stage) == saved.get("digest"):
        return False
    geometry = FatGeometry(**saved["geometry"])  # type: ignore[arg-type]
    with open(image, "rb") as handle:
        mbr = handle.read(512)
    argv = [
        "mkfs.fat", "-F", str(geometry.fat_bits), "-i", geometry.serial, "-s", str(geometry.sectors_per_cluster),
        "-R", str(geometry.reserved_sectors), "-f", str(geometry.fat_count), "-S", str(geometry.logical_sector_size),
        "--offset", str(offset // 512), "--mbr=n",
    ]
    if geometry.label:
        argv += ["-n", geometry.label]
    argv += [image, str(size // 1024)]
    run(argv, what="Rebuilding the boot FAT")
    with open(image, "r+b") as handle:  # mkfs.fat must leave the disk's MBR alone; make sure of it.
        if handle.read(512) != mbr:
            handle.seek(0)
            handle.write(mbr)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    entries = sorted(glob.glob(os.path.join(stage, "*")) + glob.glob(os.path.join(stage, ".*")))
    if entries:
        run(
            ["mcopy", "-s", "-p", "-m", "-o", "-i", f"{image}@@{offset}", *entries, "::/"],
            env=env,
            what="Copying the boot partition back with mtools",
        )
    return True
