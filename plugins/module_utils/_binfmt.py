# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Make sure foreign binaries in an image can run: qemu-user through binfmt_misc."""

from __future__ import annotations

import os
import platform
import shutil

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run

BINFMT_DIR = "/proc/sys/fs/binfmt_misc"


def binfmt_dir() -> str:
    """Where binfmt_misc is mounted.

    ``PIBAKE_BINFMT_DIR`` overrides it for tests: a path that does not exist stands for a host (or unprivileged
    container) where binfmt_misc is neither mounted nor mountable.
    """
    return os.environ.get("PIBAKE_BINFMT_DIR") or BINFMT_DIR


# ELF e_machine values of the architectures pibake builds for.
ELF_MACHINES = {"aarch64": 0xB7, "x86_64": 0x3E, "arm": 0x28}


def host_arch() -> str:
    return platform.machine()


def elf_machine(path: str) -> str:
    """Architecture name of an ELF binary, or '' when the file is no ELF."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if header[:4] != b"\x7fELF":
        return ""
    little = header[5] == 1
    machine = int.from_bytes(header[18:20], "little" if little else "big")
    for name, value in ELF_MACHINES.items():
        if value == machine:
            return name
    return f"elf-machine-{machine:#x}"


def _entry_status(arch: str) -> str:
    path = os.path.join(binfmt_dir(), f"qemu-{arch}")
    if not os.path.exists(path):
        return "missing"
    with open(path, encoding="ascii", errors="replace") as handle:
        content = handle.read()
    if not content.startswith("enabled"):
        return "disabled"
    flags = [line.split(":", 1)[1].strip() for line in content.splitlines() if line.startswith("flags:")]
    # F (fix binary) opens the interpreter at registration, so the chroot needs no qemu binary inside.
    return "ok" if flags and "F" in flags[0] else "no-fix-binary"


def ensure_binfmt(arch: str, register: bool = True) -> str:
    """Check that ``arch`` binaries run on this host, registering qemu-user when allowed. Returns how."""
    if arch in ("", "native", host_arch()):
        return "native"
    folder = binfmt_dir()
    if not os.path.exists(os.path.join(folder, "status")):
        if not register:
            raise PibakeError(f"binfmt_misc is not mounted; run `mount -t binfmt_misc binfmt_misc {folder}` (or `make deps`).")
        proc = run(["mount", "-t", "binfmt_misc", "binfmt_misc", folder], check=False)
        if proc.returncode != 0:
            raise PibakeError(
                "binfmt_misc cannot be mounted here, so arm64 binaries cannot run; build on a host (or privileged "
                "container) that allows `mount -t binfmt_misc`."
            )
    status = _entry_status(arch)
    if status != "ok" and register:
        if shutil.which("update-binfmts") is None:
            raise PibakeError(f"qemu-{arch} is not registered and update-binfmts is missing; run `make deps` (installs qemu-user-static and binfmt-support).")
        if status == "no-fix-binary":
            run(["update-binfmts", "--disable", f"qemu-{arch}"], check=False)
        run(["update-binfmts", "--enable", f"qemu-{arch}"], check=False)
        status = _entry_status(arch)
    if status == "missing":
        raise PibakeError(f"qemu-{arch} is not registered in binfmt_misc; run `make deps` (installs qemu-user-static and binfmt-support).")
    if status == "disabled":
        raise PibakeError(f"The qemu-{arch} binfmt entry is disabled; run `update-binfmts --enable qemu-{arch}`.")
    if status == "no-fix-binary":
        raise PibakeError(f"The qemu-{arch} binfmt entry lacks the F flag; reinstall qemu-user-static (`make deps`) so chroots need no qemu inside.")
    return "qemu-user"
