# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Board lint: the checks that decide whether a Raspberry Pi image can boot, run on the image file offline.

* the disk identifier is set (MBR label-id or GPT disk GUID), so PARTUUIDs are stable;
* ``cmdline.txt`` has ``root=`` and it names a partition of this image that holds an ext4 root;
* every kernel, initramfs, device tree and overlay that ``config.txt`` names exists in the FAT (and, when it
  names none, the firmware's defaults for the target boards exist);
* every ``/etc/fstab`` entry that must mount at boot (no ``nofail``/``noauto``) resolves to a partition or
  filesystem of this image.

Each problem is one sentence that says what to fix.
"""

from __future__ import annotations

import posixpath
from typing import Dict, List, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils import _ext4, _fatfs
from ansible_collections.pibake.image.plugins.module_utils._imagefile import Partition, PartitionTable, read_table

VIRTUAL_FS = {"proc", "sysfs", "tmpfs", "devpts", "devtmpfs", "cgroup", "cgroup2", "securityfs", "debugfs",
              "configfs", "mqueue", "hugetlbfs", "efivarfs", "pstore", "binfmt_misc", "overlay", "ramfs",
              "fusectl", "tracefs", "bpf", "none", "autofs", "nfs", "nfs4", "cifs", "9p", "virtiofs"}
DEFAULT_KERNELS = {"pi4-64bit": ["kernel8.img"], "pi5-64bit": ["kernel_2712.img", "kernel8.img"],
                   "pi3-64bit": ["kernel8.img"], "pi4-32bit": ["kernel7l.img"], "pi5-32bit": ["kernel7l.img"]}
DEFAULT_DTBS = {"pi4": ["bcm2711-rpi-4-b.dtb"], "pi5": ["bcm2712-rpi-5-b.dtb"], "pi3": ["bcm2710-rpi-3-b.dtb"],
                "pi400": ["bcm2711-rpi-400.dtb"], "pi500": ["bcm2712-rpi-500.dtb"]}


class _Image:
    """Partitions of the image with their filesystem identities."""

    def __init__(self, table: PartitionTable):
        self.table = table
        self.parts: List[Dict[str, object]] = []
        for part in table.partitions:
            info: Dict[str, object] = {"part": part, "partuuid": table.partuuid(part), "fstype": None,
                                       "uuid": None, "label": None, "partlabel": part.name}
            if _ext4.is_ext(table.path, part.offset):
                sb = _ext4.superblock(table.path, part.offset)
                info.update(fstype="ext4", uuid=sb.get("Filesystem UUID", "").lower(),
                            label=sb.get("Filesystem volume name", "").replace("<none>", ""))
            elif _fatfs.is_fat(table.path, part.offset):
                info.update(fstype="vfat", uuid=_fatfs.volume_id(table.path, part.offset),
                            label=_fatfs.volume_label(table.path, part.offset))
            self.parts.append(info)

    def resolve(self, spec: str) -> Tuple[Optional[Dict[str, object]], str]:
        """(partition info, '') when ``spec`` names a partition of this image, else (None, reason)."""
        key, sep, value = spec.partition("=")
        if spec.startswith("/dev/disk/by-"):
            kind, dummy_sep, value = spec[len("/dev/disk/by-"):].partition("/")
            key = {"partuuid": "PARTUUID", "uuid": "UUID", "label": "LABEL", "partlabel": "PARTLABEL"}.get(kind, "")
            sep = "=" if key else ""
        if not sep:
            return None, "a kernel device name, which changes between SD card, USB and NVMe boot"
        key = key.upper()
        for info in self.parts:
            if key == "PARTUUID" and value.lower() == info["partuuid"]:
                return info, ""
            if key == "UUID" and info["uuid"] and value.lower() == str(info["uuid"]).lower():
                return info, ""
            if key == "LABEL" and info["label"] and value == info["label"]:
                return info, ""
            if key == "PARTLABEL" and info["partlabel"] and value == info["partlabel"]:
                return info, ""
        return None, "no partition or filesystem of this image"


def parse_config(content: str) -> Dict[str, object]:
    """Files config.txt names, across all conditional sections (any of them may apply on some board)."""
    found: Dict[str, object] = {"kernel": [], "initramfs": [], "device_tree": [], "dtoverlay": [], "include": [],
                                "os_prefix": "", "overlay_prefix": "overlays/", "auto_initramfs": False}
    for raw in content.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("["):
            continue
        if line.split()[0] in ("initramfs", "include"):
            parts = line.split()
            if len(parts) >= 2:
                found[parts[0]].append(parts[1])
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "kernel" and value:
            found["kernel"].append(value)
        elif key == "device_tree" and value:
            found["device_tree"].append(value)
        elif key == "dtoverlay":
            name = value.split(",", 1)[0].split(":", 1)[0].strip()
            if name:
                found["dtoverlay"].append(name)
        elif key == "os_prefix":
            found["os_prefix"] = value
        elif key == "overlay_prefix":
            found["overlay_prefix"] = value
        elif key == "auto_initramfs":
            found["auto_initramfs"] = value == "1"
    return found


def lint(image: str, *, devices: Optional[List[str]] = None) -> Dict[str, object]:
    """Run every check on ``image``; returns problems (sentences) and what each check saw."""
    devices = devices or ["pi5-64bit", "pi4-64bit"]
    table = read_table(image)
    img = _Image(table)
    problems: List[str] = []
    seen: Dict[str, object] = {"disk_id": table.disk_id, "label": table.label}

    ident = table.disk_id.replace("-", "")
    try:
        zero = int(ident, 16) == 0
    except ValueError:
        zero = False
    if zero:
        problems.append(f"The disk identifier of {image} is zero; set one (sfdisk --disk-id) so PARTUUIDs are "
                        f"stable.")

    boot = next((i for i in img.parts if i["fstype"] == "vfat"), None)
    if boot is None:
        problems.append(f"{image} has no FAT boot partition; a Raspberry Pi cannot boot it.")
        return {"ok": False, "problems": problems, "checks": seen}
    boot_part: Partition = boot["part"]

    raw = _fatfs.read_file(image, boot_part.offset, "cmdline.txt")
    root_info = None
    if raw is None:
        problems.append("The boot partition has no cmdline.txt; add one with root=PARTUUID=... .")
    else:
        words = raw.decode(errors="replace").split()
        root = next((w[5:] for w in words if w.startswith("root=")), None)
        seen["cmdline_root"] = root
        if root is None:
            problems.append("cmdline.txt has no root= argument; add root=PARTUUID=<disk id>-02.")
        else:
            root_info, why = img.resolve(root)
            if root_info is None:
                problems.append(f"cmdline.txt root={root} names {why}; set it to a PARTUUID or LABEL of the root "
                                f"partition (PARTUUIDs here: {', '.join(str(i['partuuid']) for i in img.parts)}).")
            elif root_info["fstype"] != "ext4":
                problems.append(f"cmdline.txt root={root} names partition {root_info['part'].number}, which is not "
                                f"the ext4 root; point it at the root partition.")

    config_raw = _fatfs.read_file(image, boot_part.offset, "config.txt")
    files = set(_fatfs.list_files(image, boot_part.offset))
    if config_raw is None:
        problems.append("The boot partition has no config.txt; the firmware needs one (at least arm_64bit=1).")
        config = parse_config("")
    else:
        config = parse_config(config_raw.decode(errors="replace"))
    seen["config"] = config
    prefix = str(config["os_prefix"])

    def present(name: str, base: str = "") -> bool:
        rel = posixpath.normpath(posixpath.join(base, name)).lstrip("/").lower()
        return rel in files

    for name in config["include"]:
        if not present(name):
            problems.append(f"config.txt includes {name} but the boot partition has no such file; add it or drop "
                            f"the include line.")
    for kind in ("kernel", "initramfs", "device_tree"):
        for name in config[kind]:
            if not present(name, prefix):
                problems.append(f"config.txt names {kind.replace('_', ' ')} {prefix}{name} but the boot partition "
                                f"has no such file; copy it there or fix config.txt.")
    for name in config["dtoverlay"]:
        overlay = posixpath.join(prefix + str(config["overlay_prefix"]), name + ".dtbo")
        if not present(overlay):
            problems.append(f"config.txt loads overlay {name} but {overlay} is missing from the boot partition; "
                            f"install it or drop the dtoverlay line.")
    if not config["kernel"]:
        for device in devices:
            names = DEFAULT_KERNELS.get(device, [])
            if names and not any(present(n, prefix) for n in names):
                problems.append(f"config.txt names no kernel and the default for {device} ({' or '.join(names)}) "
                                f"is missing; add kernel=<file> or copy the kernel there.")
    if not config["device_tree"]:
        for device in devices:
            board = device.split("-", maxsplit=1)[0]
            names = DEFAULT_DTBS.get(board, [])
            if names and not any(present(n, prefix) for n in names):
                problems.append(f"The device tree for {device} ({' or '.join(names)}) is missing from the boot "
                                f"partition; install the board's .dtb files.")

    fstab_part = root_info["part"] if root_info and root_info["fstype"] == "ext4" else None
    if fstab_part is None:
        fstab_part = next((i["part"] for i in img.parts if i["fstype"] == "ext4"), None)
    if fstab_part is not None:
        fstab = _ext4.read_file(image, fstab_part.offset, "/etc/fstab")
        if fstab is None:
            problems.append("The root filesystem has no /etc/fstab; add one that mounts / and /boot/firmware.")
        else:
            seen["fstab"] = []
            for raw_line in fstab.decode(errors="replace").splitlines():
                fields = raw_line.split("#", 1)[0].split()
                if len(fields) < 3:
                    continue
                spec, where, fstype = fields[0], fields[1], fields[2]
                options = fields[3].split(",") if len(fields) > 3 else []
                if fstype in VIRTUAL_FS or spec in VIRTUAL_FS or "bind" in options or "rbind" in options:
                    continue
                if "nofail" in options or "noauto" in options:
                    seen["fstab"].append({"spec": spec, "where": where, "skipped": "nofail/noauto"})
                    continue
                if spec.startswith("/") and not spec.startswith("/dev/"):
                    continue     # swap file or image file inside the root
                info, why = img.resolve(spec)
                seen["fstab"].append({"spec": spec, "where": where, "resolved": bool(info)})
                if info is None:
                    problems.append(f"/etc/fstab mounts {spec} on {where} but that names {why}; use a PARTUUID, "
                                    f"UUID or LABEL of this image, or add nofail if the disk is optional.")
    else:
        problems.append(f"{image} has no ext4 root partition; build the image with an ext4 root.")
    return {"ok": not problems, "problems": problems, "checks": seen}


def summary(problems: List[str]) -> str:
    """One sentence for a failing lint."""
    if not problems:
        return "Board lint passed."
    first = problems[0].rstrip(".")
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return f"Board lint failed: {first}{more}."
