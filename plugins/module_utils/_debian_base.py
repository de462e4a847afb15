# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The default base image: a Raspberry Pi-style Debian arm64 image built with mmdebstrap.

Layout (the same as Raspberry Pi OS, so later steps treat both alike): MBR partition table; partition 1 FAT32
labelled ``bootfs`` mounted at ``/boot/firmware`` holding the firmware, kernel, initrd, DTBs, ``config.txt`` and
``cmdline.txt`` (placed by Debian's ``raspi-firmware`` hooks); partition 2 ext4 labelled ``rootfs``; ``/etc/fstab``
and ``root=`` by PARTUUID. A first-boot systemd oneshot grows the root partition and filesystem to fill the card.

The build needs root and an active qemu-aarch64 binfmt registration but no loop device and no kernel FAT: mmdebstrap
fills a directory, then the image file is assembled with ``sfdisk``, ``mkfs.fat --offset`` + ``mcopy`` and
``mkfs.ext4 -E offset= -d``. Emulation traps avoided: ``update-initramfs`` is diverted while packages install and
run once at the end (zstd); dpkg runs under eatmydata; no man-db.

Disk identifier, FAT serial and ext4 UUID derive from the recipe digest, so a recipe always yields the same
PARTUUIDs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils._binfmt import ensure_binfmt
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress
from ansible_collections.pibake.image.plugins.module_utils._run import require_tools, run

# Bump whenever the build steps, hook scripts or files written into the image change: it is part of the recipe
# digest, so cached bases built by older code are not reused.
DEBIAN_BASE_VERSION = 2

RELEASES = ("trixie", "bookworm")
DEFAULT_RELEASE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
COMPONENTS = ("main", "non-free-firmware")
DEFAULT_HOSTNAME = "raspberrypi"
DEFAULT_BOOT_SIZE_MIB = 512
DEFAULT_ROOT_FREE_MIB = 512

BASE_PACKAGES = (
    "ca-certificates",
    "dbus",
    "dosfstools",
    "e2fsprogs",
    "fdisk",
    "firmware-brcm80211",
    "initramfs-tools",
    "iproute2",
    "kmod",
    "linux-image-arm64",
    "python3",
    "raspi-firmware",
    "sudo",
    "systemd",
    "systemd-sysv",
    "udev",
    "zstd",
)

SECTOR = 512
MIB = 1 << 20
BOOT_START_MIB = 8  # Raspberry Pi OS (trixie) starts partition 1 at 8 MiB too
ALIGN_MIB = 4
SERIAL_CONSOLES = "tty0 ttyS1,115200 ttyAMA0,115200"  # Pi 3/4 mini UART, then PL011 (Pi, QEMU -M virt) last

_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DEBIAN_KEYS = ("type", "release", "mirror", "extra_packages", "boot_size_mib", "root_free_mib", "hostname")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the content of a Debian base; its digest names the cache entry."""

    release: str = DEFAULT_RELEASE
    mirror: str = DEFAULT_MIRROR
    packages: Tuple[str, ...] = BASE_PACKAGES
    components: Tuple[str, ...] = COMPONENTS
    boot_size_mib: int = DEFAULT_BOOT_SIZE_MIB
    root_free_mib: int = DEFAULT_ROOT_FREE_MIB
    hostname: str = DEFAULT_HOSTNAME
    version: int = DEBIAN_BASE_VERSION

    def as_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data["packages"] = list(self.packages)
        data["components"] = list(self.components)
        return data

    def digest(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def cache_key(self) -> str:
        return f"debian-{self.release}-arm64-{self.digest()[:16]}"

    def describe(self) -> str:
        return (
            f"debian {self.release} arm64 from {self.mirror} ({' '.join(self.components)}), "
            f"recipe {self.digest()[:16]}"
        )


def recipe_from_spec(spec: Mapping[str, object]) -> Recipe:
    """Validate the ``type: debian`` form of ``pibake_base_image`` and turn it into a Recipe."""
    unknown = sorted(set(spec) - set(_DEBIAN_KEYS))
    if unknown:
        raise PibakeError(
            f"pibake_base_image has unknown key(s) {', '.join(unknown)} for type debian; use only "
            f"{', '.join(_DEBIAN_KEYS)}."
        )
    release = str(spec.get("release") or DEFAULT_RELEASE)
    if release not in RELEASES:
        raise PibakeError(
            f"pibake_base_image.release {release!r} is not supported; use one of {', '.join(RELEASES)}."
        )
    mirror = str(spec.get("mirror") or DEFAULT_MIRROR).rstrip("/")
    if not re.match(r"^(https?|file)://\S+$", mirror):
        raise PibakeError(f"pibake_base_image.mirror {mirror!r} is not a URL; give e.g. {DEFAULT_MIRROR}.")
    extra = spec.get("extra_packages") or []
    if isinstance(extra, str) or not isinstance(extra, (list, tuple)):
        raise PibakeError("pibake_base_image.extra_packages must be a list of Debian package names; fix it.")
    for name in extra:
        if not isinstance(name, str) or not _PACKAGE_NAME.match(name):
            raise PibakeError(f"pibake_base_image.extra_packages entry {name!r} is not a Debian package name; fix it.")
    packages = tuple(sorted(set(BASE_PACKAGES) | set(extra)))
    boot = _int_in(spec, "boot_size_mib", DEFAULT_BOOT_SIZE_MIB, 64, 4096)
    free = _int_in(spec, "root_free_mib", DEFAULT_ROOT_FREE_MIB, 0, 65536)
    hostname = str(spec.get("hostname") or DEFAULT_HOSTNAME)
    if not _HOSTNAME.match(hostname):
        raise PibakeError(f"pibake_base_image.hostname {hostname!r} is not a valid host name; use a-z, 0-9 and '-'.")
    return Recipe(release=release, mirror=mirror, packages=packages, boot_size_mib=boot, root_free_mib=free,
                  hostname=hostname)


def _int_in(spec: Mapping[str, object], key: str, default: int, low: int, high: int) -> int:
    value = spec.get(key, default)
    if value is None:
        value = default
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or not low <= number <= high:
        raise PibakeError(f"pibake_base_image.{key} must be a whole number of MiB from {low} to {high}, got {value!r}.")
    return number


# --- identifiers and layout -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identifiers:
    disk_id: str  # 8 lower-case hex digits, MBR disk signature; PARTUUIDs are <disk_id>-01 / -02
    fat_serial: str  # 8 hex digits, FAT volume id
    root_uuid: str  # ext4 filesystem UUID
    hash_seed: str  # ext4 directory hash seed (a UUID)

    @property
    def boot_partuuid(self) -> str:
        return f"{self.disk_id}-01"

    @property
    def root_partuuid(self) -> str:
        return f"{self.disk_id}-02"


def identifiers(digest: str) -> Identifiers:
    """Deterministic identifiers for a recipe digest."""
    h = hashlib.sha256(f"pibake-identifiers:{digest}".encode()).hexdigest()
    disk_id = h[0:8] if int(h[0:8], 16) else "9e7ba4e0"
    serial = h[8:16] if int(h[8:16], 16) else "b0075e1a"
    return Identifiers(
        disk_id=disk_id,
        fat_serial=serial,
        root_uuid=str(uuid.UUID(hex=h[16:48], version=4)),
        hash_seed=str(uuid.UUID(hex=h[32:64], version=4)),
    )


@dataclass(frozen=True)
class Layout:
    """Partition geometry in 512-byte sectors."""

    boot_start: int
    boot_sectors: int
    root_start: int
    root_sectors: int

    @property
    def total_sectors(self) -> int:
        return self.root_start + self.root_sectors

    @property
    def total_bytes(self) -> int:
        return self.total_sectors * SECTOR


def _align_mib(mib: float) -> int:
    whole = int(-(-mib // 1))
    return -(-whole // ALIGN_MIB) * ALIGN_MIB


def plan_layout(boot_size_mib: int, root_size_mib: int) -> Layout:
    per_mib = MIB // SECTOR
    boot_start = BOOT_START_MIB * per_mib
    boot_sectors = boot_size_mib * per_mib
    root_start = _align_mib(BOOT_START_MIB + boot_size_mib) * per_mib
    return Layout(boot_start, boot_sectors, root_start, _align_mib(root_size_mib) * per_mib)


def sfdisk_script(layout: Layout, disk_id: str) -> str:
    """An ``sfdisk`` script: MBR, partition 1 W95 FAT32 (LBA) and partition 2 Linux."""
    return (
        "label: dos\n"
        f"label-id: 0x{disk_id}\n"
        "unit: sectors\n"
        "sector-size: 512\n\n"
        f"start={layout.boot_start}, size={layout.boot_sectors}, type=c\n"
        f"start={layout.root_start}, size={layout.root_sectors}, type=83\n"
    )


def tree_usage(root: str) -> Tuple[int, int]:
    """(bytes in 4 KiB blocks, inode count) of a directory tree, hard links counted once, not following links."""
    used = 0
    inodes = 0
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ["."]:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if name != "." and stat.S_ISDIR(st.st_mode):
                continue  # counted as "." of its own walk step
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            inodes += 1
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or (stat.S_ISLNK(st.st_mode) and st.st_size > 59):
                used += -(-max(st.st_size, 1) // 4096) * 4096
    return used, inodes


def root_size_mib(used_bytes: int, inodes: int, free_mib: int) -> int:
    """Size for an ext4 made with ``mkfs.ext4 -d``: content + metadata (inode tables at 16 KiB/inode, 256-byte
    inodes), a 64 MiB journal, 5 % reserved and ``free_mib`` of room, rounded up to the partition alignment."""
    content = used_bytes * 1.03 + inodes * 256 * 2
    size = (content + 64 * MIB) / 0.93 + free_mib * MIB
    size = max(size, inodes * 16384 * 1.2)
    return _align_mib(size / MIB)


# --- the files this build writes into the image ----------------------------------------------------------------

EXPAND_SCRIPT = """#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# pibake first boot: grow the root partition (when it is the last one) and its ext4 filesystem to fill the
# disk, online, then disable this unit. Written by the pibake.image Debian base.
set -eu
log() { echo "pibake-expand-rootfs: $*"; }
done_() { systemctl disable pibake-expand-rootfs.service >/dev/null 2>&1 || true; exit 0; }

src=$(findmnt -n -o SOURCE /)
part=$(basename "$(readlink -f "$src")")
if [ ! -e "/sys/class/block/$part/partition" ]; then
    log "root $src is not a partition; nothing to grow"; done_
fi
disk=$(basename "$(readlink -f "/sys/class/block/$part/..")")
num=$(cat "/sys/class/block/$part/partition")
last=0
for p in /sys/class/block/"$disk"/*/partition; do
    n=$(cat "$p"); [ "$n" -gt "$last" ] && last=$n
done
if [ "$num" != "$last" ]; then
    log "root partition $num is not the last partition ($last) of /dev/$disk; not growing"; done_
fi
before=$(cat "/sys/class/block/$part/size")
echo ", +" | sfdisk --quiet --no-reread --no-tell-kernel -N "$num" "/dev/$disk" || log "sfdisk could not grow partition $num"
partx -u -n "$num" "/dev/$disk" || log "partx could not tell the kernel the new size"
after=$(cat "/sys/class/block/$part/size")
resize2fs "/dev/$part"
log "grew /dev/$part from $((before / 2048)) MiB to $((after / 2048)) MiB and resized its filesystem"
done_
"""

EXPAND_UNIT = """# SPDX-License-Identifier: Apache-2.0
# Written by the pibake.image Debian base: runs once, then disables itself.
[Unit]
Description=Grow the root partition and filesystem to fill the disk (first boot)
After=systemd-remount-fs.service
Before=multi-user.target
ConditionPathExists=/usr/local/sbin/pibake-expand-rootfs

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pibake-expand-rootfs
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""


def overlay_files(recipe: Recipe, ids: Identifiers) -> Dict[str, Tuple[int, str]]:
    """Files copied into the root before the initramfs step: path -> (mode, text)."""
    fstab = (
        "# <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>\n"
        f"PARTUUID={ids.root_partuuid}\t/\text4\tdefaults,noatime\t0\t1\n"
        f"PARTUUID={ids.boot_partuuid}\t/boot/firmware\tvfat\tdefaults\t0\t2\n"
    )
    raspi = (
        "\n# Set by the pibake.image Debian base so that kernel upgrades on the device keep booting by PARTUUID.\n"
        f'ROOTPART="PARTUUID={ids.root_partuuid} rootfstype=ext4"\n'
        "CMA=0\n"
        f'CONSOLES="{SERIAL_CONSOLES}"\n'
    )
    hosts = (
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{recipe.hostname}\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n"
    )
    return {
        "etc/fstab": (0o644, fstab),
        "etc/hostname": (0o644, recipe.hostname + "\n"),
        "etc/hosts": (0o644, hosts),
        "etc/default/raspi-firmware.pibake": (0o644, raspi),
        # FSTYPE: the fsck hook cannot probe the root device inside the build chroot, so name it; without it the
        # initramfs has no fsck and the root filesystem is never checked at boot.
        "etc/initramfs-tools/conf.d/pibake.conf": (0o644, "# pibake.image Debian base\nCOMPRESS=zstd\nFSTYPE=ext4\n"),
        "usr/local/sbin/pibake-expand-rootfs": (0o755, EXPAND_SCRIPT),
        "etc/systemd/system/pibake-expand-rootfs.service": (0o644, EXPAND_UNIT),
    }


def write_overlay(target: str, recipe: Recipe, ids: Identifiers) -> None:
    for rel, (mode, text) in overlay_files(recipe, ids).items():
        path = os.path.join(target, rel)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, mode)
    wants = os.path.join(target, "etc/systemd/system/multi-user.target.wants")
    os.makedirs(wants, exist_ok=True)
    os.symlink("/etc/systemd/system/pibake-expand-rootfs.service",
               os.path.join(wants, "pibake-expand-rootfs.service"))
    for dirpath, dirnames, dummy_files in os.walk(target):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)


UPDATE_INITRAMFS = "/usr/sbin/update-initramfs"
REQUIRED_BOOT_FILES = ("config.txt", "cmdline.txt", "start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb")


def mmdebstrap_argv(recipe: Recipe, rootdir: str, overlay: str, ids: Identifiers) -> List[str]:
    q_overlay = shlex.quote(overlay)
    essential_hook = (
        "set -e; "
        f'chroot "$1" dpkg-divert --quiet --local --rename --add {UPDATE_INITRAMFS}; '
        "printf '#!/bin/sh\\necho \"pibake: update-initramfs held until the end of the build\" >&2\\nexit 0\\n' "
        f'> "$1{UPDATE_INITRAMFS}"; '
        f'chmod 755 "$1{UPDATE_INITRAMFS}"; '
        'if chroot "$1" sh -c "command -v debconf-set-selections" >/dev/null; then '
        'echo "man-db man-db/auto-update boolean false" | chroot "$1" debconf-set-selections; fi'
    )
    files_hook = (
        "set -e; echo PIBAKE-STEP configure; "
        f'rm -f "$1{UPDATE_INITRAMFS}"; '
        f'chroot "$1" dpkg-divert --quiet --local --rename --remove {UPDATE_INITRAMFS}; '
        f'tar -C {q_overlay} -cf - . | tar -C "$1" -xpf - --no-overwrite-dir; '
        'cat "$1/etc/default/raspi-firmware.pibake" >> "$1/etc/default/raspi-firmware"; '
        'rm -f "$1/etc/default/raspi-firmware.pibake" "$1/etc/resolv.conf"; '
        'mkdir -p "$1/boot/firmware"'
    )
    initramfs_hook = (
        "set -e; echo PIBAKE-STEP initramfs; "
        'chroot "$1" update-initramfs -c -k all; '
        "echo PIBAKE-STEP verify; "
        'for f in ' + " ".join(REQUIRED_BOOT_FILES) + '; do '
        '  [ -s "$1/boot/firmware/$f" ] || { echo "E: /boot/firmware/$f missing after raspi-firmware ran" >&2; exit 1; }; '
        'done; '
        'ls "$1"/boot/firmware/vmlinuz-* "$1"/boot/firmware/initrd.img-* >/dev/null; '
        f'grep -q "root=PARTUUID={ids.root_partuuid} " "$1/boot/firmware/cmdline.txt" || '
        '{ echo "E: cmdline.txt does not boot by PARTUUID" >&2; exit 1; }; '
        "echo PIBAKE-STEP cleanup"
    )
    return [
        "mmdebstrap",
        "--mode=root",
        "--arch=arm64",
        "--variant=minbase",
        "--format=directory",
        "--verbose",
        f"--components={' '.join(recipe.components)}",
        f"--include={','.join(recipe.packages)}",
        "--aptopt=Acquire::Retries \"3\"",
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
        f"--essential-hook={essential_hook}",
        f"--customize-hook={files_hook}",
        f"--customize-hook={initramfs_hook}",
        recipe.release,
        rootdir,
        recipe.mirror,
    ]


# --- host checks -------------------------------------------------------------------------------------------------

BINFMT_ENTRY = "/proc/sys/fs/binfmt_misc/qemu-aarch64"
BINFMT_FIX = (
    "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc (if not mounted) and "
    "update-binfmts --enable qemu-aarch64 (packages qemu-user-static binfmt-support)"
)


def check_binfmt(entry: str = BINFMT_ENTRY) -> None:
    try:
        with open(entry, encoding="utf-8") as handle:
            state = handle.readline().strip()
    except OSError:
        state = "missing"
    if state != "enabled":
        raise PibakeError(
            f"qemu-aarch64 binfmt is not active ({state}), so arm64 programs cannot run for the Debian base build; "
            f"run {BINFMT_FIX}."
        )


def check_host() -> None:
    if os.geteuid() != 0:
        raise PibakeError("Building the Debian base image needs root (mmdebstrap --mode=root); run the build as root.")
    require_tools("mmdebstrap", "sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4",
                  package_hint="install mmdebstrap fdisk dosfstools mtools e2fsprogs (make deps)")
    if not os.path.isdir("/usr/share/mmdebstrap/hooks/eatmydata"):
        raise PibakeError("mmdebstrap's eatmydata hook is missing; install mmdebstrap 1.x (make deps).")
    if os.uname().machine != "aarch64":
        ensure_binfmt("aarch64", register=True)  # mounts binfmt_misc and enables qemu-aarch64 when it can
        check_binfmt()


# --- assembly ----------------------------------------------------------------------------------------------------

def mounts_below(path: str) -> List[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo)."""
    real = os.path.realpath(path).rstrip("/") + "/"
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                point = line.split()[4].replace("\\040", " ")
                if (point.rstrip("/") + "/").startswith(real):
                    found.append(point)
    except OSError:
        pass
    return found


def remove_tree(path: str) -> None:
    """Delete a build directory — unless something is still mounted inside it (then leave it and say so)."""
    if not os.path.lexists(path):
        return
    left = mounts_below(path)
    if left:
        raise PibakeError(
            f"Build directory {path} still has mounts ({', '.join(left[:3])}); unmount them and delete it by hand."
        )
    shutil.rmtree(path)


def _mtools_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["MTOOLS_SKIP_CHECK"] = "1"
    env.setdefault("LC_ALL", "C")
    return env


def assemble_image(
    rootdir: str,
    bootdir: str,
    out_path: str,
    ids: Identifiers,
    *,
    boot_size_mib: int,
    root_free_mib: int,
    progress: Optional[Progress] = None,
) -> Layout:
    """Write a partitioned image file from a root tree and the FAT content, without loop devices or mounts."""
    used, inodes = tree_usage(rootdir)
    boot_used, dummy_boot_inodes = tree_usage(bootdir)
    if boot_used > (boot_size_mib - 8) * MIB:
        raise PibakeError(
            f"The boot files need {boot_used >> 20} MiB but the boot partition is {boot_size_mib} MiB; "
            f"raise pibake_base_image.boot_size_mib."
        )
    root_mib = root_size_mib(used, inodes, root_free_mib)
    for attempt in range(3):
        layout = plan_layout(boot_size_mib, root_mib)
        if progress:
            progress.log(
                f"assemble: {used >> 20} MiB in {inodes} inodes -> root {root_mib} MiB, image {layout.total_bytes >> 20} MiB"
            )
        if os.path.exists(out_path):
            os.unlink(out_path)
        with open(out_path, "wb") as handle:
            handle.truncate(layout.total_bytes)
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", out_path],
            input=sfdisk_script(layout, ids.disk_id).encode(), what="sfdisk (writing the partition table)")
        run(["mkfs.fat", "-F", "32", "-S", "512", "-n", "bootfs", "-i", ids.fat_serial, "--mbr=n",
             f"--offset={layout.boot_start}", "-h", str(layout.boot_start), out_path,
             str(layout.boot_sectors * SECTOR // 1024)], what="mkfs.fat (boot partition)")
        entries = sorted(os.listdir(bootdir))
        if entries:
            run(["mcopy", "-s", "-p", "-m", "-Q", "-i", f"{out_path}@@{layout.boot_start * SECTOR}"]
                + [os.path.join(bootdir, e) for e in entries] + ["::/"],
                env=_mtools_env(), what="mcopy (boot files into the FAT)")
        proc = run(
            ["mkfs.ext4", "-F", "-q", "-t", "ext4", "-T", "default", "-b", "4096", "-L", "rootfs",
             "-U", ids.root_uuid,
             "-E", f"offset={layout.root_start * SECTOR},hash_seed={ids.hash_seed},nodiscard",
             "-d", rootdir, out_path, f"{layout.root_sectors * SECTOR // 1024}k"],
            check=False,
        )
        if proc.returncode == 0:
            return layout
        err = (proc.stderr or b"").decode(errors="replace")
        if re.search(r"(No space left|Could not allocate|allocating)", err, re.I) and attempt < 2:
            root_mib = _align_mib(root_mib * 1.25)
            if progress:
                progress.log(f"assemble: root too small, retrying with {root_mib} MiB")
            continue
        tail = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}"
        raise PibakeError(f"mkfs.ext4 -d (root filesystem) failed: {tail}")
    raise PibakeError("mkfs.ext4 -d ran out of space three times; raise pibake_base_image.root_free_mib.")


# --- the whole build ---------------------------------------------------------------------------------------------

def _stream_mmdebstrap(argv: List[str], progress: Progress) -> Dict[str, float]:
    """Run mmdebstrap, copying its output to the progress log; time the phases named by PIBAKE-STEP markers."""
    tail: deque = deque(maxlen=40)
    marks: List[Tuple[str, float]] = [("mmdebstrap", time.monotonic())]
    env = dict(os.environ)
    env.setdefault("LC_ALL", "C.UTF-8")
    env["DEBIAN_FRONTEND"] = "noninteractive"
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
    except FileNotFoundError:
        raise PibakeError("mmdebstrap not found; install it (make deps).") from None
    if proc.stdout is None:  # stdout=PIPE always gives a pipe
        proc.kill()
        proc.wait()
        raise PibakeError("mmdebstrap started without an output pipe; run the build again.")
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            tail.append(line)
            if line.startswith("PIBAKE-STEP "):
                name = line.split(None, 1)[1]
                marks.append((name, time.monotonic()))
                progress.log(f"debian base: {name}")
            else:
                progress.log(f"  {line}")
        code = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    marks.append(("end", time.monotonic()))
    if code != 0:
        errors = [ln for ln in tail if ln.startswith("E:")] or list(tail)[-1:] or [f"exit code {code}"]
        raise PibakeError(
            f"mmdebstrap failed building the Debian base ({errors[-1]}); fix the cause (mirror reachable? package "
            f"names right?) — the full output is in the progress log."
        )
    phases: Dict[str, float] = {}
    for (name, start), (dummy_next, end) in zip(marks, marks[1:]):
        key = {"configure": "mmdebstrap", "verify": "initramfs", "cleanup": "mmdebstrap"}.get(name, name)
        phases[key] = round(phases.get(key, 0.0) + end - start, 1)
    return phases


def build(recipe: Recipe, out_path: str, workdir: str, progress: Progress) -> Layout:
    """Build the Debian base into ``out_path`` (a temporary name: the caller renames it); ``workdir`` must not
    exist and is deleted afterwards."""
    check_host()
    ids = identifiers(recipe.digest())
    rootdir = os.path.join(workdir, "root")
    overlay = os.path.join(workdir, "overlay")
    bootdir = os.path.join(workdir, "bootfs")
    os.makedirs(workdir, mode=0o700)
    try:
        os.makedirs(overlay)
        os.makedirs(bootdir)
        write_overlay(overlay, recipe, ids)
        progress.log(f"debian base: {recipe.describe()}; disk id {ids.disk_id}")
        started = time.monotonic()
        phases = _stream_mmdebstrap(mmdebstrap_argv(recipe, rootdir, overlay, ids), progress)
        for name, secs in phases.items():
            progress.timings[name] = secs
        progress.log(f"debian base: root tree ready after {time.monotonic() - started:.0f} s ({phases})")
        left = mounts_below(rootdir)
        if left:
            raise PibakeError(f"mmdebstrap left mounts below {rootdir} ({left[0]}); unmount them and retry.")
        with progress.step("assemble"):
            firmware = os.path.join(rootdir, "boot", "firmware")
            for name in os.listdir(firmware):
                os.rename(os.path.join(firmware, name), os.path.join(bootdir, name))
            layout = assemble_image(rootdir, bootdir, out_path, ids, boot_size_mib=recipe.boot_size_mib,
                                    root_free_mib=recipe.root_free_mib, progress=progress)
        return layout
    finally:
        started = time.monotonic()
        try:
            remove_tree(workdir)
            progress.log(f"debian base: build tree removed in {time.monotonic() - started:.1f} s")
        except PibakeError as err:
            progress.log(str(err))
