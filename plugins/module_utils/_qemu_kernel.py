# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The kernel a test machine boots: the image's own generic arm64 kernel, or a cached Debian test kernel.

Image kernel: ``config.txt`` in the FAT names it (``kernel=``) and its initrd (``initramfs NAME followkernel``);
both are read out with mtools (the build host has no kernel vfat). It is used when it is a generic arm64 kernel,
that is when the image's ``/usr/lib/modules/<version>/modules.builtin`` lists the virtio PCI transport and the
generic PCI host that QEMU's ``virt`` machine needs. Raspberry Pi kernels (``kernel8.img``, ``kernel_2712.img``)
have neither and do not boot under ``-M virt``.

Test kernel: Debian's ``linux-image-arm64`` with ``busybox-static``, fetched once with ``mmdebstrap
--variant=extract`` (apt with its own state, no change to the host's apt) into
``<cache>/qemu-kernel/debian-<release>-arm64/``, plus a small initramfs built here: busybox, the modules a
Raspberry Pi-style image needs under QEMU (virtio block/net/rng, ext4, vfat with its code pages) and an ``/init``
that loads them, finds ``root=`` (``PARTUUID=`` of an MBR disk, ``LABEL=``, ``UUID=`` or ``/dev/...``), mounts it
and switches to the image's init. The modules stay loaded, so the image needs no modules of that kernel.
"""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils import _ext4, _fatfs
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import require_tools, run

DEFAULT_MIRROR = "http://deb.debian.org/debian"
TEST_KERNEL_VERSION = 1  # bump when the initramfs or the module list changes: part of the cache folder name
# Modules the test initramfs loads, in this order after their dependencies (names as in modinfo, '-' == '_').
TEST_MODULES = ("crc32c_generic", "virtio_blk", "virtio_net", "virtio_rng", "ext4", "vfat", "nls_cp437",
                "nls_ascii", "nls_utf8")
GENERIC_MARKERS = ("virtio_pci", "pci-host-generic")
INIT_SCRIPT = r"""#!/bin/busybox sh
# pibake test initramfs: load the QEMU drivers, mount root= and hand over to the image's init.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "pibake-initramfs: $*" > /dev/console; }
while read -r module; do
    insmod "/modules/$module" || say "insmod $module failed"
done < /modules/load.order
root=""; init=/sbin/init; mode=ro; fstype=""; flags=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root=${arg#root=} ;;
        init=*) init=${arg#init=} ;;
        rootfstype=*) fstype=${arg#rootfstype=} ;;
        rootflags=*) flags=${arg#rootflags=} ;;
        ro) mode=ro ;;
        rw) mode=rw ;;
    esac
done
find_root() {
    case "$root" in
        PARTUUID=*)
            want=$(echo "${root#PARTUUID=}" | tr A-F a-f)
            for part in /sys/class/block/*; do
                [ -e "$part/partition" ] || continue
                disk=$(basename "$(readlink -f "$part/..")")
                sig=$(od -An -tx4 -j440 -N4 "/dev/$disk" 2>/dev/null | tr -d ' \n')
                num=$(cat "$part/partition")
                if [ "$(printf '%s-%02d' "$sig" "$num")" = "$want" ]; then echo "/dev/$(basename "$part")"; return; fi
            done ;;
        LABEL=*|UUID=*) findfs "$root" 2>/dev/null ;;
        /dev/*) [ -b "$root" ] && echo "$root" ;;
    esac
}
dev=""
tries=0
while [ -z "$dev" ] && [ $tries -lt 60 ]; do
    dev=$(find_root); [ -n "$dev" ] || { sleep 0.5; tries=$((tries + 1)); }
done
[ -n "$dev" ] || { say "root device $root not found"; exec sh; }
mkdir -p /root
mount ${fstype:+-t "$fstype"} -o "$mode${flags:+,$flags}" "$dev" /root || { say "cannot mount $dev"; exec sh; }
say "root $root is $dev; starting $init"
umount /proc /sys
mount --move /dev /root/dev 2>/dev/null || umount /dev
exec switch_root /root "$init"
"""


@dataclass
class BootFiles:
    kernel: str  # host path
    initrd: str  # host path, "" for none
    cmdline: str  # the image's cmdline.txt, as written
    source: str  # "image" or "debian-test-kernel"
    description: str


def cache_root(cache_dir: Optional[str] = None) -> str:
    base = cache_dir or os.environ.get("PIBAKE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pibake")
    return os.path.join(base, "qemu-kernel")


# ------------------------------------------------------------------ config.txt


def parse_config_txt(text: str) -> Tuple[str, str]:
    """(kernel, initrd) named by config.txt; filters other than ``[all]``/``[pi4]``/``[pi5]``/none are skipped.

    Later lines win, as on the Pi. The kernel defaults to ``kernel8.img`` (the Pi's 64-bit default).
    """
    kernel, initrd = "", ""
    active = True
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            active = line[1:-1].strip().lower() in ("all", "pi4", "pi5", "pi400", "cm4", "cm5", "pi500")
            continue
        if not active:
            continue
        match = re.match(r"^kernel\s*=\s*(\S+)$", line)
        if match:
            kernel = match.group(1)
            continue
        match = re.match(r"^initramfs\s+(\S+)", line)
        if match:
            initrd = match.group(1)
    return kernel or "kernel8.img", initrd


def kernel_version(name: str) -> str:
    """``6.12.57+deb13-arm64`` from ``vmlinuz-6.12.57+deb13-arm64``; "" when the name carries none."""
    match = re.match(r"^(?:vmlinuz|vmlinux|Image)-(\S+)$", os.path.basename(name))
    return match.group(1) if match else ""


def is_generic(builtin: Optional[bytes]) -> bool:
    """True when a kernel's modules.builtin has what QEMU -M virt needs built in."""
    if not builtin:
        return False
    names = {os.path.basename(line.strip()).split(".ko")[0].replace("_", "-") for line in builtin.decode().splitlines()}
    return all(marker.replace("_", "-") in names for marker in GENERIC_MARKERS)


def image_boot_files(image: str, boot_offset: int, root_offset: int, dest: str) -> Tuple[Optional[BootFiles], str]:
    """The image's own kernel and initrd copied into ``dest``, or (None, why not)."""
    config = _fatfs.read_file(image, boot_offset, "config.txt")
    cmdline = _fatfs.read_file(image, boot_offset, "cmdline.txt")
    if cmdline is None:
        raise PibakeError(f"{image} has no cmdline.txt in its boot partition; give a Raspberry Pi-style image.")
    kernel, initrd = parse_config_txt((config or b"").decode(errors="replace"))
    version = kernel_version(kernel)
    if not version:
        return None, f"config.txt names kernel {kernel}, not a generic arm64 kernel (vmlinuz-<version>)"
    builtin = None
    for prefix in ("/usr/lib/modules", "/lib/modules"):
        builtin = _ext4.read_file(image, root_offset, f"{prefix}/{version}/modules.builtin")
        if builtin is not None:
            break
    if not is_generic(builtin):
        return None, f"kernel {version} lacks virtio PCI or the generic PCI host (not a generic arm64 kernel)"
    os.makedirs(dest, exist_ok=True)
    out_kernel = os.path.join(dest, "kernel")
    data = _fatfs.read_file(image, boot_offset, kernel)
    if not data:
        return None, f"config.txt names {kernel}, which is not in the boot partition"
    with open(out_kernel, "wb") as handle:
        handle.write(data)
    out_initrd = ""
    if initrd:
        data = _fatfs.read_file(image, boot_offset, initrd)
        if not data:
            raise PibakeError(f"config.txt of {image} names initramfs {initrd}, which is not in the boot partition; "
                              "rebuild the image (update-initramfs did not run).")
        out_initrd = os.path.join(dest, "initrd")
        with open(out_initrd, "wb") as handle:
            handle.write(data)
    return BootFiles(out_kernel, out_initrd, cmdline.decode(errors="replace").strip(), "image",
                     f"the image's kernel {kernel}" + (f" with {initrd}" if initrd else "")), ""


# ------------------------------------------------------------------ the Debian test kernel


def _decompress_module(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zst"):
        return run(["zstd", "-dcq"], input=data, what=f"decompressing {name}").stdout
    return data


def modinfo_field(module: bytes, field: str) -> List[str]:
    """Values of ``field`` in a module's .modinfo strings (``depends`` -> ['jbd2,mbcache'])."""
    pattern = re.compile(rb"(?:^|\x00)" + re.escape(field.encode()) + rb"=([^\x00]*)")
    return [m.group(1).decode(errors="replace") for m in pattern.finditer(module)]


def module_name(path: str) -> str:
    return os.path.basename(path).split(".ko")[0].replace("-", "_")


def load_order(wanted: Iterable[str], modules: Dict[str, bytes], builtin: Iterable[str]) -> List[str]:
    """Module names to insmod, dependencies first; built-in ones are skipped. ``modules`` maps name -> bytes."""
    builtin_names = {name.replace("-", "_") for name in builtin}
    order: List[str] = []
    visiting = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in order or name in builtin_names:
            return
        if name not in modules:
            raise PibakeError(f"The test kernel has no module {name}; its package changed, report it as a pibake bug.")
        if name in visiting:
            return
        visiting.add(name)
        for deps in modinfo_field(modules[name], "depends"):
            for dep in filter(None, deps.split(",")):
                visit(dep)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def _cpio_newc(entries: List[Tuple]) -> bytes:
    """A newc cpio archive of (path, mode, data[, (rdev major, rdev minor)]) entries."""
    out = io.BytesIO()
    for ino, entry in enumerate(list(entries) + [("TRAILER!!!", 0, b"")], start=1):
        path, mode, data = entry[:3]
        rdev = entry[3] if len(entry) > 3 else (0, 0)
        name = path.encode() + b"\x00"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name), 0]
        out.write(b"070701" + b"".join(b"%08X" % value for value in fields) + name)
        out.write(b"\x00" * ((4 - out.tell() % 4) % 4))
        out.write(data)
        out.write(b"\x00" * ((4 - out.tell() % 4) % 4))
    return out.getvalue()


def build_initramfs(busybox: bytes, modules: Dict[str, bytes], order: List[str]) -> bytes:
    """The gzip-compressed initramfs: busybox, /init, the modules and their load order."""
    entries: List[Tuple] = [
        (name, stat.S_IFDIR | 0o755, b"") for name in ("bin", "dev", "proc", "sys", "root", "modules")
    ]
    entries += [
        ("bin/busybox", stat.S_IFREG | 0o755, busybox),
        ("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("modules/load.order", stat.S_IFREG | 0o644, ("".join(f"{name}.ko\n" for name in order)).encode()),
    ]
    entries += [(f"modules/{name}.ko", stat.S_IFREG | 0o644, modules[name]) for name in order]
    return gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0)


class _LazyModule:
    """A compressed module file, decompressed on first use (only a few dozen of thousands are needed)."""

    def __init__(self, name: str, data: bytes):
        self.name, self.data, self.plain = name, data, None

    def bytes(self) -> bytes:
        if self.plain is None:
            self.plain = _decompress_module(self.name, self.data)
        return self.plain


class _Modules(dict):
    def __getitem__(self, name: str) -> bytes:
        return dict.__getitem__(self, name).bytes()


def _extract(tar_path: str) -> Tuple[bytes, str, bytes, Dict[str, bytes], List[str]]:
    """(kernel, version, busybox, modules by name, built-in names) out of the mmdebstrap tarball."""
    kernel, version, busybox = b"", "", b""
    modules: Dict[str, bytes] = _Modules()
    builtin: List[str] = []
    with tarfile.open(tar_path) as archive:
        for member in archive:
            name = member.name.lstrip("./")
            if not member.isfile():
                continue
            if re.match(r"^boot/vmlinuz-", name):
                kernel, version = archive.extractfile(member).read(), name[len("boot/vmlinuz-"):]
            elif name in ("usr/bin/busybox", "bin/busybox"):
                busybox = archive.extractfile(member).read()
            elif re.match(r"^(usr/)?lib/modules/[^/]+/modules\.builtin$", name):
                builtin = [module_name(line) for line in archive.extractfile(member).read().decode().split()]
            elif re.match(r"^(usr/)?lib/modules/[^/]+/kernel/.*\.ko(\.xz|\.gz|\.zst)?$", name):
                modules[module_name(name)] = _LazyModule(name, archive.extractfile(member).read())
    if not kernel or not busybox:
        raise PibakeError("The Debian packages held no vmlinuz or busybox; check the mirror and retry.")
    return kernel, version, busybox, modules, builtin


def test_kernel(release: str = "trixie", cache_dir: Optional[str] = None, mirror: str = DEFAULT_MIRROR,
                log=None) -> BootFiles:
    """The cached Debian test kernel and its initramfs, fetched and built on first use."""
    folder = os.path.join(cache_root(cache_dir), f"debian-{release}-arm64-v{TEST_KERNEL_VERSION}")
    info_path = os.path.join(folder, "kernel.json")
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs fetch it once
        if not os.path.exists(info_path):
            _fetch_test_kernel(folder, release, mirror, log)
    with open(info_path, encoding="utf-8") as handle:
        info = json.load(handle)
    return BootFiles(os.path.join(folder, "vmlinuz"), os.path.join(folder, "initrd.img"), "", "debian-test-kernel",
                     f"Debian {release} test kernel {info['version']} (cached in {folder})")


def _fetch_test_kernel(folder: str, release: str, mirror: str, log) -> None:
    require_tools("mmdebstrap", package_hint="install mmdebstrap (make deps)")
    parent = os.path.dirname(folder)
    temp = tempfile.mkdtemp(prefix=".fetch-", dir=parent)
    try:
        tar_path = os.path.join(temp, "packages.tar")
        if log:
            log(f"fetching Debian's linux-image-arm64 and busybox-static ({release}) for the test kernel")
        started = time.monotonic()
        run(["mmdebstrap", "--quiet", "--format=tar", "--variant=extract", "--arch=arm64",
             "--include=linux-image-arm64,busybox-static", release, tar_path, mirror],
            what="mmdebstrap fetching Debian's linux-image-arm64", timeout=1800)
        kernel, version, busybox, modules, builtin = _extract(tar_path)
        order = load_order(TEST_MODULES, modules, builtin)
        out = os.path.join(temp, "out")
        os.makedirs(out)
        with open(os.path.join(out, "vmlinuz"), "wb") as handle:
            handle.write(kernel)
        with open(os.path.join(out, "initrd.img"), "wb") as handle:
            handle.write(build_initramfs(busybox, {name: modules[name] for name in order}, order))
        with open(os.path.join(out, "kernel.json"), "w", encoding="utf-8") as handle:
            json.dump({"version": version, "release": release, "modules": order, "mirror": mirror,
                       "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "seconds": round(time.monotonic() - started, 1)}, handle, indent=1)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(out, folder)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def boot_files(image: str, boot_offset: int, root_offset: int, dest: str, kernel: str = "auto",
               release: str = "trixie", cache_dir: Optional[str] = None, log=None) -> BootFiles:
    """Pick the kernel: ``image`` (must be generic), ``debian`` (the test kernel) or ``auto`` (image, else test)."""
    if kernel not in ("auto", "image", "debian"):
        raise PibakeError(f"kernel must be auto, image or debian, not {kernel!r}.")
    found, why = (None, "the Debian test kernel was asked for")
    if kernel in ("auto", "image"):
        found, why = image_boot_files(image, boot_offset, root_offset, dest)
    if found is not None:
        return found
    if kernel == "image":
        raise PibakeError(f"The image cannot boot under QEMU with its own kernel ({why}); use kernel=auto or "
                          "kernel=debian to boot it with the Debian test kernel.")
    cmdline = _fatfs.read_file(image, boot_offset, "cmdline.txt")
    if cmdline is None:
        raise PibakeError(f"{image} has no cmdline.txt in its boot partition; give a Raspberry Pi-style image.")
    files = test_kernel(release, cache_dir, log=log)
    files.cmdline = cmdline.decode(errors="replace").strip()
    files.description += f"; {why}"
    return files
