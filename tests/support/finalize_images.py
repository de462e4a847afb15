# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Small Raspberry Pi-style disk images for tests, made without root, loop devices or kernel vfat.

MBR (or GPT) by sfdisk, a FAT32 boot partition by ``mkfs.fat --offset`` + mtools, an ext4 root by
``mkfs.ext4 -E offset= -d tree``; then files written and deleted in both filesystems so their free space holds
random data, as a real build leaves it.
"""

from __future__ import annotations

import os
import subprocess

SECTOR = 512
MIB = 1 << 20

DPKG_STATUS = """\
Package: base-files
Status: install ok installed
Priority: required
Section: admin
Installed-Size: 341
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: arm64
Version: 12.4+deb12u5
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy of a Debian system.

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12345
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: arm64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on the system.

Package: removed-pkg
Status: deinstall ok config-files
Architecture: arm64
Version: 1.0-1
Description: a package removed but not purged

Package: openssh-server
Status: install ok installed
Architecture: arm64
Source: openssh (1:9.2p1-2+deb12u2)
Version: 1:9.2p1-2+deb12u2
Description: secure shell (SSH) server, for secure access from remote machines
"""

GROW_UNIT = """\
[Unit]
Description=Grow the root partition and filesystem to fill the disk
ConditionPathExists=/var/lib/pibake/grow-root
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pibake-grow-root
ExecStartPost=/bin/rm -f /var/lib/pibake/grow-root

[Install]
WantedBy=local-fs.target
"""

GROW_SCRIPT = """\
#!/bin/sh
set -e
dev=$(findmnt -n -o SOURCE /)
disk=/dev/$(lsblk -no pkname "$dev")
echo ", +" | sfdisk --no-reread -N 2 "$disk"
partx -u "$disk"
resize2fs "$dev"
"""


def _run(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _write(root, rel, data, mode=0o644):
    dest = os.path.join(root, rel.lstrip("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    os.chmod(dest, mode)


def _text_blob(size):
    """Compressible but not trivial data (like binaries and text in a real root)."""
    import random
    rng = random.Random(size)
    words = [bytes(rng.randrange(97, 123) for _ in range(rng.randrange(2, 9))) for _ in range(4000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:size])


def make_image(workdir, *, name="test.img", size_mb=288, boot_mb=64, label="dos", expansion="systemd",
               root_ref="partuuid", data_mb=6, deleted_mb=16, fat_deleted_mb=4, disk_id="0x5eed1e55",
               fstab_extra=""):
    """Build a test image; return its path. ``expansion``: systemd, raspios or none."""
    os.makedirs(workdir, exist_ok=True)
    img = os.path.join(workdir, name)
    boot_start = 8192
    boot_sectors = boot_mb * MIB // SECTOR
    root_start = boot_start + boot_sectors
    total_sectors = size_mb * MIB // SECTOR
    root_sectors = total_sectors - root_start - (34 if label == "gpt" else 0)
    if os.path.exists(img):
        os.unlink(img)
    _run(["truncate", "-s", str(size_mb * MIB), img])
    if label == "gpt":
        layout = (f"label: gpt\n"
                  f"start={boot_start}, size={boot_sectors}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n"
                  f"start={root_start}, size={root_sectors}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n")
    else:
        layout = (f"label: dos\nlabel-id: {disk_id}\n"
                  f"start={boot_start}, size={boot_sectors}, type=c\n"
                  f"start={root_start}, size={root_sectors}, type=83\n")
    _run(["sfdisk", "-q", img], input=layout.encode())
    import json
    table = json.loads(_run(["sfdisk", "--json", img]).stdout)["partitiontable"]
    if label == "gpt":
        boot_ref = "PARTUUID=" + table["partitions"][0]["uuid"].lower()
        root_partuuid = table["partitions"][1]["uuid"].lower()
    else:
        ident = int(table["id"], 16)
        boot_ref = "PARTUUID=%08x-01" % ident
        root_partuuid = "%08x-02" % ident

    # Root tree.
    tree = os.path.join(workdir, "rootfs-tree")
    _run(["rm", "-rf", tree])
    os.makedirs(tree)
    root_arg = {"partuuid": f"PARTUUID={root_partuuid}", "label": "LABEL=rootfs"}.get(root_ref, root_ref)
    _write(tree, "etc/fstab", f"proc /proc proc defaults 0 0\n{boot_ref} /boot/firmware vfat defaults 0 2\n"
                              f"{root_arg} / ext4 defaults,noatime 0 1\n{fstab_extra}")
    _write(tree, "etc/hostname", "pibake-test\n")
    _write(tree, "usr/lib/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    os.symlink("../usr/lib/os-release", os.path.join(tree, "etc/os-release"))
    _write(tree, "var/lib/dpkg/status", DPKG_STATUS)
    for index in range(max(1, data_mb)):
        _write(tree, f"usr/share/pibake-test/blob{index:03d}", _text_blob(MIB))
    if expansion == "systemd":
        _write(tree, "etc/systemd/system/pibake-grow-root.service", GROW_UNIT)
        _write(tree, "usr/local/sbin/pibake-grow-root", GROW_SCRIPT, 0o755)
        os.makedirs(os.path.join(tree, "etc/systemd/system/local-fs.target.wants"))
        os.symlink("../pibake-grow-root.service",
                   os.path.join(tree, "etc/systemd/system/local-fs.target.wants/pibake-grow-root.service"))
        os.makedirs(os.path.join(tree, "var/lib/pibake"))
    elif expansion == "raspios":
        _write(tree, "usr/lib/raspberrypi-sys-mods/firstboot", "#!/bin/sh\n# grows the root partition\n", 0o755)
        _write(tree, "etc/init.d/resize2fs_once", "#!/bin/sh\n# resize2fs the root once\n", 0o755)
        os.makedirs(os.path.join(tree, "etc/rc3.d"))
    root_off = root_start * SECTOR
    _run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "rootfs", "-U", "0b5e7e57-0000-4000-8000-000000000002",
          "-E", f"offset={root_off}", "-d", tree, img, f"{root_sectors * SECTOR // 1024}k"])
    _run(["rm", "-rf", tree])
    spec = f"{img}?offset={root_off}"
    if deleted_mb:
        junk = os.path.join(workdir, "junk.bin")
        with open(junk, "wb") as handle:
            handle.write(os.urandom(deleted_mb * MIB))
        _run(["debugfs", "-w", "-R", f"write {junk} /deleted.bin", spec])
        _run(["debugfs", "-w", "-R", "rm /deleted.bin", spec])
        os.unlink(junk)

    # Boot FAT.
    _run(["mkfs.fat", "-F", "32", "-s", "1", "-n", "BOOTFS", "-i", "5eed0001", "--offset", str(boot_start), img,
          str(boot_sectors * SECTOR // 1024)])
    fat = f"{img}@@{boot_start * SECTOR}"
    stage = os.path.join(workdir, "boot-stage")
    _run(["rm", "-rf", stage])
    os.makedirs(os.path.join(stage, "overlays"))
    cmdline = f"console=serial0,115200 console=tty1 root={root_arg} rootfstype=ext4 fsck.repair=yes rootwait\n"
    files = {
        "cmdline.txt": cmdline.encode(),
        "config.txt": b"arm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n"
                      b"[pi4]\ndtoverlay=vc4-kms-v3d\n[all]\ndtparam=audio=on\n",
        "vmlinuz": os.urandom(256 * 1024),
        "initrd.img": os.urandom(128 * 1024),
        "bcm2711-rpi-4-b.dtb": _text_blob(32 * 1024),
        "bcm2712-rpi-5-b.dtb": _text_blob(32 * 1024),
        "overlays/vc4-kms-v3d.dtbo": _text_blob(4 * 1024),
    }
    for rel, data in files.items():
        _write(stage, rel, data)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    if fat_deleted_mb:
        junk = os.path.join(stage, "old-initrd.img")
        with open(junk, "wb") as handle:
            handle.write(os.urandom(fat_deleted_mb * MIB))
        _run(["mcopy", "-i", fat, junk, "::old-initrd.img"], env=env)
        _run(["mdel", "-i", fat, "::old-initrd.img"], env=env)
        os.unlink(junk)
    _run(["mcopy", "-s", "-i", fat] + [os.path.join(stage, n) for n in sorted(os.listdir(stage))] + ["::"], env=env)
    _run(["rm", "-rf", stage])
    return img


_PRISTINE = {}


def image_copy(dest_dir, name="test.img", **kwargs):
    """A fresh sparse copy of a test image built once per process for these arguments."""
    import atexit
    import shutil
    import tempfile
    key = tuple(sorted(kwargs.items()))
    if key not in _PRISTINE:
        folder = tempfile.mkdtemp(prefix="pibake-finalize-img-")
        atexit.register(shutil.rmtree, folder, True)
        _PRISTINE[key] = make_image(folder, **kwargs)
    dest = os.path.join(str(dest_dir), name)
    _run(["cp", "--sparse=always", _PRISTINE[key], dest])
    return dest


def root_offset(img):
    """Byte offset of the last partition (the root)."""
    import json
    table = json.loads(_run(["sfdisk", "--json", img]).stdout)["partitiontable"]
    return max(p["start"] for p in table["partitions"]) * SECTOR


def boot_offset(img):
    import json
    table = json.loads(_run(["sfdisk", "--json", img]).stdout)["partitiontable"]
    return min(p["start"] for p in table["partitions"]) * SECTOR
