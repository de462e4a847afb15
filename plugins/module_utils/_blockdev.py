# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Inspect block devices before pibake writes to them: what they are, who uses them, what they hold.

Everything here reads sysfs, ``/proc`` and the device itself; nothing relies on partition nodes (``/dev/sdb1``),
because a build host may create none (loop devices without partscan). Partitions are listed from the partition
table (``partx``) and their filesystems probed by byte offset (``blkid -p -O``), which works the same on a
Raspberry Pi, a build host and a loop device.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run, text

SYS_DEV_BLOCK = "/sys/dev/block"
SYS_BLOCK = "/sys/block"
EXT_MAGIC = 0xEF53


# --------------------------------------------------------------------------------------------------------------
# small readers


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return default


def _listdir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def human(size: int) -> str:
    """1.5 GiB, 512 MiB, 4.0 KiB: sizes in user-facing sentences."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


# --------------------------------------------------------------------------------------------------------------
# the device itself


@dataclass(frozen=True)
class LoopInfo:
    backing_file: str
    offset: int
    sizelimit: int


@dataclass(frozen=True)
class BlockDevice:
    """A block device as the kernel sees it (from sysfs)."""

    path: str  # as the user gave it, e.g. /dev/disk/by-id/nvme-...
    node: str  # /dev/<name>
    name: str  # kernel name: sda, nvme0n1, loop3, sda1, dm-0
    devno: Tuple[int, int]
    sysfs: str
    size: int  # bytes
    logical_sector: int
    read_only: bool
    partition_number: int  # 0 unless this is a partition
    parent: str  # kernel name of the disk holding this partition, "" otherwise
    dm_uuid: str
    loop: Optional[LoopInfo]

    @property
    def is_partition(self) -> bool:
        return self.partition_number > 0 or self.dm_uuid.lower().startswith("part")


def sysfs_for_devno(major: int, minor: int) -> str:
    return os.path.realpath(os.path.join(SYS_DEV_BLOCK, f"{major}:{minor}"))


def name_for_devno(major: int, minor: int) -> str:
    path = os.path.join(SYS_DEV_BLOCK, f"{major}:{minor}")
    return os.path.basename(os.path.realpath(path)) if os.path.exists(path) else ""


def loop_info(name: str) -> Optional[LoopInfo]:
    base = os.path.join(SYS_BLOCK, name, "loop")
    if not os.path.isdir(base):
        return None
    backing = _read(os.path.join(base, "backing_file"))
    if backing.endswith(" (deleted)"):
        backing = backing[: -len(" (deleted)")]
    return LoopInfo(
        backing_file=backing,
        offset=int(_read(os.path.join(base, "offset"), "0") or 0),
        sizelimit=int(_read(os.path.join(base, "sizelimit"), "0") or 0),
    )


def inspect(path: str) -> BlockDevice:
    """Describe ``path``; raises PibakeError when it is missing or not a block device."""
    if not path:
        raise PibakeError("No device was given; pass the whole-disk device, e.g. device=/dev/nvme0n1.")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PibakeError(
            f"{path} does not exist; give an existing whole-disk device such as /dev/nvme0n1 or /dev/disk/by-id/… "
            "(list them with `lsblk -d -o NAME,SIZE,MODEL,SERIAL`)."
        ) from None
    except OSError as err:
        raise PibakeError(f"{path} cannot be examined ({err.strerror}); check the path and your permissions.") from None
    if stat.S_ISREG(st.st_mode):
        raise PibakeError(
            f"{path} is a regular file, not a block device; give a whole-disk device such as /dev/sda "
            "(to get an image file, copy the image instead)."
        )
    if not stat.S_ISBLK(st.st_mode):
        raise PibakeError(f"{path} is not a block device; give a whole-disk device such as /dev/nvme0n1.")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    sysfs = sysfs_for_devno(major, minor)
    if not os.path.isdir(sysfs):
        raise PibakeError(f"The kernel does not list {path} in sysfs; check that the device is present (`lsblk`).")
    name = os.path.basename(sysfs)
    partition_number = int(_read(os.path.join(sysfs, "partition"), "0") or 0)
    parent = os.path.basename(os.path.dirname(sysfs)) if partition_number else ""
    queue = os.path.join(SYS_BLOCK, parent or name, "queue")
    return BlockDevice(
        path=path,
        node=os.path.join("/dev", name),
        name=name,
        devno=(major, minor),
        sysfs=sysfs,
        size=int(_read(os.path.join(sysfs, "size"), "0") or 0) * 512,
        logical_sector=int(_read(os.path.join(queue, "logical_block_size"), "512") or 512),
        read_only=_read(os.path.join(sysfs, "ro"), "0") == "1",
        partition_number=partition_number,
        parent=parent,
        dm_uuid=_read(os.path.join(sysfs, "dm", "uuid")),
        loop=loop_info(name) if not partition_number else None,
    )


def partition_names(disk: str) -> List[str]:
    """Kernel names of the partitions the kernel knows for ``disk`` (may be none on a loop without partscan)."""
    base = os.path.join(SYS_BLOCK, disk)
    return [entry for entry in _listdir(base) if os.path.isfile(os.path.join(base, entry, "partition"))]


def devno_of(name: str) -> Optional[Tuple[int, int]]:
    raw = _read(os.path.join("/sys/class/block", name, "dev"))
    if ":" not in raw:
        return None
    major, minor = raw.split(":", 1)
    return int(major), int(minor)


def holders(name: str) -> List[str]:
    """Devices stacked on ``name`` (device-mapper, md RAID, bcache...)."""
    return _listdir(os.path.join("/sys/class/block", name, "holders"))


def slaves(name: str) -> List[str]:
    return _listdir(os.path.join("/sys/class/block", name, "slaves"))


def whole_disks(name: str, _seen: Optional[Set[str]] = None) -> Set[str]:
    """The whole disks (kernel names) a device finally lives on: partition → its disk, dm/md → their members,
    loop → the loop itself plus what its backing file or device lives on."""
    seen = _seen if _seen is not None else set()
    if not name or name in seen:
        return set()
    seen.add(name)
    sysfs = os.path.realpath(os.path.join("/sys/class/block", name))
    if os.path.isfile(os.path.join(sysfs, "partition")):
        return whole_disks(os.path.basename(os.path.dirname(sysfs)), seen)
    members = slaves(name)
    if members:
        found: Set[str] = set()
        for member in members:
            found |= whole_disks(member, seen)
        return found
    found = {name}
    loop = loop_info(name)
    if loop and loop.backing_file:
        try:
            st = os.stat(loop.backing_file)
        except OSError:
            return found
        devno = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
        found |= whole_disks(name_for_devno(os.major(devno), os.minor(devno)), seen)
    return found


# --------------------------------------------------------------------------------------------------------------
# mounts, swap, loops: who uses a disk


@dataclass(frozen=True)
class Mount:
    devno: Tuple[int, int]
    mountpoint: str
    fstype: str
    source: str


def _unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def parse_mountinfo(content: str) -> List[Mount]:
    mounts = []
    for line in content.splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields:
            continue
        sep = fields.index("-")
        major, dummy_sep, minor = fields[2].partition(":")
        mounts.append(
            Mount(
                devno=(int(major), int(minor)),
                mountpoint=_unescape(fields[4]),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
            )
        )
    return mounts


def mounts(mountinfo: str = "/proc/self/mountinfo") -> List[Mount]:
    with open(mountinfo, encoding="utf-8", errors="replace") as handle:
        return parse_mountinfo(handle.read())


def swaps(path: str = "/proc/swaps") -> List[str]:
    lines = _read(path).splitlines()[1:]
    return [_unescape(line.split()[0]) for line in lines if line.strip()]


def _kernel_cmdline_root(cmdline: str) -> str:
    for token in cmdline.split():
        if token.startswith("root="):
            return token[len("root="):]
    return ""


def _resolve_root_spec(spec: str) -> str:
    """Kernel name for a ``root=`` value (/dev/..., PARTUUID=..., UUID=..., LABEL=...), "" when unknown."""
    if not spec:
        return ""
    links = {
        "PARTUUID=": "/dev/disk/by-partuuid/",
        "UUID=": "/dev/disk/by-uuid/",
        "LABEL=": "/dev/disk/by-label/",
        "PARTLABEL=": "/dev/disk/by-partlabel/",
    }
    candidates = [spec]
    for prefix, folder in links.items():
        if spec.upper().startswith(prefix):
            value = spec[len(prefix):]
            candidates = [folder + value, folder + value.lower(), folder + value.upper()]
            break
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            return name_for_devno(os.major(st.st_rdev), os.minor(st.st_rdev))
    return ""


def root_disks(mount_list: Optional[List[Mount]] = None, cmdline: Optional[str] = None) -> Set[str]:
    """Whole disks under the running root filesystem: from the ``/`` mount and the kernel's ``root=``."""
    mount_list = mounts() if mount_list is None else mount_list
    found: Set[str] = set()
    for mount in mount_list:
        if mount.mountpoint != "/":
            continue
        name = name_for_devno(*mount.devno)
        if not name and mount.source.startswith("/dev/"):
            name = _resolve_root_spec(mount.source)
        found |= whole_disks(name)
    if cmdline is None:
        cmdline = _read("/proc/cmdline")
    found |= whole_disks(_resolve_root_spec(_kernel_cmdline_root(cmdline)))
    return found


def users(dev: BlockDevice, mount_list: Optional[List[Mount]] = None) -> List[str]:
    """Short descriptions of everything that uses ``dev`` or one of its partitions; empty when unused."""
    mount_list = mounts() if mount_list is None else mount_list
    names = [dev.name] + partition_names(dev.name)
    devnos = {devno_of(n): n for n in names}
    nodes = {os.path.join("/dev", n): n for n in names}
    found: List[str] = []
    for mount in mount_list:
        name = devnos.get(mount.devno)
        if name is None and mount.source.startswith("/dev/"):
            name = nodes.get(os.path.realpath(mount.source))
        if name is not None:
            found.append(f"/dev/{name} is mounted on {mount.mountpoint}")
    for swap in swaps():
        name = nodes.get(os.path.realpath(swap))
        if name is not None:
            found.append(f"/dev/{name} is active swap")
    for name in names:
        for holder in holders(name):
            found.append(f"/dev/{name} is held by /dev/{holder}")
    for loop in _listdir(SYS_BLOCK):
        info = loop_info(loop)
        if info is None or not info.backing_file or loop == dev.name:
            continue
        name = nodes.get(os.path.realpath(info.backing_file))
        if name is not None:
            where = f" at offset {info.offset}" if info.offset else ""
            found.append(f"/dev/{name} backs the loop device /dev/{loop}{where}")
    if not found:
        busy = exclusive_open_error(dev.node)
        if busy:
            found.append(busy)
    return found


def exclusive_open_error(node: str) -> str:
    """Opening with O_EXCL fails when the kernel has the device claimed (mounted anywhere, in any namespace,
    or held by dm/md); returns a description of that, or "" when the device is free."""
    try:
        fd = os.open(node, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.EBUSY:
            return f"{node} is claimed by the kernel (mounted elsewhere or part of a RAID/LVM/crypt stack)"
        return ""
    os.close(fd)
    return ""


# --------------------------------------------------------------------------------------------------------------
# partition table and filesystems, read from the device itself


@dataclass(frozen=True)
class PartitionEntry:
    number: int
    offset: int  # bytes
    size: int  # bytes
    uuid: str  # PARTUUID as the kernel shows it
    name: str  # GPT partition name (PARTLABEL)
    type: str
    scheme: str


def _parse_pairs(line: str) -> Dict[str, str]:
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line))


def parse_partx(output: str) -> List[PartitionEntry]:
    entries = []
    for line in output.splitlines():
        pairs = _parse_pairs(line)
        if "NR" not in pairs:
            continue
        entries.append(
            PartitionEntry(
                number=int(pairs["NR"]),
                offset=int(pairs.get("START", "0")) * 512,  # partx counts 512-byte sectors whatever the device
                size=int(pairs.get("SIZE", "0")),
                uuid=pairs.get("UUID", ""),
                name=pairs.get("NAME", "").replace("\\x20", " "),
                type=pairs.get("TYPE", ""),
                scheme=pairs.get("SCHEME", ""),
            )
        )
    return entries


def partitions(node: str) -> List[PartitionEntry]:
    """Partitions listed in the device's own partition table (no kernel partition nodes needed)."""
    proc = run(["partx", "--bytes", "--pairs", "-o", "NR,START,SIZE,UUID,NAME,TYPE,SCHEME", node], check=False)
    if proc.returncode != 0:
        return []
    return parse_partx(text(proc))


def parse_export(output: str) -> Dict[str, str]:
    values = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = re.sub(r"\\(.)", r"\1", value)
    return values


@dataclass(frozen=True)
class Probe:
    """What libblkid finds at one place of a device. ``ambivalent``: several conflicting signatures."""

    values: Dict[str, str] = field(default_factory=dict)
    ambivalent: bool = False

    @property
    def type(self) -> str:
        return self.values.get("TYPE", "")

    @property
    def label(self) -> str:
        return self.values.get("LABEL", "")

    @property
    def pttype(self) -> str:
        return self.values.get("PTTYPE", "")

    @property
    def empty(self) -> bool:
        return not self.values.get("TYPE") and not self.values.get("PTTYPE") and not self.ambivalent


def probe(node: str, offset: int = 0, size: int = 0) -> Probe:
    """Low-level probe (``blkid -p``, bypassing caches) of ``node``, optionally of ``size`` bytes at ``offset``."""
    argv = ["blkid", "--probe", "--output", "export"]
    if offset:
        argv += ["--offset", str(offset)]
    if size:
        argv += ["--size", str(size)]
    proc = run(argv + [node], check=False)
    if proc.returncode == 8:
        return Probe(ambivalent=True)
    if proc.returncode not in (0, 2):
        detail = (proc.stderr or b"").decode(errors="replace").strip()
        raise PibakeError(f"Probing {node} with blkid failed ({detail or proc.returncode}); check that the device is readable.")
    values = parse_export(text(proc))
    values.pop("DEVNAME", None)
    return Probe(values=values)


def ext_label(node: str, offset: int = 0) -> Optional[str]:
    """Label of an ext2/3/4 superblock at ``offset`` read straight from the device, None when there is none."""
    try:
        with open(node, "rb", buffering=0) as handle:
            handle.seek(offset + 1024)
            block = handle.read(1024)
    except OSError:
        return None
    if len(block) < 136 or int.from_bytes(block[56:58], "little") != EXT_MAGIC:
        return None
    return block[120:136].split(b"\0", 1)[0].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Place:
    """One place on a disk that may hold a filesystem: the whole device (number 0) or a partition."""

    number: int
    offset: int
    size: int
    probe: Probe
    ext_label: Optional[str]
    partition: Optional[PartitionEntry] = None

    def has_label(self, label: str) -> bool:
        if self.probe.label == label or self.ext_label == label:
            return True
        return bool(self.partition and self.partition.name == label)

    def describe(self, disk: str) -> str:
        return disk if self.number == 0 else f"partition {self.number} of {disk}"


@dataclass(frozen=True)
class Contents:
    table: Probe  # whole-device probe: PTTYPE (partition table) or TYPE (whole-disk filesystem)
    places: List[Place]

    def with_label(self, label: str) -> List[Place]:
        return [place for place in self.places if place.has_label(label)]

    def ambivalent(self) -> List[Place]:
        return [place for place in self.places if place.probe.ambivalent]


def contents(dev: BlockDevice) -> Contents:
    """Probe the whole device and each partition of its table by offset."""
    whole = probe(dev.node)
    places = [Place(0, 0, dev.size, whole, ext_label(dev.node, 0))]
    parts = partitions(dev.node)
    if whole.pttype and not parts and not whole.type:
        # A table partx cannot list: we cannot look inside, so we must not assume it is harmless.
        raise PibakeError(
            f"{dev.path} has a {whole.pttype} partition table that pibake cannot read, so it cannot check it for "
            "OURBOX_DATA; inspect it with `lsblk -f` and `wipefs`, and clear it by hand if it is not needed."
        )
    for part in parts:
        if part.size <= 0 or part.offset >= dev.size:
            continue
        size = min(part.size, dev.size - part.offset)
        places.append(
            Place(part.number, part.offset, size, probe(dev.node, part.offset, size), ext_label(dev.node, part.offset), part)
        )
    return Contents(table=whole, places=places)


# --------------------------------------------------------------------------------------------------------------
# the safety rules every destructive operation shares


def require_whole_disk(dev: BlockDevice) -> None:
    """Refuse partitions, partition-like loop windows, empty drives and read-only devices."""
    if dev.partition_number:
        raise PibakeError(
            f"{dev.path} is partition {dev.partition_number} of /dev/{dev.parent}, not a whole disk; "
            f"give the whole disk (/dev/{dev.parent}) if that is the one you mean."
        )
    if dev.is_partition:
        raise PibakeError(
            f"{dev.path} is a device-mapper view of one partition, not a whole disk; give the underlying whole disk."
        )
    if dev.loop is not None:
        if dev.loop.offset or dev.loop.sizelimit:
            raise PibakeError(
                f"{dev.path} is a loop device showing only part of {dev.loop.backing_file} (offset {dev.loop.offset}, "
                f"size limit {dev.loop.sizelimit}), i.e. a partition, not a whole disk; attach the whole file "
                "without --offset/--sizelimit and give that loop device."
            )
        backing = dev.loop.backing_file
        if backing and os.path.exists(backing) and stat.S_ISBLK(os.stat(backing).st_mode):
            raise PibakeError(
                f"{dev.path} is a loop device over the block device {backing}; give {backing} itself so that its "
                "safety checks apply."
            )
    if dev.size == 0:
        raise PibakeError(f"{dev.path} has no medium (size 0); insert the disk, or attach the loop device, and try again.")
    if dev.read_only:
        raise PibakeError(f"{dev.path} is read-only; unlock it (write-protect switch, `blockdev --setrw`) and try again.")


def require_not_root(dev: BlockDevice) -> None:
    if dev.name in root_disks():
        raise PibakeError(
            f"{dev.path} holds the running root filesystem; boot from another disk (e.g. the SD card) to write it, "
            "or pick the other disk."
        )


def require_unused(dev: BlockDevice) -> None:
    found = users(dev)
    if found:
        raise PibakeError(
            f"{dev.path} is in use ({'; '.join(found)}); unmount or detach that first (`umount`, `swapoff`, "
            "`losetup -d`), or pick another disk."
        )
