# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Offset loop devices: one per partition, because this kernel creates no partition nodes (no ``-P``)."""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run, text


def attach(backing: str, offset: int, size: int) -> str:
    """Attach ``size`` bytes of ``backing`` from ``offset`` and return the loop device path."""
    proc = run(
        ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size), backing], check=False
    )
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip()
        # util-linux 2.38 (Debian 12) says "cannot find an unused loop device"; older releases said "could not
        # find any free loop device" (fix: only the old wording was recognized).
        if any(text in detail for text in ("cannot find an unused loop device", "could not find any free loop device",
                                           "No such device")):
            raise PibakeError("No free loop device is available; run `ansible-playbook playbooks/clean.yml` or free one with `losetup -d`.")
        raise PibakeError(f"Attaching {backing} at offset {offset} failed ({detail}); check that loop devices are usable (`losetup -f`).")
    return text(proc).strip()


def list_loops() -> List[Dict[str, str]]:
    """Every attached loop device with its backing file and offset."""
    proc = run(["losetup", "--json", "--list", "--output", "NAME,BACK-FILE,OFFSET,SIZELIMIT"], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    devices = json.loads(text(proc)).get("loopdevices", [])
    for dev in devices:
        dev["back-file"] = (dev.get("back-file") or "").replace(" (deleted)", "")
        dev["offset"] = int(dev.get("offset") or 0)
    return devices


def loops_backed_by(backing: str, offset: int) -> List[str]:
    """Loop devices attached to ``backing`` at ``offset`` — the way to find ours, even if the lease missed one."""
    real = os.path.realpath(backing)
    return [
        dev["name"]
        for dev in list_loops()
        if dev["back-file"] in (backing, real) and dev["offset"] == offset
    ]


def detach(device: str, attempts: int = 10) -> None:
    """Detach a loop device, retrying while the kernel still holds it briefly after an unmount."""
    for attempt in range(attempts):
        proc = run(["losetup", "--detach", device], check=False)
        if proc.returncode == 0:
            return
        stderr = proc.stderr.decode(errors="replace")
        if "No such device" in stderr or "No such device or address" in stderr:
            return
        time.sleep(0.2 * (attempt + 1))
    raise PibakeError(f"Loop device {device} stays busy; stop what uses it (`fuser -vm {device}`) and run playbooks/clean.yml.")
