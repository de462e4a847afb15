# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""A tiny Raspberry Pi-style arm64 disk image for fast session tests.

Same layout as Raspberry Pi OS (MBR, FAT32 `bootfs` partition 1 with config.txt and cmdline.txt, ext4 `rootfs`
partition 2) but its root holds only Debian's arm64 busybox-static, so it builds in seconds and still runs real
arm64 code through qemu-user. Built without loop devices: mkfs with offsets, mtools, mkfs.ext4 -d.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile

CACHE = os.path.join(os.environ.get("PIBAKE_CACHE_DIR") or os.path.expanduser("~/.cache/pibake"), "test-assets")
MIB = 1 << 20
BOOT_START, BOOT_SIZE, ROOT_SIZE = 8192, 72 * MIB // 512, 48 * MIB // 512
DISK_ID = "0x5eed0001"
APPLETS = ("sh", "ls", "cat", "echo", "sleep", "true", "false", "mount", "id", "uname", "touch", "rm", "mkdir", "ln", "stat", "grep", "env")


def busybox_tree(arch: str = "arm64") -> str:
    """Extract Debian's busybox-static for ``arch`` once into the cache; returns the tarball path."""
    os.makedirs(CACHE, exist_ok=True)
    tarball = os.path.join(CACHE, f"mini-rootfs-busybox-{arch}.tar")
    if not os.path.exists(tarball):
        temp = tarball[:-4] + f".tmp{os.getpid()}.tar"
        subprocess.run(
            ["mmdebstrap", "--quiet", "--format=tar", "--variant=extract", f"--arch={arch}", "--include=busybox-static", "bookworm",
             temp, "http://deb.debian.org/debian"],
            check=True, stdout=subprocess.DEVNULL,
        )
        os.replace(temp, tarball)
    return tarball


def _root_tree(dest: str, arch: str) -> None:
    with tarfile.open(busybox_tree(arch)) as archive:
        archive.extractall(dest, filter="fully_trusted")
    for name in ("usr/bin", "etc", "proc", "sys", "dev", "run", "tmp", "boot/firmware", "usr/sbin", "var/lib"):
        os.makedirs(os.path.join(dest, name), exist_ok=True)
    for applet in APPLETS:
        link = os.path.join(dest, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(dest, "etc", "os-release"), "w", encoding="ascii") as handle:
        handle.write('ID=pibake-mini\nPRETTY_NAME="pibake mini test image"\n')
    with open(os.path.join(dest, "etc", "resolv.conf"), "w", encoding="ascii") as handle:
        handle.write("# the image's own resolver config\nnameserver 192.0.2.53\n")
    os.symlink("../run/fake-target", os.path.join(dest, "etc", "hostname-link"))


def build(path: str, arch: str = "arm64") -> str:
    """Write the mini image to ``path`` and return it."""
    work = tempfile.mkdtemp(prefix="pibake-mini-")
    try:
        root = os.path.join(work, "root")
        _root_tree(root, arch)
        total = (BOOT_START + BOOT_SIZE + ROOT_SIZE) * 512
        with open(path, "wb") as handle:
            handle.truncate(total)
        layout = (
            f"label: dos\nlabel-id: {DISK_ID}\nunit: sectors\n"
            f"start={BOOT_START}, size={BOOT_SIZE}, type=c\n"
            f"start={BOOT_START + BOOT_SIZE}, size={ROOT_SIZE}, type=83\n"
        )
        subprocess.run(["sfdisk", "-q", path], input=layout.encode(), check=True)
        subprocess.run(
            ["mkfs.fat", "-F", "32", "-n", "BOOTFS", "-i", "5EED0001", "--offset", str(BOOT_START), "--mbr=n", path,
             str(BOOT_SIZE * 512 // 1024)],
            check=True, stdout=subprocess.DEVNULL,
        )
        boot_files = os.path.join(work, "bootfiles")
        os.makedirs(os.path.join(boot_files, "overlays"))
        with open(os.path.join(boot_files, "config.txt"), "w", encoding="ascii") as handle:
            handle.write("[all]\narm_64bit=1\nkernel=vmlinuz\n")
        with open(os.path.join(boot_files, "cmdline.txt"), "w", encoding="ascii") as handle:
            handle.write(f"console=serial0,115200 root=PARTUUID={DISK_ID[2:]}-02 rootfstype=ext4 rootwait\n")
        with open(os.path.join(boot_files, "overlays", "README"), "w", encoding="ascii") as handle:
            handle.write("overlays\n")
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        subprocess.run(
            ["mcopy", "-s", "-p", "-m", "-i", f"{path}@@{BOOT_START * 512}",
             *[os.path.join(boot_files, n) for n in sorted(os.listdir(boot_files))], "::/"],
            check=True, env=env,
        )
        part = os.path.join(work, "root.ext4")
        with open(part, "wb") as handle:
            handle.truncate(ROOT_SIZE * 512)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", root, part], check=True)
        subprocess.run(
            ["dd", f"if={part}", f"of={path}", "bs=1M", f"seek={(BOOT_START + BOOT_SIZE) * 512}", "oflag=seek_bytes",
             "conv=notrunc,sparse", "status=none"],
            check=True,
        )
        return path
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cached(dest: str, arch: str = "arm64") -> str:
    """Copy a cached mini image to ``dest`` (built on first use)."""
    master = os.path.join(CACHE, f"mini-{arch}-v1.img")
    if not os.path.exists(master):
        temp = master + f".tmp{os.getpid()}"
        build(temp, arch)
        os.replace(temp, master)
    subprocess.run(["cp", "--sparse=always", master, dest], check=True)
    return dest
