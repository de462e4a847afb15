# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Arm the root expansion that runs at first boot, for whichever mechanism the image carries.

A shrunk image must grow back to fill the card on its first boot. Mechanisms, in detection order:

``raspios``   Raspberry Pi OS: ``init=/usr/lib/raspberrypi-sys-mods/firstboot`` in ``cmdline.txt`` grows the
              partition; the ``resize2fs_once`` SysV service (linked from ``/etc/rc3.d``) grows the filesystem.
``systemd``   any systemd unit in ``/etc/systemd/system`` (the Debian base's ``pibake-expand-rootfs``, the
              firstboot role's ``pibake-firstboot``) that runs ``resize2fs``/``growpart``/``sfdisk``/``parted``,
              itself or through its ``ExecStart`` script. Arming it: the unit is enabled (linked into the
              ``.wants`` of its ``WantedBy=`` targets) when a previous boot disabled it; every
              ``ConditionPathExists=PATH`` that is not the unit's own script is made to exist (an empty marker
              file); every ``ConditionPathExists=!PATH`` done-stamp, and the firstboot role's grow step stamp,
              is removed. That is the whole contract between finalize and a base: no unit name is assumed.
``cloud-init`` cloud-init's growpart module (runs on every boot; nothing to arm).
``none``      do nothing (the caller chose so).
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Dict, List, Optional

from ansible_collections.pibake.image.plugins.module_utils import _ext4, _fatfs
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._imagefile import PartitionTable

MECHANISMS = ("auto", "raspios", "systemd", "cloud-init", "none")
RASPIOS_FIRSTBOOT = "/usr/lib/raspberrypi-sys-mods/firstboot"
RASPIOS_RESIZE_ONCE = "/etc/init.d/resize2fs_once"
GROW_COMMANDS = re.compile(r"\b(resize2fs|growpart|sfdisk|parted|systemd-growfs|systemd-repart)\b")
UNIT_DIRS = ("/etc/systemd/system",)
# The firstboot role records finished steps; a recorded grow step would keep the next boot from growing.
KNOWN_STAMPS = ("/var/lib/pibake/firstboot/steps/grow_rootfs.done",)
FIRSTBOOT_DONE = "/var/lib/pibake/firstboot/done"


def boot_partition(table: PartitionTable):
    """The FAT partition holding cmdline.txt (the first FAT partition), or None."""
    for part in sorted(table.partitions, key=lambda p: p.number):
        if _fatfs.is_fat(table.path, part.offset):
            return part
    return None


def _unit_info(path: str, offset: int, unit_path: str, unit: str, unit_text: str) -> Optional[Dict[str, object]]:
    """What a unit file says about growing the root, or None when it does not grow it."""
    scripts = re.findall(r"^ExecStart(?:Pre|Post)?=[-@:+!]*(\S+)", unit_text, re.M)
    grows = bool(GROW_COMMANDS.search(unit_text))
    for script in scripts:
        if grows:
            break
        content = _ext4.read_file(path, offset, script)
        if content and b"\0" not in content[:4096]:
            grows = bool(GROW_COMMANDS.search(content.decode(errors="replace")))
    if not grows:
        return None
    conditions = re.findall(r"^(?:Condition|Assert)PathExists=\s*(\S+)", unit_text, re.M)
    wanted_by = re.findall(r"^WantedBy=\s*(.+)$", unit_text, re.M)
    return {
        "unit": unit,
        "path": unit_path,
        "scripts": scripts,
        "wanted_by": [t for line in wanted_by for t in line.split()],
        "must_exist": [c.lstrip("|") for c in conditions if not c.lstrip("|").startswith("!")],
        "must_not_exist": [c.lstrip("|!") for c in conditions if c.lstrip("|").startswith("!")],
        "enabled_in": [],
    }


def find_grow_units(path: str, offset: int) -> List[Dict[str, object]]:
    """Local systemd units (files in /etc/systemd/system) that grow the root, enabled or not.

    The whole directory is copied out in one debugfs run; its symlinks are only read, never followed.
    """
    units: Dict[str, Dict[str, object]] = {}
    for unit_dir in UNIT_DIRS:
        with tempfile.TemporaryDirectory(prefix="pibake-units-") as tmp:
            copy = _ext4.dump_tree(path, offset, unit_dir, tmp)
            if copy is None:
                continue
            for name in sorted(os.listdir(copy)):
                full = os.path.join(copy, name)
                if name.endswith(".service") and os.path.isfile(full) and not os.path.islink(full):
                    with open(full, encoding="utf-8", errors="replace") as handle:
                        info = _unit_info(path, offset, f"{unit_dir}/{name}", name, handle.read())
                    if info is not None:
                        units[name] = info
            for name in sorted(os.listdir(copy)):
                wants = os.path.join(copy, name)
                if not name.endswith(".wants") or os.path.islink(wants) or not os.path.isdir(wants):
                    continue
                for unit in sorted(os.listdir(wants)):
                    link = os.path.join(wants, unit)
                    if unit not in units or not os.path.islink(link):
                        continue
                    target = os.readlink(link)
                    target = os.path.normpath(target if target.startswith("/") else f"{unit_dir}/{name}/{target}")
                    if target == units[unit]["path"]:
                        units[unit]["enabled_in"].append(f"{unit_dir}/{name}")
    return [units[name] for name in sorted(units)]


def detect(table: PartitionTable, root_offset: int, units: Optional[List[Dict[str, object]]] = None) -> str:
    path = table.path
    boot = boot_partition(table)
    if _ext4.exists(path, root_offset, RASPIOS_FIRSTBOOT) and boot is not None and \
            _fatfs.read_file(path, boot.offset, "cmdline.txt") is not None:
        return "raspios"
    if units is None:
        units = find_grow_units(path, root_offset)
    if units:
        return "systemd"
    cloud = _ext4.read_file(path, root_offset, "/etc/cloud/cloud.cfg")
    if cloud is not None and b"growpart" in cloud:
        return "cloud-init"
    return "none-found"


def arm(table: PartitionTable, root_offset: int, mechanism: str = "auto", *,
        check_mode: bool = False) -> Dict[str, object]:
    """Make sure the first boot grows the root partition and filesystem; returns what was found and changed."""
    if mechanism not in MECHANISMS:
        raise PibakeError(f"Unknown expansion mechanism {mechanism!r}; use one of {', '.join(MECHANISMS)}.")
    if mechanism == "none":
        return {"mechanism": "none", "changed": False, "actions": []}
    units = find_grow_units(table.path, root_offset)
    found = detect(table, root_offset, units)
    if mechanism == "auto":
        if found == "none-found":
            raise PibakeError("The image has no first-boot root expansion (no Raspberry Pi OS firstboot, no "
                              "enabled systemd unit running resize2fs/growpart, no cloud-init growpart); add the "
                              "firstboot role, or set expansion to none to publish a minimal-size root.")
        mechanism = found
    actions: List[str] = []
    if mechanism == "raspios":
        actions = _arm_raspios(table, root_offset, check_mode)
    elif mechanism == "systemd":
        actions = _arm_systemd(table.path, root_offset, check_mode, units)
    elif mechanism == "cloud-init" and found != "cloud-init":
        raise PibakeError("expansion is cloud-init but the image has no /etc/cloud/cloud.cfg with growpart; "
                          "install cloud-init or choose another expansion mechanism.")
    return {"mechanism": mechanism, "changed": bool(actions), "actions": actions}


def _arm_raspios(table: PartitionTable, root_offset: int, check_mode: bool) -> List[str]:
    path = table.path
    boot = boot_partition(table)
    if boot is None or not _ext4.exists(path, root_offset, RASPIOS_FIRSTBOOT):
        raise PibakeError(f"expansion is raspios but the image lacks {RASPIOS_FIRSTBOOT} or a FAT boot partition; "
                          f"use a Raspberry Pi OS base or choose another expansion mechanism.")
    actions = []
    raw = _fatfs.read_file(path, boot.offset, "cmdline.txt")
    if raw is None:
        raise PibakeError("The boot partition has no cmdline.txt; the image cannot boot, rebuild it.")
    cmdline = raw.decode(errors="replace").strip().splitlines()[0] if raw.strip() else ""
    words = cmdline.split()
    wanted = f"init={RASPIOS_FIRSTBOOT}"
    if wanted not in words:
        words = [w for w in words if not w.startswith("init=")] + [wanted]
        actions.append(f"cmdline.txt: added {wanted}")
        if not check_mode:
            _fatfs.write_file(path, boot.offset, "cmdline.txt", (" ".join(words) + "\n").encode())
    if _ext4.exists(path, root_offset, RASPIOS_RESIZE_ONCE):
        links = [name for name, dummy_mode in _ext4.listdir(path, root_offset, "/etc/rc3.d")
                 if name.endswith("resize2fs_once")]
        if not links:
            actions.append("linked /etc/rc3.d/S01resize2fs_once")
            if not check_mode:
                _ext4.symlink(path, root_offset, "/etc/rc3.d/S01resize2fs_once", "../init.d/resize2fs_once")
    return actions


def _arm_systemd(path: str, root_offset: int, check_mode: bool, units: List[Dict[str, object]]) -> List[str]:
    if not units:
        raise PibakeError("expansion is systemd but no unit in the image runs resize2fs or growpart; "
                          "enable the base's grow unit or add the firstboot role.")
    actions = []
    for unit in units:
        for marker in unit["must_exist"]:
            if _ext4.exists(path, root_offset, marker):
                continue
            if marker in unit["scripts"]:
                raise PibakeError(f"{unit['unit']} needs {marker}, which is missing from the image; rebuild the "
                                  f"base or reinstall the unit's script.")
            actions.append(f"{unit['unit']}: created {marker}")
            if not check_mode:
                _ext4.write_file(path, root_offset, marker, b"")
        for stamp in unit["must_not_exist"] + list(KNOWN_STAMPS):
            if _ext4.exists(path, root_offset, stamp):
                actions.append(f"{unit['unit']}: removed {stamp}")
                if not check_mode:
                    _ext4.remove(path, root_offset, stamp)
        if not unit["enabled_in"]:
            targets = unit["wanted_by"] or ["multi-user.target"]
            for target in targets:
                link = f"/etc/systemd/system/{target}.wants/{unit['unit']}"
                actions.append(f"enabled {unit['unit']} ({link})")
                if not check_mode:
                    _ext4.symlink(path, root_offset, link, str(unit["path"]))
    if _ext4.exists(path, root_offset, FIRSTBOOT_DONE):
        raise PibakeError(f"The image carries {FIRSTBOOT_DONE}, so its first boot would skip growing the root; run "
                          f"`pibake-firstboot rearm` in the image before finalizing.")
    return actions


def is_armed(table: PartitionTable, root_offset: int) -> Optional[str]:
    """The mechanism that will grow the root at next boot, or None (used by tests and board lint)."""
    units = find_grow_units(table.path, root_offset)
    found = detect(table, root_offset, units)
    if found == "raspios":
        boot = boot_partition(table)
        raw = _fatfs.read_file(table.path, boot.offset, "cmdline.txt") or b""
        return found if f"init={RASPIOS_FIRSTBOOT}".encode() in raw else None
    if found == "systemd":
        for unit in units:
            if unit["enabled_in"] and \
                    all(_ext4.exists(table.path, root_offset, m) for m in unit["must_exist"]) and \
                    not any(_ext4.exists(table.path, root_offset, s) for s in unit["must_not_exist"]):
                return found
        return None
    return found if found == "cloud-init" else None
